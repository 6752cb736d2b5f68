"""The real gRPC server on a free port: Check, health, reflection, fail-closed, decision log."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from fakes import FAILING_RUNTIMES, broken_runtime
from google.rpc import code_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from ext_authz._proto.envoy.service.auth.v3 import external_auth_pb2_grpc
from ext_authz.decision_log import JsonFormatter
from ext_authz.errors import ConfigError
from ext_authz.runtime import build_runtime
from ext_authz.server import AUTHORIZATION_SERVICE, RunningServer, build_server
from ext_authz.service import AuthorizationServicer
from ext_authz.settings import Settings, load_settings

POLICIES = Path(__file__).resolve().parents[2] / "policies"
TIMEOUT = 5


def write_settings(directory: Path, jwks_file: Path) -> Settings:
    config = directory / "ext-authz.yaml"
    config.write_text(
        f"""
listen: 127.0.0.1:0
threads: 4
grace_period: 0
providers:
  - name: test
    issuer: https://issuer.test
    audiences: [api]
    jwks_file: {jwks_file}
policy:
  model: {POLICIES / "model.conf"}
  policy: {POLICIES / "policy.csv"}
""",
        encoding="utf-8",
    )
    return load_settings(config)


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, jwks_file: Path) -> Settings:
    return write_settings(tmp_path_factory.mktemp("config"), jwks_file)


@pytest.fixture(scope="module")
def server(settings: Settings) -> Iterator[RunningServer]:
    running = build_server(settings, build_runtime(settings))
    yield running
    running.stop(0)


@pytest.fixture(scope="module")
def channel(server: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield channel


@pytest.fixture(scope="module")
def check(channel: grpc.Channel):
    stub = external_auth_pb2_grpc.AuthorizationStub(channel)
    return lambda request: stub.Check(request, timeout=TIMEOUT)


def headers_of(options) -> dict[str, str]:
    return {option.header.key: option.header.value for option in options}


# --- Check ----------------------------------------------------------------------------------------


def test_anonymous_request_to_a_public_route_is_allowed(check, make_check_request) -> None:
    response = check(make_check_request("GET", "/public/index.html"))

    assert response.status.code == code_pb2.OK
    assert response.WhichOneof("http_response") == "ok_response"
    assert headers_of(response.ok_response.headers) == {"x-auth-subject": "anonymous"}
    assert "x-auth-roles" in response.ok_response.headers_to_remove


def test_allowed_request_gets_identity_headers(check, make_check_request, make_token) -> None:
    token = make_token(sub="vera", roles=["viewer"])
    request = make_check_request(
        "GET",
        "/api/books?page=2",
        {"authorization": f"Bearer {token}", "x-auth-subject": "admin", "x-auth-tenant": "t"},
    )

    response = check(request)

    assert response.status.code == code_pb2.OK
    assert headers_of(response.ok_response.headers) == {
        "x-auth-subject": "vera",
        "x-auth-roles": "viewer",
    }
    assert list(response.ok_response.headers_to_remove) == ["x-auth-tenant"]
    assert dict(response.dynamic_metadata)["decision"] == "allow"
    assert dict(response.dynamic_metadata)["decision_id"]


def test_known_user_without_permission_gets_403(check, make_check_request, make_token) -> None:
    token = make_token(sub="vera", roles=["viewer"])
    request = make_check_request(
        "GET",
        "/api/books?include=drafts",
        {"authorization": f"Bearer {token}", "x-request-id": "rid-403"},
    )

    response = check(request)

    assert response.status.code == code_pb2.PERMISSION_DENIED
    assert response.denied_response.status.code == 403
    assert "www-authenticate" not in headers_of(response.denied_response.headers)
    body = json.loads(response.denied_response.body)
    assert body["reason"] == "access_denied"
    assert body["request_id"] == "rid-403"


def test_missing_token_on_a_protected_route_gets_401(check, make_check_request) -> None:
    response = check(make_check_request("GET", "/api/books"))

    assert response.status.code == code_pb2.UNAUTHENTICATED
    assert response.denied_response.status.code == 401
    challenge = headers_of(response.denied_response.headers)["www-authenticate"]
    assert challenge == 'Bearer realm="ext-authz"'
    assert json.loads(response.denied_response.body)["reason"] == "missing_credential"


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": 1_000_000_300, "iat": 1_000_000_000}, "expired_token"),
        ({"aud": "someone-else"}, "invalid_token"),
        ({"iss": "https://evil.test"}, "invalid_token"),
    ],
)
def test_bad_token_gets_401_even_on_a_public_route(
    check, make_check_request, make_token, claims, reason
) -> None:
    request = make_check_request(
        "GET", "/public/x", {"authorization": f"Bearer {make_token(**claims)}"}
    )

    response = check(request)

    assert response.denied_response.status.code == 401
    assert json.loads(response.denied_response.body)["reason"] == reason
    challenge = headers_of(response.denied_response.headers)["www-authenticate"]
    assert 'error="invalid_token"' in challenge


def test_two_authorization_headers_get_401(check, make_check_request, make_token) -> None:
    token = make_token(roles=["admin"])
    request = make_check_request("GET", "/public/x", {"authorization": f"Bearer a,Bearer {token}"})

    response = check(request)

    assert response.denied_response.status.code == 401


@pytest.mark.parametrize(
    "path", ["/api/books;jsessionid=x", "/public/..%2fapi/books", "/public/%2e%2e/admin", "/a%00"]
)
def test_ambiguous_path_gets_400(check, make_check_request, path: str) -> None:
    response = check(make_check_request("GET", path))

    assert response.status.code == code_pb2.INVALID_ARGUMENT
    assert response.denied_response.status.code == 400
    assert json.loads(response.denied_response.body)["reason"] == "invalid_request"


# --- health and reflection ---------------------------------------------------------------------


@pytest.mark.parametrize("service", ["", "envoy.service.auth.v3.Authorization"])
def test_health_reports_serving(channel, service: str) -> None:
    stub = health_pb2_grpc.HealthStub(channel)

    response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)

    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_authorization_service(channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")

    responses = list(stub.ServerReflectionInfo(iter([request]), timeout=TIMEOUT))

    names = {service.name for service in responses[0].list_services_response.service}
    assert AUTHORIZATION_SERVICE == "envoy.service.auth.v3.Authorization"
    assert {"envoy.service.auth.v3.Authorization", "grpc.health.v1.Health"} <= names


def test_stop_reports_not_serving(settings: Settings) -> None:
    running = build_server(settings, build_runtime(settings))

    running.stop(0)

    for service in ("", AUTHORIZATION_SERVICE):
        check = running.health.Check(health_pb2.HealthCheckRequest(service=service), None)
        response = asyncio.run(check)  # the asyncio health servicer
        assert response.status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_occupied_port_is_a_config_error(server: RunningServer, settings: Settings) -> None:
    taken = settings.model_copy(update={"listen": f"127.0.0.1:{server.port}"})

    with pytest.raises(ConfigError, match="cannot listen"):
        build_server(taken, build_runtime(taken))


# --- fail closed --------------------------------------------------------------------------------


@pytest.mark.parametrize("runtime", FAILING_RUNTIMES)
def test_internal_error_fails_closed_with_503(make_check_request, runtime, caplog) -> None:
    servicer = AuthorizationServicer(runtime)

    with caplog.at_level(logging.INFO):
        response = servicer.Check(make_check_request("GET", "/public/x"), None)

    assert response.status.code == code_pb2.UNAVAILABLE
    assert response.WhichOneof("http_response") == "denied_response"
    assert response.denied_response.status.code == 503
    assert not response.HasField("ok_response")
    body = json.loads(response.denied_response.body)
    assert body["reason"] == "internal_error"
    assert "bug" not in response.denied_response.body + "".join(
        option.header.value for option in response.denied_response.headers
    )
    assert any(r.name == "ext_authz.service" and r.exc_info for r in caplog.records)
    [decision] = [r for r in caplog.records if r.name == "ext_authz.decision"]
    assert decision.fields["decision"] == "error"


def test_internal_error_fails_closed_through_the_server(make_check_request) -> None:
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(
        AuthorizationServicer(broken_runtime), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            response = stub.Check(make_check_request("GET", "/public/x"), timeout=TIMEOUT)
    finally:
        server.stop(0)

    assert response.status.code == code_pb2.UNAVAILABLE
    assert response.denied_response.status.code == 503


# --- secrets never reach the logs ---------------------------------------------------------------


def test_decision_log_holds_no_token_and_no_query_value(
    check, make_check_request, make_token, caplog
) -> None:
    token = make_token(sub="vera", roles=["viewer"])
    secret = "SECRET-QUERY-VALUE"
    bad_token = "SECRETBADTOKEN.aaa.bbb"
    requests = [
        make_check_request(
            "GET", f"/api/books?access_token={secret}", {"authorization": f"Bearer {token}"}
        ),
        make_check_request(
            "GET", f"/api/books?access_token={secret}", {"authorization": f"Bearer {bad_token}"}
        ),
        make_check_request("GET", f"/public/x?api_key={secret}", {"cookie": f"session={secret}"}),
        make_check_request(
            "GET", f"/x%2f?access_token={secret}", {"authorization": f"Bearer {token}"}
        ),
    ]

    with caplog.at_level(logging.DEBUG):
        for request in requests:
            check(request)

    decisions = [r for r in caplog.records if r.name == "ext_authz.decision"]
    assert len(decisions) == len(requests)
    assert decisions[0].fields["subject"] == "vera"
    assert decisions[0].fields["query_names"] == ["access_token"]
    formatter = JsonFormatter()
    for record in caplog.records:
        text = formatter.format(record) + repr(getattr(record, "fields", {})) + record.getMessage()
        for secret_text in (token, token.split(".")[2], secret, bad_token):
            assert secret_text not in text, f"{record.name} logged a secret"
