"""AuthPipeline: credentials -> identity -> guards -> authorization -> Decision (no I/O).

Used by `serve` and by every offline tool, so they decide alike. Only ExtAuthzError is turned into
a refusal here; anything else propagates to the servicer, which fails closed.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from ext_authz.credentials import Credential, CredentialExtractor, CredentialKind
from ext_authz.errors import (
    AccessDeniedError,
    AuthenticationError,
    ExtAuthzError,
    InvalidRequestError,
    InvalidTokenError,
    LimitedError,
)
from ext_authz.identity import Authenticator
from ext_authz.identity.denylist import Denylist
from ext_authz.models import ANONYMOUS, AuthRequest, Decision, Identity, Outcome
from ext_authz.policy.engine import PolicyEngine

__all__ = ["AuthPipeline", "Guard", "new_decision_id", "refusal"]


class Guard(Protocol):
    """A check between identity and authorization (blocks, rate limits)."""

    def check(self, identity: Identity, request: AuthRequest) -> None:
        """Return to let the request through; raise LimitedError to refuse it."""
        ...


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
    if isinstance(error, LimitedError):
        outcome = Outcome.FORBIDDEN if error.forbid else Outcome.LIMITED
        return Decision(
            outcome,
            error.code,
            decision_id,
            identity,
            message=str(error),
            request_id=request_id,
            retry_after=error.retry_after,
        )
    outcome = next((o for cls, o in _OUTCOME_OF_ERROR if isinstance(error, cls)), Outcome.ERROR)
    return Decision(
        outcome, error.code, decision_id, identity, message=str(error), request_id=request_id
    )


class AuthPipeline:
    """Runs the phases for one request and returns the Decision."""

    def __init__(
        self,
        credentials: CredentialExtractor,
        authenticators: Mapping[CredentialKind, Authenticator],
        engine: PolicyEngine,
        denylist: Callable[[], Denylist] | None = None,
        guards: Sequence[Guard] = (),
    ) -> None:
        self._credentials = credentials
        self._authenticators = authenticators
        self._engine = engine
        self._denylist = denylist
        self._guards = tuple(guards)

    def evaluate(self, request: AuthRequest) -> Decision:
        decision_id = new_decision_id()
        identity = ANONYMOUS
        try:
            credential = self._credentials.extract(request)
            if credential is not None:
                identity = self._authenticate(credential)
            for guard in self._guards:
                guard.check(identity, request)
            result = self._engine.decide(identity, request)
        except ExtAuthzError as error:
            return refusal(error, decision_id, request.request_id, identity)
        if result.allowed:
            outcome, reason, message = Outcome.ALLOW, "allowed", ""
        elif not identity.authenticated:
            outcome, reason = Outcome.UNAUTHENTICATED, "missing_credential"
            message = "this request needs credentials"
        else:
            outcome, reason = Outcome.FORBIDDEN, AccessDeniedError.code
            message = "no policy rule allows this request"
        return Decision(
            outcome, reason, decision_id, identity, result.matched_rule, message, request.request_id
        )

    def _authenticate(self, credential: Credential) -> Identity:
        authenticator = self._authenticators.get(credential.kind)
        if authenticator is None:
            raise InvalidTokenError(f"this service does not accept the {credential.source}")
        identity = authenticator.authenticate(credential.value)
        if self._denylist is not None:
            self._denylist().check(identity)  # cache hits included: revocation is immediate
        return identity
