"""Where buckets and blocks live: the Store protocol and the in-process LocalStore.

Keys are plain strings chosen by the callers (``limit:<rule>:<value>``, ``block:<type>:<key>``).
Every Store answers the same questions, so the limiter and the blocklist work unchanged on a
LocalStore (one replica) or on Redis (a fleet; redis_store.py, wrapped by failover.py).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ext_authz.ratelimit.bucket import Taken, take

__all__ = ["LocalStore", "StoredBlock", "Store"]

_US = 1_000_000


@dataclass(frozen=True, slots=True)
class StoredBlock:
    key: str
    reason: str
    remaining_s: float


class Store(Protocol):
    """Token buckets and timed blocks, by key. A Store that cannot answer raises
    RateLimitUnavailableError (never guesses)."""

    def take(self, key: str, interval_us: int, burst: int) -> Taken:
        """Take one token from ``key``'s bucket (one token per ``interval_us``, ``burst`` at
        most)."""
        ...

    def block(self, key: str, ttl_s: int, reason: str) -> None:
        """Block ``key`` for ``ttl_s`` seconds (a renewed block starts its TTL again)."""
        ...

    def blocked(self, keys: Sequence[str]) -> list[float | None]:
        """For each key, the seconds its block has left, or None when it is not blocked."""
        ...

    def blocks(self) -> list[StoredBlock]:
        """The blocks in force, the one expiring first first."""
        ...


class LocalStore:
    """Buckets and blocks in this process, each map bounded.

    Buckets: at most ``max_keys``; beyond that the least recently used goes, and a key that
    comes back starts with a full bucket. A bucket that has refilled is dropped on the way
    (forgetting a full bucket changes nothing). Blocks: at most ``max_blocks``; every block of
    one blocklist has the same TTL, so insertion order is expiry order and the oldest goes.
    """

    def __init__(
        self,
        max_keys: int,
        max_blocks: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_keys = max_keys
        self._max_blocks = max_blocks if max_blocks is not None else max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, int] = OrderedDict()  # key -> tat (µs)
        self._blocks: OrderedDict[str, tuple[float, str]] = OrderedDict()  # key -> expiry, why
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Buckets held."""
        return len(self._buckets)

    def take(self, key: str, interval_us: int, burst: int) -> Taken:
        now = int(self._clock() * _US)
        buckets = self._buckets
        with self._lock:
            new_tat, taken = take(buckets.get(key), now, interval_us, burst)
            if new_tat is not None:
                buckets[key] = new_tat
                buckets.move_to_end(key)
                # The oldest entry first: drop it if full again, or if over the bound.
                while buckets:
                    oldest = next(iter(buckets))
                    if buckets[oldest] > now and len(buckets) <= self._max_keys:
                        break
                    del buckets[oldest]
        return taken

    def block(self, key: str, ttl_s: int, reason: str) -> None:
        now = self._clock()
        with self._lock:
            self._prune_blocks(now)
            self._blocks[key] = (now + ttl_s, reason)
            self._blocks.move_to_end(key)
            if len(self._blocks) > self._max_blocks:
                self._blocks.popitem(last=False)

    def blocked(self, keys: Sequence[str]) -> list[float | None]:
        if not self._blocks:  # the common case, without taking the lock
            return [None] * len(keys)
        now = self._clock()
        with self._lock:
            self._prune_blocks(now)
            entries = [self._blocks.get(key) for key in keys]
        return [None if entry is None else entry[0] - now for entry in entries]

    def blocks(self) -> list[StoredBlock]:
        now = self._clock()
        with self._lock:
            self._prune_blocks(now)
            return [
                StoredBlock(key, reason, expires - now)
                for key, (expires, reason) in self._blocks.items()
            ]

    def _prune_blocks(self, now: float) -> None:
        while self._blocks and next(iter(self._blocks.values()))[0] <= now:
            self._blocks.popitem(last=False)
