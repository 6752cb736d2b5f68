"""In-memory fakes for the seams, shared by the unit tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ext_authz.identity.jwks import KeySet


class StaticKeys:
    """A KeySource with a fixed key set (what a loaded JWKS file gives the verifier)."""

    def __init__(self, keys: Sequence[Mapping[str, Any]], version: int = 1) -> None:
        self.keyset = KeySet(tuple(keys), fetched_at=0.0, version=version)
        self.refresh_requests = 0

    def current(self) -> KeySet:
        return self.keyset

    def request_refresh(self) -> None:
        self.refresh_requests += 1
