"""runtime.py: build_runtime wires settings into the pipeline, and credentials never go upstream."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import yaml
from fakes import IntrospectionEndpoint

from ext_authz.identity.apikey import hash_api_key
from ext_authz.models import AuthRequest, Outcome
from ext_authz.response import to_check_response
from ext_authz.runtime import Runtime, build_runtime
from ext_authz.settings import load_settings

POLICIES = Path(__file__).resolve().parents[2] / "policies"
ISSUER = "https://issuer.test"  # the issuer make_token signs for
DOWN_ISSUER = "https://down.issuer.test"
API_KEY = "eak_" + "k" * 43
CLIENT_ID = "ext-authz"
CLIENT_SECRET = "introspection-client-secret"


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def make_runtime(tmp_path: Path, jwks_file: Path) -> Callable[..., Runtime]:
    """``make_runtime(credentials={...}, providers=[...], **top_level)``: settings written to a
    YAML file, loaded as `serve` loads them, and built into a Runtime."""

    def make(**overrides: Any) -> Runtime:
        document: dict[str, Any] = {
            "providers": [
                {
                    "name": "test",
                    "issuer": ISSUER,
                    "audiences": ["api"],
                    "jwks_file": str(jwks_file),
                }
            ],
            "policy": {
                "model": str(POLICIES / "model.conf"),
                "policy": str(POLICIES / "policy.csv"),
            },
            **overrides,
        }
        path = tmp_path / "settings.yaml"
        path.write_text(yaml.safe_dump(document), encoding="utf-8")
        return build_runtime(load_settings(path))

    return make


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.yaml"
    entry = {
        "id": "ci-bot-1",
        "hash": hash_api_key(API_KEY),
        "owner": "ci-bot",
        "roles": ["viewer"],
    }
    path.write_text(yaml.safe_dump({"keys": [entry]}), encoding="utf-8")
    return path


def request(
    path: str = "/api/books",
    headers: dict[str, str] | None = None,
    query: tuple[tuple[str, str], ...] = (),
) -> AuthRequest:
    return AuthRequest("GET", path, query=query, headers=MappingProxyType(headers or {}))


def check(runtime: Runtime, req: AuthRequest) -> Any:
    decision = runtime.pipeline.evaluate(req)
    response = to_check_response(
        decision, req, runtime.headers, runtime.credential_headers, runtime.credential_query
    )
    return decision, response


# --- API keys ---------------------------------------------------------------------------------


def test_allowed_api_key_request_has_the_key_header_removed_upstream(
    make_runtime, keys_file
) -> None:
    runtime = make_runtime(credentials={"api_keys": {"file": str(keys_file)}})
    decision, response = check(runtime, request(headers={"x-api-key": API_KEY}))
    assert decision.outcome is Outcome.ALLOW
    assert decision.identity.subject == "ci-bot"
    assert "x-api-key" in response.ok_response.headers_to_remove


def test_configured_api_key_header_is_the_one_removed_upstream(make_runtime, keys_file) -> None:
    runtime = make_runtime(
        credentials={"api_keys": {"file": str(keys_file), "header": "X-Service-Key"}}
    )
    assert runtime.credential_headers == ("x-service-key",)
    decision, response = check(runtime, request(headers={"x-service-key": API_KEY}))
    assert decision.outcome is Outcome.ALLOW
    assert "x-service-key" in response.ok_response.headers_to_remove


def test_api_key_header_is_removed_upstream_on_a_bearer_request_too(
    make_runtime, keys_file, make_token
) -> None:
    runtime = make_runtime(credentials={"api_keys": {"file": str(keys_file)}})
    token = make_token(roles=["viewer"])
    decision, response = check(runtime, request(headers={"authorization": f"Bearer {token}"}))
    assert decision.outcome is Outcome.ALLOW
    assert "x-api-key" in response.ok_response.headers_to_remove


def test_unknown_api_key_is_refused_with_401(make_runtime, keys_file) -> None:
    runtime = make_runtime(credentials={"api_keys": {"file": str(keys_file)}})
    decision, response = check(runtime, request(headers={"x-api-key": "eak_" + "u" * 43}))
    assert (decision.outcome, decision.reason_code) == (Outcome.UNAUTHENTICATED, "invalid_api_key")
    assert response.denied_response.status.code == 401


def test_api_key_header_is_not_a_credential_without_api_keys_configured(make_runtime) -> None:
    runtime = make_runtime()
    assert runtime.credential_headers == ()
    decision, _ = check(runtime, request(headers={"x-api-key": API_KEY}))
    assert (decision.outcome, decision.reason_code) == (
        Outcome.UNAUTHENTICATED,
        "missing_credential",
    )


# --- query-parameter tokens -------------------------------------------------------------------


def test_allowed_query_token_request_has_the_parameter_removed_upstream(
    make_runtime, make_token
) -> None:
    runtime = make_runtime(credentials={"bearer": {"query_parameter": "access_token"}})
    token = make_token(roles=["viewer"])
    decision, response = check(runtime, request(query=(("page", "2"), ("access_token", token))))
    assert decision.outcome is Outcome.ALLOW
    assert decision.identity.subject == "alice"
    assert list(response.ok_response.query_parameters_to_remove) == ["access_token"]


def test_header_token_request_removes_no_query_parameter(make_runtime, make_token) -> None:
    runtime = make_runtime(credentials={"bearer": {"query_parameter": "access_token"}})
    token = make_token(roles=["viewer"])
    decision, response = check(
        runtime, request(headers={"authorization": f"Bearer {token}"}, query=(("page", "2"),))
    )
    assert decision.outcome is Outcome.ALLOW
    assert list(response.ok_response.query_parameters_to_remove) == []


def test_query_token_is_ignored_when_the_query_source_is_not_configured(
    make_runtime, make_token
) -> None:
    runtime = make_runtime()
    assert runtime.credential_query == ()
    token = make_token(roles=["viewer"])
    decision, _ = check(runtime, request(query=(("access_token", token),)))
    assert (decision.outcome, decision.reason_code) == (
        Outcome.UNAUTHENTICATED,
        "missing_credential",
    )


def test_query_token_beside_a_header_token_is_refused(make_runtime, make_token) -> None:
    runtime = make_runtime(credentials={"bearer": {"query_parameter": "access_token"}})
    token = make_token(roles=["viewer"])
    decision, response = check(
        runtime,
        request(headers={"authorization": f"Bearer {token}"}, query=(("access_token", token),)),
    )
    assert (decision.outcome, decision.reason_code) == (Outcome.UNAUTHENTICATED, "invalid_token")
    assert token not in response.denied_response.body


# --- readiness and unavailable keys -----------------------------------------------------------


def test_runtime_with_a_file_provider_is_ready(make_runtime) -> None:
    assert make_runtime().ready() is True


def test_runtime_without_providers_is_ready(make_runtime) -> None:
    runtime = make_runtime(providers=[])
    assert runtime.ready() is True
    assert runtime.key_stores == ()


@pytest.fixture
def down_runtime(make_runtime, jwks_file: Path) -> Runtime:
    """Two providers: the file one, and one whose JWKS URL is a closed local port."""
    runtime = make_runtime(
        providers=[
            {"name": "test", "issuer": ISSUER, "audiences": ["api"], "jwks_file": str(jwks_file)},
            {
                "name": "down",
                "issuer": DOWN_ISSUER,
                "audiences": ["api"],
                "jwks_url": f"http://127.0.0.1:{closed_port()}/jwks.json",
                "keys": {"timeout": 1.0},
            },
        ]
    )
    down = next(store for store in runtime.key_stores if store.name == "down")
    assert down.refresh() is False  # a real fetch attempt, refused by the closed port
    return runtime


def test_provider_with_an_unreachable_jwks_url_is_not_ready(down_runtime) -> None:
    assert down_runtime.ready() is False


def test_token_from_a_provider_without_keys_gets_503(down_runtime, make_token) -> None:
    token = make_token(iss=DOWN_ISSUER, roles=["viewer"])
    req = request(headers={"authorization": f"Bearer {token}"})
    decision, response = check(down_runtime, req)
    assert (decision.outcome, decision.reason_code) == (Outcome.ERROR, "keys_unavailable")
    assert response.denied_response.status.code == 503
    assert response.status.code == 14  # gRPC UNAVAILABLE
    assert json.loads(response.denied_response.body)["reason"] == "keys_unavailable"
    headers = {h.header.key for h in response.denied_response.headers}
    assert "www-authenticate" not in headers  # not a credential problem: no 401 challenge


def test_tokens_of_a_ready_provider_still_work_beside_an_unavailable_one(
    down_runtime, make_token
) -> None:
    token = make_token(roles=["viewer"])
    decision, _ = check(down_runtime, request(headers={"authorization": f"Bearer {token}"}))
    assert decision.outcome is Outcome.ALLOW


# --- denylist ---------------------------------------------------------------------------------


def test_configured_denylist_refuses_revoked_tokens(make_runtime, make_token, tmp_path) -> None:
    denylist = tmp_path / "denylist.yaml"
    denylist.write_text(yaml.safe_dump({"jti": ["t-1"], "subjects": ["mallory"]}), "utf-8")
    runtime = make_runtime(denylist_file=str(denylist))
    for claims in ({"jti": "t-1"}, {"sub": "mallory"}):
        token = make_token(roles=["viewer"], **claims)
        decision, _ = check(runtime, request(headers={"authorization": f"Bearer {token}"}))
        assert (decision.outcome, decision.reason_code) == (
            Outcome.UNAUTHENTICATED,
            "revoked_token",
        )
    token = make_token(roles=["viewer"], jti="t-2")
    decision, _ = check(runtime, request(headers={"authorization": f"Bearer {token}"}))
    assert decision.outcome is Outcome.ALLOW


# --- opaque tokens through introspection --------------------------------------------------------


@pytest.fixture
def idp() -> Iterator[IntrospectionEndpoint]:
    with IntrospectionEndpoint(CLIENT_ID, CLIENT_SECRET) as endpoint:
        yield endpoint


@pytest.fixture
def introspection(idp: IntrospectionEndpoint, tmp_path: Path) -> dict[str, str]:
    """The ``credentials.introspection`` settings for the local endpoint."""
    secret = tmp_path / "introspection-secret"
    secret.write_text(CLIENT_SECRET + "\n", encoding="utf-8")
    return {
        "url": idp.url + IntrospectionEndpoint.PATH,
        "client_id": CLIENT_ID,
        "client_secret_file": str(secret),
    }


def bearer(token: str, path: str = "/api/books") -> AuthRequest:
    return request(path, headers={"authorization": f"Bearer {token}"})


def test_opaque_token_is_introspected_and_decided_by_the_policies(
    make_runtime, idp: IntrospectionEndpoint, introspection: dict[str, str]
) -> None:
    runtime = make_runtime(credentials={"introspection": introspection})
    idp.answers["opaque-vera"] = {"active": True, "sub": "vera", "roles": ["viewer"]}
    idp.answers["opaque-nora"] = {"active": True, "sub": "nora"}  # no roles

    decision, response = check(runtime, bearer("opaque-vera"))
    assert decision.outcome is Outcome.ALLOW
    assert (decision.identity.subject, decision.identity.method) == ("vera", "introspection")
    assert decision.identity.roles == ("viewer",)
    # The demo policy: a signed-in user reads their own profile, and only theirs; books need a role.
    decision, _ = check(runtime, bearer("opaque-nora", "/api/users/nora/profile"))
    assert decision.outcome is Outcome.ALLOW
    for path in ("/api/books", "/api/users/vera/profile"):
        decision, response = check(runtime, bearer("opaque-nora", path))
        assert (decision.outcome, decision.reason_code) == (Outcome.FORBIDDEN, "access_denied")
        assert response.denied_response.status.code == 403
    decision, response = check(runtime, bearer("opaque-unknown"))  # the endpoint: inactive
    assert (decision.outcome, decision.reason_code) == (Outcome.UNAUTHENTICATED, "invalid_token")
    assert response.denied_response.status.code == 401

    asked = [form["token"] for form in idp.forms]
    assert asked == [["opaque-vera"], ["opaque-nora"], ["opaque-unknown"]]  # positives cached


def test_introspection_outage_is_a_503_not_a_401(
    make_runtime, idp: IntrospectionEndpoint, introspection: dict[str, str]
) -> None:
    runtime = make_runtime(credentials={"introspection": introspection})
    idp.status = 500
    decision, response = check(runtime, bearer("opaque-vera"))
    assert (decision.outcome, decision.reason_code) == (Outcome.ERROR, "introspection_unavailable")
    assert response.denied_response.status.code == 503
    assert "www-authenticate" not in {h.header.key for h in response.denied_response.headers}


def test_jwt_still_goes_to_the_jwt_verifier_beside_introspection(
    make_runtime, idp: IntrospectionEndpoint, introspection: dict[str, str], make_token
) -> None:
    runtime = make_runtime(credentials={"introspection": introspection})

    decision, _ = check(runtime, bearer(make_token(roles=["viewer"])))
    assert (decision.outcome, decision.identity.method) == (Outcome.ALLOW, "jwt")
    # A JWT the verifier refuses is refused: the provider never gets to vouch for it instead.
    decision, _ = check(runtime, bearer(make_token(roles=["viewer"], aud="other")))
    assert (decision.outcome, decision.reason_code) == (Outcome.UNAUTHENTICATED, "invalid_token")
    assert idp.requests == 0


def test_jwt_is_refused_when_only_introspection_is_configured(
    make_runtime, idp: IntrospectionEndpoint, introspection: dict[str, str], make_token
) -> None:
    runtime = make_runtime(providers=[], credentials={"introspection": introspection})
    decision, _ = check(runtime, bearer(make_token(roles=["viewer"])))
    assert (decision.outcome, decision.reason_code) == (Outcome.UNAUTHENTICATED, "invalid_token")
    assert "no JWT issuers" in decision.message
    assert idp.requests == 0


# --- rate limits ------------------------------------------------------------------------------

ANONYMOUS_LIMIT = {"rules": [{"name": "anonymous", "per": "address", "rate": 1, "burst": 2}]}


def test_rate_limits_refuse_anonymous_callers_by_address(make_runtime) -> None:
    runtime = make_runtime(rate_limits=ANONYMOUS_LIMIT)
    outcomes = [check(runtime, request("/public/hello"))[0].outcome for _ in range(3)]
    assert outcomes == [Outcome.ALLOW, Outcome.ALLOW, Outcome.LIMITED]
    decision, response = check(runtime, request("/public/hello"))
    assert decision.reason_code == "rate_limited"
    assert response.denied_response.status.code == 429


def test_refused_credentials_use_up_the_address_bucket_too(make_runtime) -> None:
    runtime = make_runtime(rate_limits=ANONYMOUS_LIMIT)
    bad = request("/api/books", headers={"authorization": "Bearer not-a-token"})
    outcomes = [check(runtime, bad)[0].outcome for _ in range(3)]
    assert outcomes == [Outcome.UNAUTHENTICATED, Outcome.UNAUTHENTICATED, Outcome.LIMITED]


def test_replicas_built_on_one_redis_share_buckets(make_runtime, redis_server) -> None:
    shared = {**ANONYMOUS_LIMIT, "backend": "redis", "redis": {"url": redis_server.url}}
    one, two = make_runtime(rate_limits=shared), make_runtime(rate_limits=shared)
    outcomes = [check(runtime, request("/public/hello"))[0].outcome for runtime in (one, two, one)]
    assert outcomes == [Outcome.ALLOW, Outcome.ALLOW, Outcome.LIMITED]
