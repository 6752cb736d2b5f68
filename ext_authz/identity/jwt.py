"""JWT verification: the only module that imports python-jose.

python-jose alone is not enough (it does not require ``aud``, accepts a future ``iat`` and
non-numeric ``exp``, ignores ``crit`` and decodes non-canonical base64url), so this module parses
and checks the header and claims itself and uses jose only for the signature, with keys built once
from configured JWKS and an explicit one-family algorithm list per issuer.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Protocol

from jose import jwk, jws, jwt
from jose.exceptions import JOSEError
from opentelemetry import trace

from ext_authz.errors import (
    ConfigError,
    ExpiredTokenError,
    InvalidTokenError,
    KeysUnavailableError,
)
from ext_authz.identity.cache import CachedToken, TokenCache
from ext_authz.identity.claims import (
    load_json_strictly,
    numeric_date,
    roles_of,
    scopes_of,
    subject_of,
)
from ext_authz.identity.jwks import PRIVATE_JWK_MEMBERS, KeySet
from ext_authz.models import Identity
from ext_authz.settings import ProviderSettings
from ext_authz.telemetry import ATTR_CACHE_HIT

__all__ = ["JwtVerifier", "KeySource", "sign_token"]

log = logging.getLogger(__name__)

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
# Header parameters that would let the token choose its own key or processing rules.
_FORBIDDEN_HEADERS = ("jku", "x5u", "jwk", "x5c", "crit", "zip")
_KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "HS": "oct"}


def _b64url_decode(segment: str, what: str) -> bytes:
    if not _B64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise InvalidTokenError(f"token {what} is not base64url")
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InvalidTokenError(f"token {what} is not base64url") from exc
    # Non-canonical encodings (stray trailing bits) would let one token have many spellings.
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != segment:
        raise InvalidTokenError(f"token {what} is not canonical base64url")
    return raw


def _json_object(segment: str, what: str) -> dict[str, object]:
    raw = _b64url_decode(segment, what)
    try:
        value = load_json_strictly(raw)
    except ValueError as exc:  # says why (e.g. a duplicate member), quoting no claim value
        raise InvalidTokenError(f"token {what} is not valid JSON ({exc})") from exc
    except RecursionError as exc:
        raise InvalidTokenError(f"token {what} is not valid JSON") from exc
    if not isinstance(value, dict):
        raise InvalidTokenError(f"token {what} is not a JSON object")
    return value


def _check_type(settings: ProviderSettings, header: Mapping[str, object]) -> None:
    """RFC 8725 3.11 / RFC 9068: an explicit typ keeps other JWT kinds (ID tokens, logout
    tokens) from being accepted as access tokens."""
    if settings.typ is None:
        return
    typ = header.get("typ")
    normalized = typ.lower().removeprefix("application/") if isinstance(typ, str) else None
    if normalized != settings.typ.lower().removeprefix("application/"):
        raise InvalidTokenError(f"token type ('typ') must be {settings.typ!r}")


class KeySource(Protocol):
    """Where a provider's keys come from (identity/jwks.py KeyStore)."""

    def current(self) -> KeySet:
        """The current key set; raises KeysUnavailableError when missing or stale."""
        ...

    def await_refetch(self, timeout: float) -> bool:
        """An unknown kid was seen: ask for a (rate-limited) refetch and wait at most ``timeout``
        seconds for it; True when a refetch finished (look the kid up again)."""
        ...


Keys = Mapping[tuple[str | None, str], jwk.Key]  # (kid, alg) -> prebuilt key


