"""Token-bucket math (the GCRA form), a pure function over integer microseconds.

A bucket holds up to ``burst`` tokens and gains one every ``interval_us``; a request takes one.
Instead of a token count it keeps one number, the theoretical arrival time ``tat``: the moment
the bucket will be full again. A missing ``tat`` (or one in the past) is a full bucket, so a
store may forget a key once its ``tat`` has passed, and Redis lets such keys expire.

The local store calls ``take``; the Redis script (redis_store.py) runs the same steps inside
Redis, with Redis's own clock. Integers keep both exact and identical.
"""

from __future__ import annotations

import math
from typing import NamedTuple

__all__ = ["Taken", "interval_us", "take"]

_US = 1_000_000


def interval_us(rate: int, period: int) -> int:
    """Microseconds per token for ``rate`` requests per ``period`` seconds, rounded up (the
    rounding can only make the limit stricter, by under a microsecond per token)."""
    return -(-period * _US // rate)


class Taken(NamedTuple):
    """The answer for one request: whether it may pass, what is left, and when to come back.
    (A NamedTuple: immutable like a frozen dataclass, and made in a third less time, once per
    rate-limited Check.)"""

    allowed: bool
    remaining: int  # requests that would pass right now, after this one
    retry_after_us: int  # until the next request can pass (0 for an allowed one)
    reset_after_us: int  # until the bucket is full again

    @property
    def retry_after_s(self) -> int:
        """Whole seconds for Retry-After: at least 1 for a refused request."""
        return max(1, math.ceil(self.retry_after_us / _US))

    @property
    def reset_after_s(self) -> int:
        return math.ceil(self.reset_after_us / _US)


def take(tat: int | None, now: int, interval: int, burst: int) -> tuple[int | None, Taken]:
    """Take one token at ``now``; returns the new ``tat`` (None: unchanged) and the answer."""
    base = now if tat is None or tat < now else tat
    new_tat = base + interval
    capacity = interval * burst
    if new_tat - now > capacity:
        wait = new_tat - now - capacity
        return None, Taken(False, 0, wait, base - now)
    remaining = (capacity - (new_tat - now)) // interval
    return new_tat, Taken(True, remaining, 0, new_tat - now)
