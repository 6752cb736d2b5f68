"""Rate limits: token buckets per subject, API key, address and route class, kept in this
process or in Redis for a fleet of replicas; the security blocks use the same stores.

    rules.py      which limit applies to a request (the precedence)
    bucket.py     the token-bucket math (pure)
    store.py      the Store protocol and LocalStore (bounded)
    redis_store.py  RedisStore: one atomic Lua script per token
    failover.py   circuit breaker, and fail closed or fall back to local buckets
    guard.py      RateLimiter, the pipeline Guard
    headers.py    the RateLimit-Policy and RateLimit response fields
"""

from ext_authz.ratelimit.backend import open_store
from ext_authz.ratelimit.failover import FailoverStore
from ext_authz.ratelimit.guard import RateLimiter
from ext_authz.ratelimit.headers import quota_headers
from ext_authz.ratelimit.rules import LimitRule, Rules, compile_rules, select
from ext_authz.ratelimit.store import LocalStore, Store, StoredBlock

__all__ = [
    "FailoverStore",
    "LimitRule",
    "LocalStore",
    "RateLimiter",
    "Rules",
    "Store",
    "StoredBlock",
    "compile_rules",
    "open_store",
    "quota_headers",
    "select",
]
