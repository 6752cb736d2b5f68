"""The gRPC servicer: thin, and it never raises. Anything unexpected is a 503 refusal."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.trace import Span, StatusCode, TracerProvider

from ext_authz._proto.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from ext_authz.decision_log import DecisionLog
from ext_authz.errors import ExtAuthzError, InvalidRequestError
from ext_authz.models import AuthRequest, Decision, Outcome
from ext_authz.observe import DecisionObserver, notify
from ext_authz.pipeline import new_decision_id, refusal
from ext_authz.request import request_id_of, to_auth_request
from ext_authz.response import to_check_response
from ext_authz.runtime import Runtime
from ext_authz.settings import HeaderSettings
from ext_authz.telemetry import (
    ATTR_DECISION,
    ATTR_DECISION_ID,
    ATTR_REASON,
    ATTR_REQUEST_ID,
    ATTR_ROUTE,
    ATTR_RULE,
    TRACER_NAME,
    check_span,
    extract_parent,
    skips_unsampled_callers,
)

__all__ = ["AuthorizationServicer"]

log = logging.getLogger(__name__)
# Used when the runtime itself is unavailable: the failure is still logged as a decision.
_LOG_ONLY: Sequence[DecisionObserver] = (DecisionLog(),)


class AuthorizationServicer(external_auth_pb2_grpc.AuthorizationServicer):
    """envoy.service.auth.v3.Authorization: CheckRequest -> AuthRequest -> Decision -> response.

    Each Check is one SERVER span (telemetry.SPAN_CHECK) continuing the caller's trace, from
    ``tracer_provider`` (default: the global one that telemetry.configure_tracing installs).
    """

    def __init__(
        self, runtime: Callable[[], Runtime], tracer_provider: TracerProvider | None = None
    ) -> None:
        self._runtime = runtime
        self._tracer = trace.get_tracer(TRACER_NAME, tracer_provider=tracer_provider)
        self._skip_unsampled = skips_unsampled_callers(self._tracer)

    def Check(
        self,
        request: external_auth_pb2.CheckRequest,
        context: grpc.ServicerContext | grpc.aio.ServicerContext[Any, Any] | None,
    ) -> external_auth_pb2.CheckResponse:
        started = time.perf_counter()
        metadata = context.invocation_metadata() if context is not None else None
        parent = extract_parent(metadata or (), request.attributes.request.http.headers)
        with check_span(self._tracer, parent, self._skip_unsampled) as span:
            auth_request: AuthRequest | None = None
            observers: Sequence[DecisionObserver] = _LOG_ONLY
            try:
                runtime = self._runtime()
                observers = runtime.observers
                try:
                    auth_request = to_auth_request(request)
                except InvalidRequestError as error:
                    decision = refusal(error, new_decision_id(), request_id_of(request))
                else:
                    decision = runtime.pipeline.evaluate(auth_request)
                response = to_check_response(
                    decision,
                    auth_request,
                    runtime.headers,
                    runtime.credential_headers,
                    runtime.credential_query,
                )
            except Exception as exc:  # fail closed: whatever broke, the answer is a refusal
                log.exception("check failed; refusing the request")
                span.record_exception(exc)
                code = exc.code if isinstance(exc, ExtAuthzError) else "internal_error"
                decision = Decision(
                    Outcome.ERROR,
                    code,
                    new_decision_id(),
                    message="internal error",
                    request_id=request_id_of(request),
                )
                response = to_check_response(decision, auth_request, HeaderSettings())
            _annotate(span, decision, auth_request)
            # Inside the span, so the decision log (and every observer) sees its trace id.
            notify(observers, decision, auth_request, time.perf_counter() - started)
        return response


def _annotate(span: Span, decision: Decision, request: AuthRequest | None) -> None:
    if not span.is_recording():  # unsampled or tracing off: skip building the attributes
        return
    span.set_attributes(
        {
            ATTR_REQUEST_ID: decision.request_id,
            ATTR_DECISION: decision.outcome.value,
            ATTR_REASON: decision.reason_code,
            ATTR_DECISION_ID: decision.decision_id,
        }
    )
    if decision.matched_rule is not None:
        span.set_attribute(ATTR_RULE, decision.matched_rule)
    if request is not None:
        span.set_attribute(ATTR_ROUTE, f"{request.method} {request.path}")
    if decision.outcome is Outcome.ERROR:  # the service could not decide (503)
        span.set_status(StatusCode.ERROR, decision.reason_code)
