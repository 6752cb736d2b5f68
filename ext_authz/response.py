"""Decision -> CheckResponse: one table maps outcomes to HTTP and gRPC status."""

from __future__ import annotations

import functools
import json

from google.protobuf import struct_pb2
from google.rpc import code_pb2, status_pb2

from ext_authz._proto.envoy.config.core.v3 import base_pb2
from ext_authz._proto.envoy.service.auth.v3 import external_auth_pb2
from ext_authz._proto.envoy.type.v3 import http_status_pb2
from ext_authz.models import AuthRequest, Decision, Outcome
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


def _www_authenticate(decision: Decision) -> str:
    params = ['realm="ext-authz"']
    if decision.reason_code != _NO_CREDENTIAL:
        params += ['error="invalid_token"', f"error_description={_quoted(decision.message)}"]
    return "Bearer " + ", ".join(params)


def _quota_headers(decision: Decision) -> list[base_pb2.HeaderValueOption]:
    if decision.quota is None:
        return []
    return [_header(name, value) for name, value in quota_headers(decision.quota)]


def _metadata(decision: Decision) -> struct_pb2.Struct:
    metadata = struct_pb2.Struct()
    fields = metadata.fields  # set in place: Struct.update() costs twice as much per Check
    fields["decision_id"].string_value = decision.decision_id
    fields["decision"].string_value = decision.outcome.value
    fields["reason_code"].string_value = decision.reason_code
    return metadata


def _allow_base(
    decision: Decision,
    request: AuthRequest,
    headers: HeaderSettings,
    credential_headers: tuple[str, ...],
    credential_query: tuple[str, ...],
) -> external_auth_pb2.OkHttpResponse:
    """The allow's headers and removals, shared by every request alike: never mutate it."""
    # Every client copy of a header we own goes, even where we set nothing: never both set and
    # remove one header in a response (Envoy then drops it).
    spoofed = tuple(name for name in request.headers if name.startswith(headers.owned_prefix))
    query = {name for name, _ in request.query} if request.query else ()
    return _ok_response(
        headers.subject,
        headers.roles,
        decision.identity.subject,
        decision.identity.roles,
        # Credentials the upstream has no use for (API keys, tokens in the query) never reach it.
        (*spoofed, *credential_headers),
        tuple(name for name in credential_query if name in query),
    )


@functools.lru_cache(maxsize=4096)
def _ok_response(
    subject_header: str,
    roles_header: str,
    subject: str,
    roles: tuple[str, ...],
    removed: tuple[str, ...],
    query_removed: tuple[str, ...],
) -> external_auth_pb2.OkHttpResponse:
    """The identity headers and removals of an allow: the same for every request of one caller
    (that sends the same headers), so built once per caller and shared (never mutated)."""
    to_set = {subject_header: subject}
    if roles:
        to_set[roles_header] = ",".join(roles)
    owned = {subject_header, roles_header, *removed}
    return external_auth_pb2.OkHttpResponse(
        headers=[_header(name, value) for name, value in to_set.items()],
        headers_to_remove=sorted(owned - to_set.keys()),
        query_parameters_to_remove=query_removed,
    )


def _deny(decision: Decision) -> external_auth_pb2.DeniedHttpResponse:
    status, _, error = OUTCOME_STATUS[decision.outcome]
    body = {
        "error": error,
        "reason": decision.reason_code,
        "message": decision.message,
        "request_id": decision.request_id,
    }
    response_headers = list(_DENY_HEADERS)
    if decision.outcome is Outcome.UNAUTHENTICATED:
        response_headers.append(_header("www-authenticate", _www_authenticate(decision)))
    if decision.retry_after is not None:
        response_headers.append(_header("retry-after", str(decision.retry_after)))
    response_headers += _quota_headers(decision)
    return external_auth_pb2.DeniedHttpResponse(
        status=http_status_pb2.HttpStatus(code=status),  # type: ignore[arg-type]
        headers=response_headers,
        body=json.dumps(body, separators=(",", ":")),
    )


def to_check_response(
    decision: Decision,
    request: AuthRequest | None,
    headers: HeaderSettings,
    credential_headers: tuple[str, ...] = (),
    credential_query: tuple[str, ...] = (),
) -> external_auth_pb2.CheckResponse:
    """The CheckResponse Envoy acts on. ``request`` is None when it could not be parsed."""
    _, grpc_code, _ = OUTCOME_STATUS[decision.outcome]
    status = status_pb2.Status(code=grpc_code, message=decision.reason_code)
    if decision.outcome is Outcome.ALLOW and request is not None:
        base = _allow_base(decision, request, headers, credential_headers, credential_query)
        response = external_auth_pb2.CheckResponse(
            status=status, ok_response=base, dynamic_metadata=_metadata(decision)
        )  # the constructor copies ``base``: the response's own copy is safe to add to
        # To the client, with the upstream's response: what is left of its rate limit.
        response.ok_response.response_headers_to_add.extend(_quota_headers(decision))
        return response
    return external_auth_pb2.CheckResponse(
        status=status, denied_response=_deny(decision), dynamic_metadata=_metadata(decision)
    )
