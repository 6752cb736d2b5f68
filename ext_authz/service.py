"""The gRPC servicer: thin, and it never raises. Anything unexpected is a 503 refusal."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import grpc

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

__all__ = ["AuthorizationServicer"]

log = logging.getLogger(__name__)
# Used when the runtime itself is unavailable: the failure is still logged as a decision.
_LOG_ONLY: Sequence[DecisionObserver] = (DecisionLog(),)


class AuthorizationServicer(external_auth_pb2_grpc.AuthorizationServicer):
    """envoy.service.auth.v3.Authorization: CheckRequest -> AuthRequest -> Decision -> response."""

    def __init__(self, runtime: Callable[[], Runtime]) -> None:
        self._runtime = runtime

    def Check(
        self, request: external_auth_pb2.CheckRequest, context: grpc.ServicerContext
    ) -> external_auth_pb2.CheckResponse:
        started = time.perf_counter()
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
            code = exc.code if isinstance(exc, ExtAuthzError) else "internal_error"
            decision = Decision(
                Outcome.ERROR,
                code,
                new_decision_id(),
                message="internal error",
                request_id=request_id_of(request),
            )
            response = to_check_response(decision, auth_request, HeaderSettings())
        notify(observers, decision, auth_request, time.perf_counter() - started)
        return response
