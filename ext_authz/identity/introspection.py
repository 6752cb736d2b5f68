"""OAuth2 opaque bearer tokens, checked through RFC 7662 token introspection.

The provider's answer is authoritative, so it is asked on the request path (the one identity
source that does I/O there); positive answers are cached by token hash for the token's remaining
life but never beyond ``max_cache_ttl``, which bounds how long a revoked token keeps working.
Negative answers are not cached: a flood of random tokens cannot fill the cache, and a token that
becomes active (clock skew at the provider) is not refused for a while. Each such token costs one
request, so tokens are bounded in size and alphabet before anything is sent.

Endpoint failures (unreachable, timeout, non-200, not a JSON object, our client credentials
refused) are IntrospectionUnavailableError: 503, never an allow and never a 401 that blames the
client for the provider's outage. Neither the token nor the client secret is ever logged or put
into an error message.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from urllib.parse import quote_plus, urlencode

from ext_authz.credentials import B64TOKEN
from ext_authz.errors import (
    ConfigError,
    ExpiredTokenError,
    IntrospectionUnavailableError,
    InvalidTokenError,
    describe_error,
)
from ext_authz.identity.cache import CachedToken, TokenCache
from ext_authz.identity.claims import (
    load_json_strictly,
    numeric_date,
    roles_of,
    scopes_of,
    subject_of,
)
from ext_authz.identity.http import post_form
from ext_authz.models import Identity
from ext_authz.settings import IntrospectionSettings

__all__ = ["MAX_TOKEN_BYTES", "NBF_LEEWAY", "Poster", "TokenIntrospector"]

log = logging.getLogger(__name__)

# post(url, body, headers, timeout) -> (HTTP status, body); raises OSError when no answer came.
Poster = Callable[[str, bytes, Mapping[str, str], float], tuple[int, bytes]]

MAX_TOKEN_BYTES = 8192  # the JWT path's default max_token_bytes; opaque tokens are far shorter
# A token the provider just issued can carry nbf = now by its clock; ours may lag a little.
NBF_LEEWAY = 30
_METHOD = "introspection"
_REFRESH_TYPES = frozenset({"refresh_token", "refresh"})


def _read_secret(path: Path) -> str:
    try:
        secret = path.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"{path}: cannot read the introspection client secret: {why}") from None
    if not secret:
        raise ConfigError(f"{path}: the introspection client secret file is empty")
    return secret


def _basic_credentials(client_id: str, secret: str) -> str:
    # RFC 6749 2.3.1 (RFC 7662 2.1): each part form-urlencoded before base64, so a ':' or a
    # non-ASCII character in the id or secret cannot shift the split.
    pair = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode("ascii")
    return "Basic " + base64.b64encode(pair).decode("ascii")


class TokenIntrospector:
    """Authenticates opaque bearer tokens through an RFC 7662 introspection endpoint."""

    def __init__(
        self,
        settings: IntrospectionSettings,
        clock: Callable[[], float] = time.time,
        post: Poster | None = None,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._post = post or post_form
        self._issuer = settings.issuer or settings.url
        secret = _read_secret(settings.client_secret_file)
        self._headers = MappingProxyType(
            {
                "Authorization": _basic_credentials(settings.client_id, secret),
                "Content-Type": "application/x-www-form-urlencoded",
                "Accept": "application/json",
            }
        )
        # max_cache_ttl 0 means "ask every time": no cache at all rather than instantly stale ones.
        entries = settings.cache_max_entries if settings.max_cache_ttl > 0 else 0
        self._cache = TokenCache(entries)

    def __repr__(self) -> str:
        return f"TokenIntrospector(url={self._settings.url!r})"  # never the headers

    def authenticate(self, token: str) -> Identity:
        """The identity of an active token; raises InvalidTokenError (or ExpiredTokenError) for a
        token the provider does not vouch for, IntrospectionUnavailableError when it cannot say."""
        if len(token) > MAX_TOKEN_BYTES:
            raise InvalidTokenError(f"token is larger than {MAX_TOKEN_BYTES} bytes")
        if not B64TOKEN.fullmatch(token):  # not a bearer token: it is not sent anywhere
            raise InvalidTokenError("token has characters outside the RFC 6750 token alphabet")
        now = self._clock()
        cached = self._cache.get(token, now)
        if cached is not None:
            return cached.identity
        claims = self._introspect(token)
        identity, expires = self._identity(claims, now)
        expires_at = now + self._settings.max_cache_ttl
        if expires is not None:
            expires_at = min(expires_at, expires)
        self._cache.put(token, CachedToken(identity, expires_at, key_version=0))
        return identity

    def _introspect(self, token: str) -> dict[str, object]:
        url = self._settings.url
        body = urlencode({"token": token, "token_type_hint": "access_token"}).encode("ascii")
        try:
            status, data = self._post(url, body, self._headers, self._settings.timeout)
        except Exception as error:
            # Any failure to get an answer is the provider's, not the client's.
            raise self._unavailable(f"no answer ({describe_error(error)})") from None
        if status in (401, 403):
            # Our client credentials were refused: every opaque token fails until an operator
            # fixes client_id or the secret, so say so loudly and name what to check.
            log.error(
                "introspection endpoint %s refused our client credentials (HTTP %d): check "
                "client_id %r and the secret in %s",
                url,
                status,
                self._settings.client_id,
                self._settings.client_secret_file,
            )
            raise IntrospectionUnavailableError(
                f"token introspection is unavailable: the endpoint refused this service's "
                f"client credentials (HTTP {status})"
            )
        if status != 200:
            why = "redirects are not followed" if 300 <= status < 400 else "expected 200"
            raise self._unavailable(f"HTTP {status}; {why}")
        try:
            document = load_json_strictly(data)
        except (ValueError, RecursionError) as error:
            raise self._unavailable(
                f"response is not valid JSON ({describe_error(error)})"
            ) from None
        if not isinstance(document, dict):
            raise self._unavailable("response is not a JSON object")
        return document

    def _unavailable(self, why: str) -> IntrospectionUnavailableError:
        log.warning("introspection endpoint %s: %s", self._settings.url, why)
        return IntrospectionUnavailableError(f"token introspection is unavailable: {why}")

    def _identity(self, claims: Mapping[str, object], now: float) -> tuple[Identity, float | None]:
        """Check the provider's answer; returns the identity and the token's exp (if given).

        Messages name claims, never their values: they reach the client in WWW-Authenticate.
        """
        settings = self._settings
        if claims.get("active") is not True:  # RFC 7662 2.2: a JSON boolean; "true" is not one
            raise InvalidTokenError("token is not active")
        _refuse_refresh_token(claims)
        if settings.issuer is not None and claims.get("iss") != settings.issuer:
            raise InvalidTokenError("token issuer ('iss') is not accepted")
        if settings.audiences:
            audience = claims.get("aud")
            values = [audience] if isinstance(audience, str) else audience
            if not isinstance(values, list) or not set(settings.audiences) & {
                value for value in values if isinstance(value, str)
            }:
                raise InvalidTokenError("token audience ('aud') is not accepted")
        expires = numeric_date(claims, "exp")
        if expires is not None and expires <= now:
            raise ExpiredTokenError("token has expired")
        not_before = numeric_date(claims, "nbf")
        if not_before is not None and not_before > now + NBF_LEEWAY:
            raise InvalidTokenError("token is not valid yet ('nbf' is in the future)")
        # No fallback to "username": RFC 7662 makes it a human-readable name, not a stable
        # identifier, and policies compare subjects. Set subject_claim: username (or client_id
        # for client-credentials tokens) to use it deliberately.
        identity = Identity(
            subject=subject_of(claims, settings.subject_claim),
            roles=roles_of(claims, settings.roles_claim),
            issuer=self._issuer,
            method=_METHOD,
            scopes=scopes_of(claims),
            claims=MappingProxyType(dict(claims)),
        )
        return identity, expires


def _refuse_refresh_token(claims: Mapping[str, object]) -> None:
    # Introspection answers for any token kind (oidc-provider looks up refresh tokens even with
    # token_type_hint=access_token); a long-lived refresh token must not work as a bearer token.
    # token_type (oidc-provider), token_use (Ory Hydra), typ (Keycloak) say which kind it is.
    for name in ("token_type", "token_use", "typ"):
        value = claims.get(name)
        if isinstance(value, str) and value.lower() in _REFRESH_TYPES:
            raise InvalidTokenError("token is a refresh token, not an access token")
