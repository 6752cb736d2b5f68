"""Authorization: the PolicyEngine seam and its Casbin implementation."""

from __future__ import annotations

from ext_authz.policy.enforcer import PolicyEnforcer
from ext_authz.policy.engine import CasbinPolicyEngine, PolicyEngine

__all__ = ["CasbinPolicyEngine", "PolicyEnforcer", "PolicyEngine"]
