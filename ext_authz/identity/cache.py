"""A bounded cache of verified tokens, keyed by a hash of the token (never the token itself)."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

from ext_authz.models import Identity

__all__ = ["CachedToken", "TokenCache"]


@dataclass(frozen=True, slots=True)
class CachedToken:
    identity: Identity
    expires_at: float
    key_version: int  # the issuer's key set version it was verified against


class TokenCache:
    """LRU of at most ``max_entries`` verified tokens; an entry is dropped at its token's ``exp``.

    A flood of distinct tokens evicts old entries instead of growing memory past the bound.
    """

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._entries: OrderedDict[bytes, CachedToken] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0

    @staticmethod
    def _key(token: str) -> bytes:
        return hashlib.sha256(token.encode("utf-8")).digest()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def hits(self) -> int:
        """Lookups that found a live entry (none are counted while the cache is off)."""
        return self._hits

    @property
    def misses(self) -> int:
        """Lookups that found no entry, or only an expired one."""
        return self._misses

    def get(self, token: str, now: float) -> CachedToken | None:
        if self._max == 0:
            return None
        key = self._key(token)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self._misses += 1
                return None
            if now >= entry.expires_at:
                del self._entries[key]
                self._misses += 1
                return None
            self._entries.move_to_end(key)
            self._hits += 1
            return entry

    def put(self, token: str, entry: CachedToken) -> None:
        if self._max == 0:
            return
        key = self._key(token)
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
