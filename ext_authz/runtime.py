"""Runtime: everything a Check reads, built once from Settings, plus the background tasks that
keep keys, API keys and the denylist fresh (never on the request path)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ext_authz.credentials import CredentialExtractor, CredentialKind
from ext_authz.identity import Authenticator
from ext_authz.identity.apikey import ApiKeyAuthenticator
from ext_authz.identity.cache import TokenCache
from ext_authz.identity.denylist import Denylist, load_denylist
from ext_authz.identity.jwks import KeyStore
from ext_authz.identity.jwt import JwtVerifier
from ext_authz.identity.mtls import MtlsAuthenticator
from ext_authz.pipeline import AuthPipeline
from ext_authz.policy.engine import CasbinPolicyEngine
from ext_authz.settings import HeaderSettings, Settings
from ext_authz.watch import WatchedFile

__all__ = ["BackgroundTask", "Runtime", "build_runtime"]

log = logging.getLogger(__name__)


class BackgroundTask(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Runtime:
    """What a Check reads: never mutated, so a request sees one consistent snapshot."""

    pipeline: AuthPipeline
    headers: HeaderSettings
    # Credentials the upstream must not receive: removed from allowed requests.
    credential_headers: tuple[str, ...] = ()
    credential_query: tuple[str, ...] = ()
    tasks: tuple[BackgroundTask, ...] = ()
    key_stores: tuple[KeyStore, ...] = ()

    def start(self) -> None:
        for task in self.tasks:
            task.start()

    def stop(self) -> None:
        for task in reversed(self.tasks):
            task.stop()

    def ready(self) -> bool:
        """True once every issuer's keys are loaded (health turns SERVING then)."""
        return all(store.wait_ready(0) for store in self.key_stores)


def build_runtime(settings: Settings) -> Runtime:
    """Load keys, credentials and policies; raises ConfigError naming what is wrong."""
    tasks: list[BackgroundTask] = []
    stores = tuple(KeyStore(provider) for provider in settings.providers)
    tasks.extend(stores)
    authenticators: dict[CredentialKind, Authenticator] = {}
    if stores:
        cache = TokenCache(settings.token_cache.max_entries)
        pairs = list(zip(settings.providers, stores, strict=True))
        authenticators[CredentialKind.BEARER] = JwtVerifier(pairs, cache)
    credentials = settings.credentials
    credential_headers: tuple[str, ...] = ()
    if credentials.api_keys is not None:
        api_keys = ApiKeyAuthenticator(credentials.api_keys)
        tasks.append(api_keys)
        authenticators[CredentialKind.API_KEY] = api_keys
        credential_headers = (credentials.api_keys.header,)
    mtls = MtlsAuthenticator(credentials.mtls) if credentials.mtls is not None else None
    if mtls is not None:
        authenticators[CredentialKind.CLIENT_CERTIFICATE] = mtls
    denylist: Callable[[], Denylist] | None = None
    if settings.denylist_file is not None:
        watched = WatchedFile(settings.denylist_file, load_denylist)
        tasks.append(watched)
        denylist = watched.current
    engine = CasbinPolicyEngine.from_files(settings.policy.model, settings.policy.policy)
    pipeline = AuthPipeline(
        CredentialExtractor(credentials, mtls.principal if mtls else None),
        authenticators,
        engine,
        denylist,
    )
    query = credentials.bearer.query_parameter
    return Runtime(
        pipeline,
        settings.headers,
        credential_headers,
        (query,) if query else (),
        tuple(tasks),
        stores,
    )
