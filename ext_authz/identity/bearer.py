"""One Authenticator for bearer tokens: JWTs to the JWT verifier, opaque tokens to introspection."""

from __future__ import annotations

from ext_authz.errors import InvalidTokenError
from ext_authz.identity import Authenticator
from ext_authz.models import Identity

__all__ = ["BearerAuthenticator"]


class BearerAuthenticator:
    """Routes by shape only. A JWS compact token has exactly two dots; an opaque token sent to the
    JWT path would only fail, and a JWT sent to introspection would let a provider vouch for a
    token whose issuer and signature we are configured to check ourselves."""

    def __init__(self, jwt: Authenticator | None, introspection: Authenticator | None) -> None:
        self._jwt = jwt
        self._introspection = introspection

    def authenticate(self, value: str) -> Identity:
        if value.count(".") == 2:
            if self._jwt is None:
                raise InvalidTokenError("no JWT issuers configured")
            return self._jwt.authenticate(value)
        if self._introspection is None:
            raise InvalidTokenError("opaque tokens are not accepted")
        return self._introspection.authenticate(value)
