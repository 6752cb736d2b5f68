"""The authorization phase: Identity + AuthRequest -> PolicyResult, over the shipped model."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from ext_authz.errors import PolicyLoadError
from ext_authz.models import ANONYMOUS, AuthRequest, Identity, PolicyResult
from ext_authz.policy import functions
from ext_authz.policy.conditions import (
    Clock,
    Condition,
    ContextNeeds,
    RequestContext,
    combine,
    parse_condition,
    utc_now,
)
from ext_authz.policy.enforcer import PolicyEnforcer

__all__ = ["CasbinPolicyEngine", "PolicyEngine", "principals_of"]

EFFECTS = ("allow", "deny")
DECISION_CACHE_SIZE = 10_000


class PolicyEngine(Protocol):
    def decide(self, identity: Identity, request: AuthRequest) -> PolicyResult: ...


def principals_of(identity: Identity) -> frozenset[str]:
    """The principals a policy rule can name for this caller (before role inheritance).

    Token roles, scopes and subjects are prefixed so that a token can never claim a built-in
    principal, and a scope can never pass for a role of the same name.
    """
    if not identity.authenticated:
        return frozenset({"everyone", "anonymous"})
    return frozenset(
        {"everyone", "authenticated", f"user:{identity.subject}"}
        | {f"role:{role}" for role in identity.roles}
        | {f"scope:{scope}" for scope in identity.scopes}
    )


def validate_rule(columns: Sequence[str], values: Sequence[str]) -> None:
    """Check the fields of one ``p`` rule of the shipped model; raises ValueError."""
    fields = dict(zip(columns, values, strict=True))
    if "path" in fields:
        functions.compile_path_pattern(fields["path"])
    if "query" in fields:
        functions.parse_query_condition(fields["query"])
    if "method" in fields:
        functions.validate_method(fields["method"])
    if "cond" in fields:
        _check_condition(fields["cond"], fields.get("path"))
    if fields.get("eft", "allow") not in EFFECTS:
        raise ValueError(f"effect {fields['eft']!r} must be 'allow' or 'deny'")


def _check_condition(text: str, path: str | None) -> None:
    condition = parse_condition(text)
    if path is None:
        return
    missing = sorted(condition.path_params - functions.compile_path_pattern(path).groupindex.keys())
    if missing:
        raise ValueError(f"condition reads path.{missing[0]} but {path!r} has no {{{missing[0]}}}")


class CasbinPolicyEngine:
    """Decides with a PolicyEnforcer over (sub, principals, method, path, query, ctx).

    ``ctx`` is a RequestContext holding only what the policy's conditions read (``needs``), so
    that equal requests make equal cache keys; ``clock`` is read only when a condition reads
    the time.
    """

    def __init__(
        self,
        enforcer: PolicyEnforcer,
        needs: ContextNeeds | None = None,
        clock: Clock = utc_now,
        cache_size: int = DECISION_CACHE_SIZE,
    ) -> None:
        self._enforcer = enforcer
        self._needs = needs or ContextNeeds()
        # Most policies have no condition reading the request: one shared empty context.
        self._no_context = RequestContext() if self._needs == ContextNeeds() else None
        self._clock = clock
        # Keyed on everything a decision reads (the Identity fields principals come from, the
        # request's method, path and query, and the context its conditions read), so a hit
        # skips role expansion and the enforcer's own key checks. One cache per policy
        # version: a reload builds a new engine. Only a pure matcher's decisions are cached.
        self._decide: Callable[..., PolicyResult] = self._decide_uncached
        if cache_size > 0 and enforcer.cacheable:
            self._decide = functools.lru_cache(maxsize=cache_size)(self._decide_uncached)

    @classmethod
    def from_files(cls, model: Path, policy: Path, clock: Clock = utc_now) -> CasbinPolicyEngine:
        found: list[Condition] = []

        def validate(columns: Sequence[str], values: Sequence[str]) -> None:
            validate_rule(columns, values)
            if "cond" in columns:
                found.append(parse_condition(values[list(columns).index("cond")]))

        # No cache of its own: this engine's cache, in front of it, sees every request first.
        enforcer = PolicyEnforcer(model, policy, validate=validate, cache_size=0)
        engine = cls(enforcer, combine(condition.needs for condition in found), clock)
        engine._check_request_shape(model)
        return engine

    def _check_request_shape(self, model: Path) -> None:
        """Fail at load, rather than on every request, for a model whose request or matcher
        does not fit this engine (e.g. one written for an older release)."""
        try:
            self.decide(ANONYMOUS, AuthRequest("GET", "/"))
        except Exception as exc:  # whatever Casbin raises: name the model file
            raise PolicyLoadError(
                f"{model}: the model must take r = sub, principals, method, path, query, ctx: {exc}"
            ) from exc

    def decision_cache_stats(self) -> tuple[int, int]:
        """(hits, misses) of this policy version's decision cache; (0, 0) when not cached."""
        cache_info = getattr(self._decide, "cache_info", None)
        if cache_info is None:
            return 0, 0
        info = cache_info()
        return info.hits, info.misses

    def decide(self, identity: Identity, request: AuthRequest) -> PolicyResult:
        ctx = self._no_context
        if ctx is None:
            ctx = self._needs.context(
                claims=identity.claims,
                headers=request.headers,
                host=request.host,
                source=request.source_address,
                clock=self._clock,
            )
        return self._decide(
            identity.authenticated,
            identity.subject,
            identity.roles,
            identity.scopes,
            request.method,
            request.path,
            request.query,
            ctx,
        )

    def _decide_uncached(
        self,
        authenticated: bool,
        subject: str,
        roles: tuple[str, ...],
        scopes: tuple[str, ...],
        method: str,
        path: str,
        query: tuple[tuple[str, str], ...],
        ctx: RequestContext,
    ) -> PolicyResult:
        identity = Identity(subject, roles, authenticated, scopes=scopes)
        principals = self._enforcer.expand_roles(principals_of(identity))
        # An anonymous caller has no subject a condition could compare.
        allowed, rule = self._enforcer.enforce_ex(
            subject if authenticated else "", principals, method, path, query, ctx
        )
        return PolicyResult(allowed=allowed, matched_rule=rule)
