"""AuthPipeline: credentials -> identity -> guards -> authorization -> Decision (no I/O).

Used by `serve` and by every offline tool, so they decide alike. Only ExtAuthzError is turned into
a refusal here; anything else propagates to the servicer, which fails closed.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN, Span, StatusCode

from ext_authz.credentials import Credential, CredentialExtractor, CredentialKind
from ext_authz.errors import (
    AccessDeniedError,
    AuthenticationError,
    ExtAuthzError,
    InvalidRequestError,
    InvalidTokenError,
    LimitedError,
    RateLimitedError,
)
from ext_authz.identity import Authenticator
from ext_authz.identity.denylist import Denylist
from ext_authz.models import ANONYMOUS, AuthRequest, Decision, Identity, Outcome, Quota
from ext_authz.policy.engine import PolicyEngine
from ext_authz.telemetry import (
    ATTR_AUTH_METHOD,
    ATTR_CREDENTIAL_SOURCE,
    ATTR_PROVIDER,
    ATTR_REASON,
    ATTR_RULE,
    SPAN_AUTHORIZATION,
    SPAN_CREDENTIALS,
    SPAN_GUARDS,
    SPAN_IDENTITY,
    phase_tracer,
)

__all__ = ["AuthPipeline", "Guard", "new_decision_id", "refusal"]


class Guard(Protocol):
    """A check between identity and authorization (blocks, rate limits)."""

    def check(self, identity: Identity, request: AuthRequest) -> Quota | None:
        """Return to let the request through (with the Quota that applied, for the client's
        RateLimit headers, or None); raise LimitedError to refuse it."""
        ...


_OUTCOME_OF_ERROR: tuple[tuple[type[ExtAuthzError], Outcome], ...] = (
    (InvalidRequestError, Outcome.INVALID_REQUEST),
    (AuthenticationError, Outcome.UNAUTHENTICATED),
    (AccessDeniedError, Outcome.FORBIDDEN),
)


def new_decision_id() -> str:
    """32 random hex digits (128 bits): a uuid4's shape, at a third of its cost."""
    return secrets.token_hex(16)


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
            quota=error.quota if isinstance(error, RateLimitedError) else None,
        )
    outcome = next((o for cls, o in _OUTCOME_OF_ERROR if isinstance(error, cls)), Outcome.ERROR)
    return Decision(
        outcome, error.code, decision_id, identity, message=str(error), request_id=request_id
    )


class _NoPhaseSpan(AbstractContextManager[Span]):
    """Tracing off, unsampled, or no Check: no child span, and setters that do nothing. A plain
    shared object, not a generator: this runs several times per Check."""

    __slots__ = ()

    def __enter__(self) -> Span:
        return INVALID_SPAN

    def __exit__(self, *_: object) -> None:
        return None


_NO_PHASE_SPAN = _NoPhaseSpan()


def _phase(name: str, recording: bool) -> AbstractContextManager[Span]:
    """A child span for one phase (see _phase_span) when the Check's span is ``recording``."""
    return _phase_span(name) if recording else _NO_PHASE_SPAN


@contextmanager
def _phase_span(name: str) -> Iterator[Span]:
    """A refusal is an answer, not a failure: it only sets the reason code; anything else is
    recorded as the error it is and propagates."""
    with phase_tracer().start_as_current_span(
        name, record_exception=False, set_status_on_exception=False
    ) as span:
        try:
            yield span
        except ExtAuthzError as error:
            span.set_attribute(ATTR_REASON, error.code)
            raise
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(StatusCode.ERROR, type(exc).__name__)
            raise


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
        """Decide ``request``, with a child span per phase that runs (see telemetry.py)."""
        decision_id = new_decision_id()
        identity = ANONYMOUS
        # Phase spans only under a recording Check span: asked once, not once per phase.
        recording = trace.get_current_span().is_recording()
        try:
            try:
                identity = self._identify(request, recording)
            except AuthenticationError:
                # A blocked address stays blocked however bad its credentials: a credential
                # stuffer keeps getting 429s, not a fresh 401 per guess.
                self._guard(ANONYMOUS, request, recording)
                raise
            quota = self._guard(identity, request, recording)
            with _phase(SPAN_AUTHORIZATION, recording) as span:
                result = self._engine.decide(identity, request)
                if result.matched_rule is not None:
                    span.set_attribute(ATTR_RULE, result.matched_rule)
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
            outcome,
            reason,
            decision_id,
            identity,
            result.matched_rule,
            message,
            request.request_id,
            quota=quota if outcome is Outcome.ALLOW else None,
        )

    def _identify(self, request: AuthRequest, recording: bool) -> Identity:
        with _phase(SPAN_CREDENTIALS, recording) as span:
            credential = self._credentials.extract(request)
            if credential is None:
                return ANONYMOUS
            span.set_attribute(ATTR_CREDENTIAL_SOURCE, credential.source)
        with _phase(SPAN_IDENTITY, recording) as span:
            identity = self._authenticate(credential)
            if recording:
                span.set_attributes(
                    {ATTR_PROVIDER: identity.issuer, ATTR_AUTH_METHOD: identity.method}
                )
        return identity

    def _guard(self, identity: Identity, request: AuthRequest, recording: bool) -> Quota | None:
        """Run every guard; the last Quota one returned (the rate limiter runs last)."""
        quota = None
        if self._guards:
            with _phase(SPAN_GUARDS, recording):
                for guard in self._guards:
                    quota = guard.check(identity, request) or quota
        return quota

    def _authenticate(self, credential: Credential) -> Identity:
        authenticator = self._authenticators.get(credential.kind)
        if authenticator is None:
            raise InvalidTokenError(f"this service does not accept the {credential.source}")
        identity = authenticator.authenticate(credential.value)
        if self._denylist is not None:
            self._denylist().check(identity)  # cache hits included: revocation is immediate
        return identity
