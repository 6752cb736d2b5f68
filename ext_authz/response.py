"""Decision -> CheckResponse: one table maps outcomes to HTTP and gRPC status."""

from __future__ import annotations

import functools
import json
from json.encoder import encode_basestring_ascii as _json_string

from google.rpc import code_pb2, status_pb2

from ext_authz._proto.envoy.config.core.v3 import base_pb2
from ext_authz._proto.envoy.service.auth.v3 import external_auth_pb2
from ext_authz.models import AuthRequest, Decision, Outcome, Quota
from ext_authz.ratelimit.headers import quota_headers
from ext_authz.settings import HeaderSettings

__all__ = ["OUTCOME_STATUS", "to_check_response"]

# outcome -> (HTTP status, gRPC code, short error name for the JSON body)
OUTCOME_STATUS: dict[Outcome, tuple[int, int, str]] = {
    Outcome.ALLOW: (200, code_pb2.OK, ""),
    Outcome.INVALID_REQUEST: (400, code_pb2.INVALID_ARGUMENT, "bad_request"),
    Outcome.UNAUTHENTICATED: (401, code_pb2.UNAUTHENTICATED, "unauthorized"),
    Outcome.FORBIDDEN: (403, code_pb2.PERMISSION_DENIED, "forbidden"),
    Outcome.LIMITED: (429, code_pb2.RESOURCE_EXHAUSTED, "too_many_requests"),
    Outcome.ERROR: (503, code_pb2.UNAVAILABLE, "unavailable"),
}
# Our reason codes -> the RFC 6750 error code for WWW-Authenticate (none when no credential).
# RFC 6750: a request without credentials gets no error code; every rejected credential (bad,
# expired, revoked token; unknown API key; unusable certificate) is "invalid_token", and our own
# reason code says which in the body and the decision log.
_NO_CREDENTIAL = "missing_credential"
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def _header(name: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=name, value=value), append_action=_OVERWRITE
    )


# Built once: every denial carries them (the response copies them in).
_DENY_HEADERS = (
    _header("content-type", "application/json"),
    _header("cache-control", "no-store"),
)


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _www_authenticate(reason_code: str, message: str) -> str:
    params = ['realm="ext-authz"']
    if reason_code != _NO_CREDENTIAL:
        params += ['error="invalid_token"', f"error_description={_quoted(message)}"]
    return "Bearer " + ", ".join(params)


def _quota_headers(decision: Decision) -> tuple[base_pb2.HeaderValueOption, ...]:
    return () if decision.quota is None else _quota_header_options(decision.quota)


@functools.lru_cache(maxsize=1024)
def _quota_header_options(quota: Quota) -> tuple[base_pb2.HeaderValueOption, ...]:
    """A few hundred quotas recur (per rule: remaining 0..burst, seconds to refill): each one's
    fields are built once (shared: the response copies them in)."""
    return tuple(_header(name, value) for name, value in quota_headers(quota))


@functools.lru_cache(maxsize=64)
def _response_template(outcome: Outcome, reason_code: str) -> external_auth_pb2.CheckResponse:
    """The status and dynamic metadata every response of one outcome and reason shares (built
    once, copied per response: a copy costs a third of building them)."""
    _, grpc_code, _ = OUTCOME_STATUS[outcome]
    response = external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=grpc_code, message=reason_code)
    )
    fields = response.dynamic_metadata.fields
    fields["decision"].string_value = outcome.value
    fields["reason_code"].string_value = reason_code
    fields["decision_id"].string_value = ""  # each response sets its own
    return response


def _allow_template(
    decision: Decision,
    request: AuthRequest,
    headers: HeaderSettings,
    credential_headers: tuple[str, ...],
    credential_query: tuple[str, ...],
) -> external_auth_pb2.CheckResponse:
    """The allow for this caller and request shape, shared: never mutate it."""
    # Every client copy of a header we own goes, even where we set nothing: never both set and
    # remove one header in a response (Envoy then drops it).
    spoofed = tuple(name for name in request.headers if name.startswith(headers.owned_prefix))
    query = {name for name, _ in request.query} if request.query else ()
    return _allow_response(
        decision.reason_code,
        headers.subject,
        headers.roles,
        decision.identity.subject,
        decision.identity.roles,
        # Credentials the upstream has no use for (API keys, tokens in the query) never reach it.
        (*spoofed, *credential_headers),
        tuple(name for name in credential_query if name in query),
    )


@functools.lru_cache(maxsize=4096)
def _allow_response(
    reason_code: str,
    subject_header: str,
    roles_header: str,
    subject: str,
    roles: tuple[str, ...],
    removed: tuple[str, ...],
    query_removed: tuple[str, ...],
) -> external_auth_pb2.CheckResponse:
    """An allow with the identity headers and removals: the same for every request of one caller
    (that sends the same headers), so built once per caller and shared (never mutated)."""
    to_set = {subject_header: subject}
    if roles:
        to_set[roles_header] = ",".join(roles)
    owned = {subject_header, roles_header, *removed}
    response = external_auth_pb2.CheckResponse()
    response.CopyFrom(_response_template(Outcome.ALLOW, reason_code))
    response.ok_response.headers.extend(_header(name, value) for name, value in to_set.items())
    response.ok_response.headers_to_remove.extend(sorted(owned - to_set.keys()))
    response.ok_response.query_parameters_to_remove.extend(query_removed)
    return response


@functools.lru_cache(maxsize=1024)
def _denial(
    outcome: Outcome, reason_code: str, message: str, retry_after: int | None, quota: Quota | None
) -> tuple[external_auth_pb2.DeniedHttpResponse, str]:
    """The denial's status and headers, and its JSON body up to the request id (the one part
    that differs per request): the same for many requests, so built once and shared."""
    status, _, error = OUTCOME_STATUS[outcome]
    denied = external_auth_pb2.DeniedHttpResponse()
    denied.status.code = status  # type: ignore[assignment]
    denied.headers.extend(_DENY_HEADERS)
    if outcome is Outcome.UNAUTHENTICATED:
        denied.headers.append(_header("www-authenticate", _www_authenticate(reason_code, message)))
    if retry_after is not None:
        denied.headers.append(_header("retry-after", str(retry_after)))
    if quota is not None:
        denied.headers.extend(_quota_header_options(quota))
    body = json.dumps(
        {"error": error, "reason": reason_code, "message": message}, separators=(",", ":")
    )
    return denied, body[:-1] + ',"request_id":'


def to_check_response(
    decision: Decision,
    request: AuthRequest | None,
    headers: HeaderSettings,
    credential_headers: tuple[str, ...] = (),
    credential_query: tuple[str, ...] = (),
) -> external_auth_pb2.CheckResponse:
    """The CheckResponse Envoy acts on. ``request`` is None when it could not be parsed."""
    response = external_auth_pb2.CheckResponse()
    if decision.outcome is Outcome.ALLOW and request is not None:
        response.CopyFrom(
            _allow_template(decision, request, headers, credential_headers, credential_query)
        )
        # To the client, with the upstream's response: what is left of its rate limit.
        response.ok_response.response_headers_to_add.extend(_quota_headers(decision))
    else:
        response.CopyFrom(_response_template(decision.outcome, decision.reason_code))
        denied, body_start = _denial(
            decision.outcome,
            decision.reason_code,
            decision.message,
            decision.retry_after,
            decision.quota,
        )
        response.denied_response.CopyFrom(denied)
        response.denied_response.body = f"{body_start}{_json_string(decision.request_id)}}}"
    response.dynamic_metadata.fields["decision_id"].string_value = decision.decision_id
    return response
