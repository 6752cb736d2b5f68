"""FailoverStore: the shared store (Redis) with a circuit breaker and the configured behaviour
when it cannot answer.

After a failure the breaker opens for ``retry_interval`` seconds: calls then skip Redis at once,
so a dead Redis costs a request nothing beyond the configured behaviour. Then one call tries
Redis again (the others keep skipping it until that one succeeds or fails).

What a failure means:

- taking a token: ``fail_closed`` refuses the request (RateLimitUnavailableError, 503), only
  where a limit applies; ``local`` counts it in this replica's own buckets instead (each replica
  then allows up to the full limit on its own until Redis is back);
- blocks: every block is also recorded locally, and a block check that cannot reach Redis
  answers from the local record in both modes: a replica keeps enforcing the blocks it made,
  and an outage never turns into refusals on routes without limits.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Literal, TypeVar

from ext_authz.errors import RateLimitUnavailableError
from ext_authz.ratelimit.bucket import Taken
from ext_authz.ratelimit.store import Store, StoredBlock

__all__ = ["FailoverStore"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class FailoverStore:
    """A Store: ``primary`` while it answers, else ``on_error`` decides (see the module)."""

    def __init__(
        self,
        primary: Store,
        fallback: Store,
        on_error: Literal["fail_closed", "local"],
        retry_interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._primary = primary
        self._fallback = fallback
        self._fail_closed = on_error == "fail_closed"
        self._retry_interval = retry_interval
        self._clock = clock
        self._open_until = 0.0  # the breaker is open (Redis skipped) until then
        self._lock = threading.Lock()
        self.errors = 0  # failed calls to the primary (a metric)

    @property
    def available(self) -> bool:
        """False while the breaker is open."""
        return self._clock() >= self._open_until

    def take(self, key: str, interval_us: int, burst: int) -> Taken:
        try:
            return self._primary_call(lambda: self._primary.take(key, interval_us, burst))
        except RateLimitUnavailableError:
            if self._fail_closed:
                raise
            return self._fallback.take(key, interval_us, burst)

    def block(self, key: str, ttl_s: int, reason: str) -> None:
        self._fallback.block(key, ttl_s, reason)
        with contextlib.suppress(RateLimitUnavailableError):  # held locally; counted
            self._primary_call(lambda: self._primary.block(key, ttl_s, reason))

    def blocked(self, keys: Sequence[str]) -> list[float | None]:
        try:
            return self._primary_call(lambda: self._primary.blocked(keys))
        except RateLimitUnavailableError:
            return self._fallback.blocked(keys)

    def blocks(self) -> list[StoredBlock]:
        try:
            return self._primary_call(self._primary.blocks)
        except RateLimitUnavailableError:
            return self._fallback.blocks()

    def _primary_call(self, call: Callable[[], T]) -> T:
        now = self._clock()
        with self._lock:
            if now < self._open_until:
                raise RateLimitUnavailableError("the rate-limit store is unavailable")
            if self._open_until:  # half-open: this call probes, the others keep skipping
                self._open_until = now + self._retry_interval
        try:
            result = call()
        except RateLimitUnavailableError as error:
            with self._lock:
                self.errors += 1
                was_closed = not self._open_until
                self._open_until = self._clock() + self._retry_interval
            if was_closed:
                log.warning("%s; retrying in %s s", error, self._retry_interval)
            raise
        if self._open_until:
            with self._lock:
                self._open_until = 0.0
            log.warning("the rate-limit store answers again")
        return result