def _build_keys(
    settings: ProviderSettings, jwks: Sequence[Mapping[str, object]]
) -> tuple[dict[tuple[str | None, str], jwk.Key], list[str]]:
    """Prebuild every usable (kid, alg) key; returns the keys and the problems found."""
    keys: dict[tuple[str | None, str], jwk.Key] = {}
    problems = []
    for index, entry in enumerate(jwks):
        where = f"provider {settings.name!r}: keys[{index}]"
        if any(member in entry for member in PRIVATE_JWK_MEMBERS) and entry["kty"] != "oct":
            problems.append(f"{where} holds private key material; publish public keys only")
            continue
        kid = entry.get("kid")
        if kid is not None and not isinstance(kid, str):
            problems.append(f"{where}: 'kid' must be a string")
            continue
        for alg in settings.algorithms:
            if _KEY_TYPES[alg[:2]] != entry["kty"] or entry.get("alg", alg) != alg:
                continue  # a key is only ever used with an algorithm of its own type
            try:
                keys[(kid, alg)] = jwk.construct(dict(entry), algorithm=alg)
            except JOSEError as exc:
                problems.append(f"{where}: cannot build a {alg} key: {exc}")
    if not keys:
        problems.append(
            f"provider {settings.name!r}: no key usable with algorithms {list(settings.algorithms)}"
        )
    return keys, problems


class _Provider:
    """A provider's settings, key source, and keys prebuilt for the source's current version."""

    def __init__(self, settings: ProviderSettings, source: KeySource) -> None:
        self.settings = settings
        self.source = source
        self._lock = threading.Lock()
        self._version = -1
        self._keys: Keys = {}

    def check_keys(self) -> None:
        """At start-up: a loaded key set with a bad key is a ConfigError, not a warning."""
        try:
            keyset = self.source.current()
        except KeysUnavailableError:
            return  # a URL source that has not loaded yet
        _, problems = _build_keys(self.settings, keyset.keys)
        if problems:
            raise ConfigError("; ".join(problems))

    def keys(self) -> tuple[int, Keys]:
        keyset = self.source.current()
        if keyset.version != self._version:
            with self._lock:
                if keyset.version != self._version:
                    keys, problems = _build_keys(self.settings, keyset.keys)
                    for problem in problems:
                        log.error("key set ignored in part: %s", problem)
                    self._keys, self._version = keys, keyset.version
        return self._version, self._keys


