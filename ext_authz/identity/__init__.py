"""Authentication: the Authenticator seam and its implementations (JWT, opaque tokens through
introspection, API key, mTLS)."""

from __future__ import annotations

from typing import Protocol

from ext_authz.models import Identity

__all__ = ["Authenticator"]


class Authenticator(Protocol):
    def authenticate(self, value: str) -> Identity:
        """Return the identity a credential proves; raises AuthenticationError."""
        ...
