"""Runtime: everything a Check reads, built once from Settings, plus the background tasks that
keep keys, API keys and the denylist fresh (never on the request path; only token introspection
and the Redis rate-limit store, when configured, are asked there)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from ext_authz.admin import AdminServer, LiveView
from ext_authz.credentials import CredentialExtractor, CredentialKind
from ext_authz.decision_log import DecisionLog
from ext_authz.identity import Authenticator
from ext_authz.identity.apikey import ApiKeyAuthenticator
from ext_authz.identity.bearer import BearerAuthenticator
from ext_authz.identity.cache import TokenCache
from ext_authz.identity.denylist import Denylist, load_denylist
from ext_authz.identity.introspection import TokenIntrospector
from ext_authz.identity.jwks import KeyStore
from ext_authz.identity.jwt import JwtVerifier
from ext_authz.identity.mtls import MtlsAuthenticator
from ext_authz.metrics import Metrics
from ext_authz.observe import DecisionObserver
from ext_authz.pipeline import AuthPipeline, Guard
from ext_authz.policy.engine import CasbinPolicyEngine, PolicyEngine
from ext_authz.policy.reload import ReloadingPolicyEngine
from ext_authz.policy.shadow import ShadowPolicyEngine
from ext_authz.ratelimit import RateLimiter, compile_rules, open_store
from ext_authz.settings import HeaderSettings, PolicySettings, Settings
from ext_authz.signals import SecuritySignals
from ext_authz.signals.blocklist import Block
from ext_authz.watch import WatchedFile

__all__ = ["BackgroundTask", "Runtime", "build_runtime"]

log = logging.getLogger(__name__)


class BackgroundTask(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


@runtime_checkable
class Reloadable(Protocol):
    def reload(self) -> bool: ...


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
    observers: tuple[DecisionObserver, ...] = (DecisionLog(),)

    def start(self) -> None:
        for task in self.tasks:
            task.start()

    def stop(self) -> None:
        for task in reversed(self.tasks):
            task.stop()

    def reload(self) -> None:
        """Re-read every watched file now (SIGHUP): policies, the denylist."""
        for task in self.tasks:
            if isinstance(task, Reloadable):
                task.reload()

    def ready(self) -> bool:
        """True once every issuer's keys are loaded (health turns SERVING then)."""
        return all(store.wait_ready(0) for store in self.key_stores)


def build_runtime(settings: Settings) -> Runtime:
    """Load keys, credentials and policies; raises ConfigError naming what is wrong."""
    tasks: list[BackgroundTask] = []
    stores = tuple(KeyStore(provider) for provider in settings.providers)
    tasks.extend(stores)
    authenticators: dict[CredentialKind, Authenticator] = {}
    jwt: JwtVerifier | None = None
    caches: list[TokenCache] = []
    if stores:
        caches.append(TokenCache(settings.token_cache.max_entries))
        pairs = list(zip(settings.providers, stores, strict=True))
        jwt = JwtVerifier(pairs, caches[0])
        authenticators[CredentialKind.BEARER] = jwt
    credentials = settings.credentials
    if credentials.introspection is not None:
        # JWT-shaped tokens still go to the JWT verifier (or are refused without issuers).
        introspector = TokenIntrospector(credentials.introspection)
        authenticators[CredentialKind.BEARER] = BearerAuthenticator(jwt, introspector)
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
    engine, policies = _policy_engine(settings.policy, tasks)
    # Rate limits and blocks share one store: local, or Redis for a fleet of replicas.
    store, failover = open_store(settings)
    signals = SecuritySignals(
        settings.security,
        subject_claims={provider.issuer: provider.subject_claim for provider in settings.providers},
        store=store,
    )
    tasks.append(signals)
    guards: list[Guard] = [signals.blocklist]  # a blocked caller takes no token
    limits = settings.rate_limits
    if limits.rules:
        guards.append(RateLimiter(compile_rules(limits.rules), store, limits.headers_on_allow))
    pipeline = AuthPipeline(
        CredentialExtractor(credentials, mtls.principal if mtls else None),
        authenticators,
        engine,
        denylist,
        guards=guards,
    )
    observers: list[DecisionObserver] = [
        DecisionLog(settings.decision_log.allow_sample_rate),
        signals,
    ]
    if settings.admin.listen is not None:
        metrics = Metrics(
            key_stores=stores,
            token_caches=caches,
            policy_engines=policies,
            rate_limit_backends=[failover] if failover is not None else [],
        )
        live = LiveView(
            blocks=lambda: [_block_view(block) for block in signals.blocklist.current_blocks()],
            policy_version=lambda: policies["live"].version,
        )
        signals.subscribe(lambda event: metrics.record_security_event(event.kind))
        signals.subscribe(lambda event: live.record_event(event.as_dict()))
        observers += [metrics, live]
        tasks.append(AdminServer(settings.admin.listen, metrics, live))
    query = credentials.bearer.query_parameter
    return Runtime(
        pipeline,
        settings.headers,
        credential_headers,
        (query,) if query else (),
        tuple(tasks),
        stores,
        observers=tuple(observers),
    )


def _block_view(block: Block) -> dict[str, object]:
    return {
        "key": block.key,
        "kind": block.key_type,
        "reason": block.reason,
        "expires_in": round(block.remaining_s),
    }


def _watched_policy(model: Path, policy: Path, interval: float) -> ReloadingPolicyEngine:
    return ReloadingPolicyEngine(
        lambda: CasbinPolicyEngine.from_files(model, policy), model, policy, interval
    )


def _policy_engine(
    settings: PolicySettings, tasks: list[BackgroundTask]
) -> tuple[PolicyEngine, dict[str, ReloadingPolicyEngine]]:
    """The engine deciding requests: the live policy (reloaded on change), with the shadow
    candidate beside it if configured; and the policies by name, for metrics."""
    live = _watched_policy(settings.model, settings.policy, settings.reload_interval)
    tasks.append(live)
    if settings.shadow is None:
        return live, {"live": live}
    shadow = settings.shadow
    candidate = _watched_policy(shadow.model, shadow.policy, settings.reload_interval)
    tasks.append(candidate)
    return ShadowPolicyEngine(live, candidate), {"live": live, "shadow": candidate}
