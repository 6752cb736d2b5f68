"""Credential extraction: which credential a request carries, and from where.

At most one credential is accepted per request. A bearer token may come from the Authorization
header, a named cookie or (only when enabled) a query parameter; an API key from its header; a
client certificate identity from the connection. A token in two places, two tokens, or a token
beside an API key is refused: an attacker must not be able to choose which one we read.
A client certificate is only used when no token or API key is sent.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from ext_authz.errors import InvalidTokenError
from ext_authz.models import AuthRequest
from ext_authz.settings import CredentialSettings

__all__ = [
    "B64TOKEN",
    "Credential",
    "CredentialExtractor",
    "CredentialKind",
    "extract_bearer_token",
]

# RFC 6750 b64token, what a bearer token is; a JWT is three base64url parts joined by dots.
B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# The scheme is case-insensitive, the token not: matched apart, the token's ~1 KiB scans 5x
# faster than under one IGNORECASE pattern.
_BEARER_SCHEME = "bearer "
# Reads the verified client certificate's identity off a request (see identity/mtls.py).
PrincipalSource = Callable[[AuthRequest], str | None]


class CredentialKind(StrEnum):
    BEARER = "bearer"
    API_KEY = "api_key"
    CLIENT_CERTIFICATE = "mtls"


@dataclass(frozen=True, slots=True)
class Credential:
    """A credential and where it was found (``source`` is safe to log; ``value`` never is)."""

    kind: CredentialKind
    value: str = field(repr=False)  # so a logged or asserted Credential never shows it
    source: str


def extract_bearer_token(request: AuthRequest) -> str | None:
    """The token of ``Authorization: Bearer <token>``, or None without an Authorization header.

    Raises InvalidTokenError when the header is present but not exactly one Bearer token: a bad
    credential is refused, never downgraded to anonymous. Envoy joins duplicate headers with
    commas, so two Authorization headers arrive as one value with a comma and are refused here.
    """
    value = request.headers.get("authorization")
    if value is None:
        return None
    value = value.strip()
    scheme = len(_BEARER_SCHEME)
    if value[:scheme].lower() != _BEARER_SCHEME or not B64TOKEN.fullmatch(value, scheme):
        raise InvalidTokenError(
            "the Authorization header must hold exactly one 'Bearer <token>' credential"
        )
    return value[scheme:]


def _cookie(request: AuthRequest, name: str) -> str | None:
    values = []
    for part in request.headers.get("cookie", "").split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            values.append(value.strip().strip('"'))
    if len(values) > 1:
        raise InvalidTokenError(f"cookie {name!r} is sent more than once")
    return values[0] if values else None


def _query_parameter(request: AuthRequest, name: str) -> str | None:
    values = [value for key, value in request.query if key == name]
    if len(values) > 1:
        raise InvalidTokenError(f"query parameter {name!r} is sent more than once")
    return values[0] if values else None


class CredentialExtractor:
    """Finds the one credential of a request according to the credential settings."""

    def __init__(
        self, settings: CredentialSettings, mtls_principal: PrincipalSource | None
    ) -> None:
        self._settings = settings
        self._mtls_principal = mtls_principal

    def extract(self, request: AuthRequest) -> Credential | None:
        found = self._bearer_tokens(request)
        api_keys = self._settings.api_keys
        if api_keys is not None and api_keys.header in request.headers:
            found.append(
                Credential(
                    CredentialKind.API_KEY,
                    request.headers[api_keys.header],
                    f"{api_keys.header} header",
                )
            )
        if len(found) > 1:
            sources = " and ".join(credential.source for credential in found)
            raise InvalidTokenError(f"more than one credential was sent ({sources}); send one")
        if found:
            return found[0]
        principal = self._mtls_principal(request) if self._mtls_principal else None
        if principal:
            return Credential(CredentialKind.CLIENT_CERTIFICATE, principal, "client certificate")
        return None

    def _bearer_tokens(self, request: AuthRequest) -> list[Credential]:
        bearer = self._settings.bearer
        tokens: list[Credential] = []
        if bearer.header:
            token = extract_bearer_token(request)
            if token is not None:
                tokens.append(Credential(CredentialKind.BEARER, token, "Authorization header"))
        if bearer.cookie:
            token = _cookie(request, bearer.cookie)
            if token is not None:
                tokens.append(_token(token, f"cookie {bearer.cookie!r}"))
        if bearer.query_parameter:
            token = _query_parameter(request, bearer.query_parameter)
            if token is not None:
                tokens.append(_token(token, f"query parameter {bearer.query_parameter!r}"))
        return tokens


def _token(value: str, source: str) -> Credential:
    if not B64TOKEN.fullmatch(value):
        raise InvalidTokenError(f"the token in the {source} is malformed")
    return Credential(CredentialKind.BEARER, value, source)
