"""to_auth_request on CheckRequests captured from the real Envoy (see scripts/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf import json_format

from ext_authz._proto.envoy.service.auth.v3 import external_auth_pb2
from ext_authz.credentials import extract_bearer_token
from ext_authz.errors import InvalidRequestError, InvalidTokenError
from ext_authz.request import to_auth_request

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def captured(name: str) -> external_auth_pb2.CheckRequest:
    document = json.loads((FIXTURES / f"check_request_{name}.json").read_text())
    return json_format.ParseDict(document, external_auth_pb2.CheckRequest())


def test_query_is_split_from_the_raw_path_envoy_sends() -> None:
    request = to_auth_request(captured("query_and_bearer"))
    assert request.method == "GET"
    assert request.path == "/api/books"
    assert request.query == (("include", "drafts"), ("page", "2"))
    assert request.scheme == "https"
    assert request.source_address == "127.0.0.1"
    assert extract_bearer_token(request) == "aaa.bbb.ccc"


def test_pseudo_headers_are_dropped_and_request_id_is_envoys_x_request_id() -> None:
    check = captured("simple_get")
    request = to_auth_request(check)
    assert not any(name.startswith(":") for name in request.headers)
    assert request.request_id == check.attributes.request.http.headers["x-request-id"]
    assert request.host == check.attributes.request.http.host


def test_duplicate_authorization_headers_arrive_joined_and_are_refused() -> None:
    request = to_auth_request(captured("duplicate_authorization"))
    assert request.headers["authorization"] == "Bearer one,Bearer two"
    with pytest.raises(InvalidTokenError):
        extract_bearer_token(request)


def test_spoofed_identity_headers_are_visible_lowercased_for_removal() -> None:
    request = to_auth_request(captured("spoofed_identity_headers"))
    assert request.headers["x-auth-subject"] == "admin"
    assert request.headers["x-auth-roles"] == "admin"


def test_dot_segments_arrive_already_normalized_by_envoy() -> None:
    assert to_auth_request(captured("dot_segments_normalized")).path == "/admin/stats"


@pytest.mark.parametrize("name", ["encoded_semicolon", "double_encoded_dot"])
def test_what_envoy_leaves_ambiguous_is_refused(name: str) -> None:
    with pytest.raises(InvalidRequestError):
        to_auth_request(captured(name))


def test_post_keeps_its_method() -> None:
    request = to_auth_request(captured("post_with_body"))
    assert (request.method, request.path) == ("POST", "/api/books")
