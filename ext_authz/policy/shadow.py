"""Shadow mode: a candidate policy decides beside the live one and is never enforced.

Every request is decided by both; the live result is returned. Each difference is counted and
logged with the request (method, path, subject) and both decisions, so a policy change can be
watched against real traffic before it is made live. A candidate that fails is logged and
ignored: it can never affect the answer.
"""

from __future__ import annotations

import logging
import threading

from ext_authz.models import AuthRequest, Identity, PolicyResult
from ext_authz.policy.engine import PolicyEngine

__all__ = ["ShadowPolicyEngine"]

log = logging.getLogger("ext_authz.policy.shadow")


class ShadowPolicyEngine:
    def __init__(self, live: PolicyEngine, candidate: PolicyEngine) -> None:
        self._live = live
        self._candidate = candidate
        self._lock = threading.Lock()
        self.decisions = 0
        self.differences = 0
        self.errors = 0

    def decide(self, identity: Identity, request: AuthRequest) -> PolicyResult:
        live = self._live.decide(identity, request)
        try:
            candidate = self._candidate.decide(identity, request)
        except Exception:  # the candidate must never change the answer
            with self._lock:
                self.errors += 1
            log.exception("shadow policy failed on %s %s", request.method, request.path)
            return live
        with self._lock:
            self.decisions += 1
            if candidate.allowed != live.allowed:
                self.differences += 1
        if candidate.allowed != live.allowed:
            log.warning(
                "shadow policy disagrees",
                extra={
                    "fields": {
                        "event": "policy_shadow_difference",
                        "request_id": request.request_id,
                        "method": request.method,
                        "path": request.path,
                        "subject": identity.subject,
                        "live": "allow" if live.allowed else "deny",
                        "live_rule": live.matched_rule,
                        "candidate": "allow" if candidate.allowed else "deny",
                        "candidate_rule": candidate.matched_rule,
                    }
                },
            )
        return live
