"""response.py: Decision -> CheckResponse (status table, identity headers, deny bodies)."""

from __future__ import annotations

import json
from types import MappingProxyType
from typing import Any

import pytest
from google.rpc import code_pb2

from ext_authz._proto.envoy.config.core.v3 import base_pb2
from ext_authz.models import ANONYMOUS, AuthRequest, Decision, Identity, Outcome, Quota
from ext_authz.response import OUTCOME_STATUS, to_check_response
from ext_authz.settings import HeaderSettings

OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
BOB = Identity("bob", ("viewer", "editor"))


def request(headers: dict[str, str] | None = None, request_id: str = "rid-1") -> AuthRequest:
    return AuthRequest(
        "GET", "/api/books", headers=MappingProxyType(headers or {}), request_id=request_id
    )


def allow(identity: Identity = BOB) -> Decision:
    return Decision(Outcome.ALLOW, "allowed", "dec-1", identity, "policy.csv:10")


def set_headers(response) -> dict[str, str]:
    return {option.header.key: option.header.value for option in response.ok_response.headers}


def deny_headers(response) -> dict[str, str]:
    return {option.header.key: option.header.value for option in response.denied_response.headers}


# --- allow ----------------------------------------------------------------------------------------


def test_allow_sets_identity_headers_overwriting_client_copies() -> None:
    response = to_check_response(allow(), request(), HeaderSettings())

    assert response.WhichOneof("http_response") == "ok_response"
    assert response.status.code == code_pb2.OK
    assert set_headers(response) == {"x-auth-subject": "bob", "x-auth-roles": "viewer,editor"}
    assert all(option.append_action == OVERWRITE for option in response.ok_response.headers)


def test_allow_removes_every_client_owned_header_it_does_not_set() -> None:
    client = {
        "x-auth-subject": "admin",
        "x-auth-roles": "admin",
        "x-auth-tenant": "other",
        "x-auth-": "x",
        "x-authorization": "keep",
        "authorization": "Bearer t",
        "x-other": "keep",
    }

    response = to_check_response(allow(), request(client), HeaderSettings())

    removed = set(response.ok_response.headers_to_remove)
    assert removed == {"x-auth-tenant", "x-auth-"}
    assert set_headers(response) == {"x-auth-subject": "bob", "x-auth-roles": "viewer,editor"}


@pytest.mark.parametrize(
    "identity", [BOB, Identity("carol"), ANONYMOUS], ids=["roles", "no-roles", "anonymous"]
)
def test_allow_never_sets_and_removes_the_same_header(identity: Identity) -> None:
    client = {"x-auth-subject": "a", "x-auth-roles": "admin", "x-auth-extra": "1"}

    response = to_check_response(allow(identity), request(client), HeaderSettings())

    set_names = {name.lower() for name in set_headers(response)}
    removed = {name.lower() for name in response.ok_response.headers_to_remove}
    assert not set_names & removed
    assert set_names | removed >= {"x-auth-subject", "x-auth-roles", "x-auth-extra"}


def test_anonymous_allow_removes_the_client_roles_header() -> None:
    client = {"x-auth-roles": "admin", "x-auth-subject": "admin"}

    response = to_check_response(allow(ANONYMOUS), request(client), HeaderSettings())

    assert set_headers(response) == {"x-auth-subject": "anonymous"}
    assert "x-auth-roles" in response.ok_response.headers_to_remove


def test_allow_without_roles_removes_roles_header_even_when_client_sent_none() -> None:
    response = to_check_response(allow(Identity("carol")), request(), HeaderSettings())

    assert list(response.ok_response.headers_to_remove) == ["x-auth-roles"]


def test_configured_header_names_are_used() -> None:
    names = HeaderSettings(subject="x-user", roles="x-groups", owned_prefix="x-user-")
    client = {"x-user": "evil", "x-groups": "admin", "x-user-id": "1", "x-auth-subject": "keep"}

    response = to_check_response(allow(Identity("carol")), request(client), names)

    assert set_headers(response) == {"x-user": "carol"}
    assert set(response.ok_response.headers_to_remove) == {"x-groups", "x-user-id"}


