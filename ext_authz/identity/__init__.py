"""Authentication: the TokenVerifier seam and its JWT implementation."""

from __future__ import annotations

from typing import Protocol

from ext_authz.models import Identity

__all__ = ["TokenVerifier"]


class TokenVerifier(Protocol):
    def verify(self, token: str) -> Identity:
        """Return the caller's identity; raises AuthenticationError."""
        ...
