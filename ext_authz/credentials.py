"""Credential extraction: where the bearer token comes from."""

from __future__ import annotations

import re

from ext_authz.errors import InvalidTokenError
from ext_authz.models import AuthRequest

__all__ = ["extract_bearer_token"]

# RFC 6750 b64token; a JWT is three base64url parts joined by dots.
_BEARER = re.compile(r"Bearer ([A-Za-z0-9\-._~+/]+=*)", re.IGNORECASE)


def extract_bearer_token(request: AuthRequest) -> str | None:
    """Return the bearer token, or None when the request carries no Authorization header.

    Raises InvalidTokenError when the header is present but not exactly one Bearer token: a bad
    credential is refused, never downgraded to anonymous. Envoy joins duplicate headers with
    commas, so two Authorization headers arrive as one value with a comma and are refused here.
    """
    value = request.headers.get("authorization")
    if value is None:
        return None
    match = _BEARER.fullmatch(value.strip())
    if match is None:
        raise InvalidTokenError(
            "the Authorization header must hold exactly one 'Bearer <token>' credential"
        )
    return match.group(1)
