"""RateLimiter: the Guard that takes a token from the bucket of the rule that applies."""

from __future__ import annotations

from ext_authz.errors import RateLimitedError
from ext_authz.models import AuthRequest, Identity, Quota
from ext_authz.ratelimit.rules import Rules, select
from ext_authz.ratelimit.store import Store

__all__ = ["RateLimiter"]


class RateLimiter:
    """Runs between identity and authorization (see pipeline.Guard). Over the limit: raises
    RateLimitedError (429, Retry-After, RateLimit headers). Allowed: returns the Quota when
    ``headers_on_allow`` is set, so the client sees what is left."""

    def __init__(self, rules: Rules, store: Store, headers_on_allow: bool) -> None:
        self._rules = rules
        self._store = store
        self._headers_on_allow = headers_on_allow

    def check(self, identity: Identity, request: AuthRequest) -> Quota | None:
        found = select(self._rules, identity, request)
        if found is None:
            return None
        rule, key = found
        taken = self._store.take(key, rule.interval_us, rule.burst)
        if not taken.allowed:
            retry_after = taken.retry_after_s
            raise RateLimitedError(
                f"over the rate limit {rule.name!r}; retry in {retry_after} seconds",
                retry_after,
                rule.quota(0, retry_after),
            )
        if not self._headers_on_allow:
            return None
        return rule.quota(taken.remaining, taken.reset_after_s)