class JwtVerifier:
    """Verifies bearer JWTs from the configured issuers and maps them to an Identity."""

    def __init__(
        self,
        providers: Sequence[tuple[ProviderSettings, KeySource]],
        cache: TokenCache | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._providers = {settings.issuer: _Provider(settings, src) for settings, src in providers}
        for provider in self._providers.values():
            provider.check_keys()
        self._max_bytes = max((s.max_token_bytes for s, _ in providers), default=0)
        self._cache = cache
        self._clock = clock

    def authenticate(self, token: str) -> Identity:
        """Return the caller's Identity; raises InvalidTokenError (or a subclass), or
        KeysUnavailableError when the issuer's keys are missing or stale."""
        if len(token) > self._max_bytes:
            raise InvalidTokenError(f"token is larger than {self._max_bytes} bytes")
        now = self._clock()
        cached = self._cache.get(token, now) if self._cache else None
        if cached is not None:
            version, _ = self._providers[cached.identity.issuer].keys()
            if version == cached.key_version:  # else a key may have been removed: verify again
                trace.get_current_span().set_attribute(ATTR_CACHE_HIT, True)
                return cached.identity
        trace.get_current_span().set_attribute(ATTR_CACHE_HIT, False)
        parts = token.split(".")
        if len(parts) != 3:
            raise InvalidTokenError("token is not a signed JWT (expected three parts)")
        header = _json_object(parts[0], "header")
        claims = _json_object(parts[1], "payload")
        _b64url_decode(parts[2], "signature")
        issuer = claims.get("iss")
        provider = self._providers.get(issuer) if isinstance(issuer, str) else None
        if provider is None:
            raise InvalidTokenError("token issuer ('iss') is missing or not configured")
        settings = provider.settings
        if len(token) > settings.max_token_bytes:
            raise InvalidTokenError(f"token is larger than {settings.max_token_bytes} bytes")
        _check_type(settings, header)
        version, keys = provider.keys()
        selected = self._select_key(provider, keys, header)
        if selected is None and provider.source.await_refetch(settings.keys.unknown_kid_wait):
            version, keys = provider.keys()  # the kid may have been rotated in
            selected = self._select_key(provider, keys, header)
        if selected is None:
            raise InvalidTokenError("token key id ('kid') is unknown")
        key, alg = selected
        try:
            jws.verify(token, key, algorithms=[alg])
        except (JOSEError, RecursionError) as exc:
            raise InvalidTokenError("token signature verification failed") from exc
        expires = self._check_times(settings, claims, now)
        self._check_audience(settings, claims)
        missing = [name for name in settings.required_claims if claims.get(name) is None]
        if missing:
            raise InvalidTokenError(f"token has no '{missing[0]}' claim")
        identity = self._identity(settings, claims)
        if self._cache is not None:
            self._cache.put(token, CachedToken(identity, expires, version))
        return identity

    @staticmethod
    def _select_key(
        provider: _Provider, keys: Keys, header: Mapping[str, object]
    ) -> tuple[jwk.Key, str] | None:
        """The key and algorithm for this header; None when its kid is unknown."""
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in provider.settings.algorithms:
            raise InvalidTokenError("token algorithm ('alg') is not allowed for this issuer")
        if any(isinstance(value, dict | list) for value in header.values()):
            # No JWS header we accept is structured; nesting only feeds parser attacks.
            raise InvalidTokenError("token header has a structured (object or array) value")
        present = [name for name in _FORBIDDEN_HEADERS if name in header]
        if present:
            raise InvalidTokenError(f"token header parameter {present[0]!r} is not accepted")
        if str(header.get("cty", "")).upper() == "JWT":
            raise InvalidTokenError("nested tokens (cty: JWT) are not accepted")
        kid = header.get("kid")
        if kid is not None:
            key = keys.get((kid, alg)) if isinstance(kid, str) else None
            return None if key is None else (key, alg)
        candidates = [key for (_, key_alg), key in keys.items() if key_alg == alg]
        if len(candidates) != 1:
            raise InvalidTokenError("token has no key id ('kid') and the issuer has several keys")
        return candidates[0], alg

    @staticmethod
    def _check_times(settings: ProviderSettings, claims: Mapping[str, object], now: float) -> float:
        """Check exp, nbf, iat and the lifetime; returns exp."""
        skew = settings.clock_skew
        expires = numeric_date(claims, "exp")
        if expires is None:
            raise InvalidTokenError("token has no 'exp' claim")
        if now > expires + skew:
            raise ExpiredTokenError("token has expired")
        not_before = numeric_date(claims, "nbf")
        if not_before is not None and not_before > now + skew:
            raise InvalidTokenError("token is not valid yet ('nbf' is in the future)")
        issued_at = numeric_date(claims, "iat")
        if issued_at is not None and issued_at > now + skew:
            raise InvalidTokenError("token was issued in the future ('iat')")
        lifetime = expires - (issued_at if issued_at is not None else now)
        if lifetime > settings.max_lifetime:
            raise InvalidTokenError(
                f"token lifetime exceeds the maximum of {settings.max_lifetime} seconds"
            )
        return expires

    @staticmethod
    def _check_audience(settings: ProviderSettings, claims: Mapping[str, object]) -> None:
        name = settings.audience_claim
        audience = claims.get(name)
        values = [audience] if isinstance(audience, str) else audience
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise InvalidTokenError(f"token has no valid '{name}' claim")
        if not set(values) & set(settings.audiences):
            raise InvalidTokenError(f"token audience ('{name}') is not accepted")

    @staticmethod
    def _identity(settings: ProviderSettings, claims: Mapping[str, object]) -> Identity:
        return Identity(
            subject=subject_of(claims, settings.subject_claim),
            roles=roles_of(claims, settings.roles_claim),
            issuer=settings.issuer,
            method="jwt",
            scopes=scopes_of(claims),
            claims=MappingProxyType(dict(claims)),
        )


def sign_token(claims: Mapping[str, object], private_key_pem: str, kid: str) -> str:
    """Sign claims with RS256 (used by `ext-authz token` for the demo issuer)."""
    return str(jwt.encode(dict(claims), private_key_pem, algorithm="RS256", headers={"kid": kid}))
