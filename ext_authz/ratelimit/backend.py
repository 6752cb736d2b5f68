"""The store a service uses, from its settings: local, or Redis behind the failover."""

from __future__ import annotations

from ext_authz.ratelimit.failover import FailoverStore
from ext_authz.ratelimit.redis_store import RedisStore
from ext_authz.ratelimit.store import LocalStore, Store
from ext_authz.settings import Settings

__all__ = ["open_store"]


def open_store(settings: Settings) -> tuple[Store, FailoverStore | None]:
    """The store for rate limits and blocks, and its failover (None for a local store), whose
    error count the metrics read. Connects lazily: a Redis that is down at start is a failure
    like any other (see failover.py), never a reason not to start."""
    limits = settings.rate_limits
    max_blocks = settings.security.max_tracked_keys
    local = LocalStore(limits.max_keys, max_blocks)
    if limits.backend == "local" or limits.redis is None:
        return local, None
    redis = RedisStore(limits.redis, max_blocks)
    failover = FailoverStore(redis, local, limits.on_backend_error, limits.redis.retry_interval)
    return failover, failover