def test_owned_headers_are_stripped_whatever_the_configured_case() -> None:
    names = HeaderSettings(subject="X-Auth-Subject", roles="X-Auth-Roles", owned_prefix="X-Auth-")
    client = {"x-auth-tenant": "other", "x-auth-roles": "admin"}

    response = to_check_response(allow(Identity("carol")), request(client), names)

    set_names = {name.lower() for name in set_headers(response)}
    removed = {name.lower() for name in response.ok_response.headers_to_remove}
    assert "x-auth-tenant" in removed
    assert not set_names & removed


def test_allow_carries_decision_metadata() -> None:
    response = to_check_response(allow(), request(), HeaderSettings())

    metadata = dict(response.dynamic_metadata)
    assert metadata["decision_id"] == "dec-1"
    assert metadata["decision"] == "allow"


# --- deny ---------------------------------------------------------------------------------------


def deny(outcome: Outcome, reason: str, message: str = "why", request_id: str = "") -> Decision:
    return Decision(outcome, reason, "dec-2", message=message, request_id=request_id)


@pytest.mark.parametrize(
    ("outcome", "reason", "http", "grpc"),
    [
        (Outcome.INVALID_REQUEST, "invalid_request", 400, code_pb2.INVALID_ARGUMENT),
        (Outcome.UNAUTHENTICATED, "missing_credential", 401, code_pb2.UNAUTHENTICATED),
        (Outcome.UNAUTHENTICATED, "invalid_token", 401, code_pb2.UNAUTHENTICATED),
        (Outcome.UNAUTHENTICATED, "expired_token", 401, code_pb2.UNAUTHENTICATED),
        (Outcome.FORBIDDEN, "access_denied", 403, code_pb2.PERMISSION_DENIED),
        (Outcome.ERROR, "internal_error", 503, code_pb2.UNAVAILABLE),
    ],
)
def test_deny_sets_http_and_grpc_status(outcome, reason, http, grpc) -> None:
    response = to_check_response(deny(outcome, reason), request(), HeaderSettings())

    assert response.WhichOneof("http_response") == "denied_response"
    assert response.denied_response.status.code == http
    assert response.status.code == grpc
    assert response.status.code != code_pb2.OK
    assert dict(response.dynamic_metadata)["decision_id"] == "dec-2"


def test_every_refusal_outcome_maps_to_a_non_ok_grpc_code() -> None:
    for outcome, (http, grpc, _) in OUTCOME_STATUS.items():
        assert (grpc == code_pb2.OK) is (outcome is Outcome.ALLOW)
        assert (http == 200) is (outcome is Outcome.ALLOW)


def test_deny_body_is_json_with_error_reason_message_and_request_id() -> None:
    response = to_check_response(
        deny(Outcome.FORBIDDEN, "access_denied", "no policy rule allows this request", "rid-9"),
        request(),
        HeaderSettings(),
    )

    assert json.loads(response.denied_response.body) == {
        "error": "forbidden",
        "reason": "access_denied",
        "message": "no policy rule allows this request",
        "request_id": "rid-9",
    }
    headers = deny_headers(response)
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store"


def test_deny_without_a_parsed_request_has_an_empty_request_id() -> None:
    response = to_check_response(
        deny(Outcome.INVALID_REQUEST, "invalid_request"), None, HeaderSettings()
    )

    assert response.denied_response.status.code == 400
    assert json.loads(response.denied_response.body)["request_id"] == ""


def test_401_for_a_bad_token_carries_an_rfc6750_challenge() -> None:
    decision = deny(Outcome.UNAUTHENTICATED, "invalid_token", 'token "kid" is unknown')

    response = to_check_response(decision, request(), HeaderSettings())

    assert deny_headers(response)["www-authenticate"] == (
        'Bearer realm="ext-authz", error="invalid_token", '
        'error_description="token \\"kid\\" is unknown"'
    )


def test_401_for_an_expired_token_uses_the_rfc6750_invalid_token_code() -> None:
    response = to_check_response(
        deny(Outcome.UNAUTHENTICATED, "expired_token", "token has expired"),
        request(),
        HeaderSettings(),
    )

    challenge = deny_headers(response)["www-authenticate"]
    assert challenge.startswith('Bearer realm="ext-authz", error="invalid_token"')
    assert 'error_description="token has expired"' in challenge


