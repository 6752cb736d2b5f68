"""The authorization phase: Identity + AuthRequest -> PolicyResult, over the shipped model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from ext_authz.models import AuthRequest, Identity, PolicyResult
from ext_authz.policy import functions
from ext_authz.policy.enforcer import PolicyEnforcer

__all__ = ["CasbinPolicyEngine", "PolicyEngine", "principals_of"]

EFFECTS = ("allow", "deny")


class PolicyEngine(Protocol):
    def decide(self, identity: Identity, request: AuthRequest) -> PolicyResult: ...


def principals_of(identity: Identity) -> frozenset[str]:
    """The principals a policy rule can name for this caller (before role inheritance).

    Token roles and subjects are prefixed so that a token can never claim a built-in principal.
    """
    if not identity.authenticated:
        return frozenset({"everyone", "anonymous"})
    return frozenset(
        {"everyone", "authenticated", f"user:{identity.subject}"}
        | {f"role:{role}" for role in identity.roles}
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
    if "owner" in fields and fields["owner"] != "*" and "path" in fields:
        pattern = functions.compile_path_pattern(fields["path"])
        if fields["owner"] not in pattern.groupindex:
            raise ValueError(f"owner parameter {fields['owner']!r} is not in the path pattern")
    if fields.get("eft", "allow") not in EFFECTS:
        raise ValueError(f"effect {fields['eft']!r} must be 'allow' or 'deny'")


class CasbinPolicyEngine:
    """Decides with a PolicyEnforcer over (sub, principals, method, path, query)."""

    def __init__(self, enforcer: PolicyEnforcer) -> None:
        self._enforcer = enforcer

    @classmethod
    def from_files(cls, model: Path, policy: Path) -> CasbinPolicyEngine:
        return cls(PolicyEnforcer(model, policy, validate=validate_rule))

    def decide(self, identity: Identity, request: AuthRequest) -> PolicyResult:
        principals = self._enforcer.expand_roles(principals_of(identity))
        allowed, rule = self._enforcer.enforce_ex(
            identity.subject, principals, request.method, request.path, request.query
        )
        return PolicyResult(allowed=allowed, matched_rule=rule)
