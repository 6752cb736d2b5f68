"""AuthPipeline: credentials -> identity -> authorization -> Decision (pure, no I/O).

Used by `serve` and by every offline tool, so they decide alike. Only ExtAuthzError is turned into
a refusal here; anything else propagates to the servicer, which fails closed.
"""

from __future__ import annotations

import uuid

from ext_authz.credentials import extract_bearer_token
from ext_authz.errors import (
    AccessDeniedError,
    AuthenticationError,
    ExtAuthzError,
    InvalidRequestError,
    InvalidTokenError,
)
from ext_authz.identity import TokenVerifier
from ext_authz.models import ANONYMOUS, AuthRequest, Decision, Identity, Outcome
from ext_authz.policy.engine import PolicyEngine

__all__ = ["AuthPipeline", "new_decision_id", "refusal"]

_OUTCOME_OF_ERROR: tuple[tuple[type[ExtAuthzError], Outcome], ...] = (
    (InvalidRequestError, Outcome.INVALID_REQUEST),
    (AuthenticationError, Outcome.UNAUTHENTICATED),
    (AccessDeniedError, Outcome.FORBIDDEN),
)


def new_decision_id() -> str:
    return uuid.uuid4().hex


def refusal(
    error: ExtAuthzError, decision_id: str, request_id: str, identity: Identity = ANONYMOUS
) -> Decision:
    """The Decision for an error: each error class maps to exactly one outcome."""
    outcome = next((o for cls, o in _OUTCOME_OF_ERROR if isinstance(error, cls)), Outcome.ERROR)
    return Decision(
        outcome, error.code, decision_id, identity, message=str(error), request_id=request_id
    )


class AuthPipeline:
    """Runs the phases for one request and returns the Decision."""

    def __init__(self, verifier: TokenVerifier | None, engine: PolicyEngine) -> None:
        self._verifier = verifier
        self._engine = engine

    def evaluate(self, request: AuthRequest) -> Decision:
        decision_id = new_decision_id()
        identity = ANONYMOUS
        try:
            token = extract_bearer_token(request)
            if token is not None:
                identity = self._authenticate(token)
            result = self._engine.decide(identity, request)
        except ExtAuthzError as error:
            return refusal(error, decision_id, request.request_id, identity)
        if result.allowed:
            outcome, reason, message = Outcome.ALLOW, "allowed", ""
        elif not identity.authenticated:
            outcome, reason = Outcome.UNAUTHENTICATED, "missing_credential"
            message = "this request needs a bearer token"
        else:
            outcome, reason = Outcome.FORBIDDEN, AccessDeniedError.code
            message = "no policy rule allows this request"
        return Decision(
            outcome, reason, decision_id, identity, result.matched_rule, message, request.request_id
        )

    def _authenticate(self, token: str) -> Identity:
        if self._verifier is None:
            raise InvalidTokenError("this service has no token issuers configured")
        return self._verifier.verify(token)