def test_401_for_a_missing_credential_has_no_error_attribute() -> None:
    response = to_check_response(
        deny(Outcome.UNAUTHENTICATED, "missing_credential"), request(), HeaderSettings()
    )

    assert deny_headers(response)["www-authenticate"] == 'Bearer realm="ext-authz"'


@pytest.mark.parametrize("outcome", [Outcome.FORBIDDEN, Outcome.INVALID_REQUEST, Outcome.ERROR])
def test_only_401_carries_www_authenticate(outcome: Outcome) -> None:
    response = to_check_response(deny(outcome, "x"), request(), HeaderSettings())

    assert "www-authenticate" not in deny_headers(response)


def test_deny_never_forwards_identity_headers_upstream() -> None:
    response = to_check_response(
        Decision(Outcome.FORBIDDEN, "access_denied", "d", BOB), request(), HeaderSettings()
    )

    assert not response.HasField("ok_response")
    assert "x-auth-subject" not in deny_headers(response)


def test_allows_of_one_caller_carry_only_their_own_rate_limit_headers() -> None:
    # The identity part of an allow is built once per caller and shared: a request's own
    # RateLimit headers must never leak into the next response.
    request = AuthRequest("GET", "/api/books")
    caller = Identity("alice", ("viewer",))

    def remaining(left: int) -> list[tuple[str, str]]:
        quota = Quota("users", 40, 2, left, 1)
        decision = Decision(Outcome.ALLOW, "allowed", "d", caller, quota=quota)
        ok = to_check_response(decision, request, HeaderSettings()).ok_response
        return [(h.header.key, h.header.value) for h in ok.response_headers_to_add]

    first, second = remaining(39), remaining(38)
    assert [value for name, value in first if name == "ratelimit"] == ['"users";r=39;t=1']
    assert [value for name, value in second if name == "ratelimit"] == ['"users";r=38;t=1']
    decision = Decision(Outcome.ALLOW, "allowed", "d", caller)
    assert not to_check_response(
        decision, request, HeaderSettings()
    ).ok_response.response_headers_to_add


def test_denials_alike_share_nothing_that_differs_per_request() -> None:
    # A denial's status, headers and body start are built once per outcome, reason and message:
    # the request id, the decision id and the rate-limit state stay each response's own.
    def refuse(request_id: str, decision_id: str, left: int) -> tuple[dict[str, Any], str, str]:
        quota = Quota("users", 40, 2, left, 1)
        decision = Decision(
            Outcome.FORBIDDEN,
            "access_denied",
            decision_id,
            BOB,
            message="no policy rule allows this request",
            request_id=request_id,
            quota=quota,
        )
        response = to_check_response(decision, request(), HeaderSettings())
        metadata = response.dynamic_metadata.fields["decision_id"].string_value
        return (
            json.loads(response.denied_response.body),
            metadata,
            deny_headers(response)["ratelimit"],
        )

    first = refuse("rid-1", "dec-1", 5)
    second = refuse('rid-"2"\u00e9', "dec-2", 4)

    assert first == (
        {
            "error": "forbidden",
            "reason": "access_denied",
            "message": "no policy rule allows this request",
            "request_id": "rid-1",
        },
        "dec-1",
        '"users";r=5;t=1',
    )
    assert second[0]["request_id"] == 'rid-"2"\u00e9'  # escaped, still valid JSON
    assert second[1:] == ("dec-2", '"users";r=4;t=1')


def test_each_allow_carries_its_own_decision_id() -> None:
    first = to_check_response(allow(), request(), HeaderSettings())
    second = to_check_response(
        Decision(Outcome.ALLOW, "allowed", "dec-2", BOB, "policy.csv:10"),
        request(),
        HeaderSettings(),
    )

    ids = [r.dynamic_metadata.fields["decision_id"].string_value for r in (first, second)]
    assert ids == ["dec-1", "dec-2"]
    assert first.ok_response == second.ok_response
