"""With token introspection configured a check can wait on the network: it must not hold up the
other checks (the server runs checks in its thread pool then, not on its event loop)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from fakes import IntrospectionEndpoint

from ext_authz._proto.envoy.service.auth.v3 import external_auth_pb2_grpc
from ext_authz.runtime import build_runtime
from ext_authz.server import build_server, waits_on_network
from ext_authz.settings import (
    CredentialSettings,
    IntrospectionSettings,
    PolicySettings,
    Settings,
    validate_strictly,
)

POLICIES = Path(__file__).resolve().parents[2] / "policies"


@pytest.fixture
def endpoint() -> Iterator[IntrospectionEndpoint]:
    with IntrospectionEndpoint("ext-authz", "s3cret") as server:
        yield server


def test_a_check_waiting_on_introspection_does_not_delay_others(
    endpoint: IntrospectionEndpoint, tmp_path: Path, make_check_request: Callable[..., object]
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    settings = Settings(
        listen="127.0.0.1:0",
        threads=4,
        credentials=CredentialSettings(
            introspection=IntrospectionSettings(
                url=endpoint.url + "/slow", client_id="ext-authz", client_secret_file=secret
            )
        ),
        policy=PolicySettings(model=POLICIES / "model.conf", policy=POLICIES / "policy.csv"),
    )
    running = build_server(settings, build_runtime(settings))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            opaque = make_check_request(
                path="/api/books", headers={"authorization": "Bearer opaque-token-1"}
            )
            slow = stub.Check.future(opaque, timeout=10)
            time.sleep(0.2)  # the slow check is now waiting on the endpoint
            started = time.monotonic()
            reply = stub.Check(make_check_request(path="/public/hello"), timeout=5)
            assert time.monotonic() - started < 1.0
            assert reply.HasField("ok_response")
            assert not slow.done()
            endpoint.release.set()
            # The endpoint's late answer: an active token of a user without roles.
            assert slow.result().denied_response.status.code == 403
    finally:
        endpoint.release.set()
        running.stop(0)


def _settings(**fields: object) -> Settings:
    policy = {"model": str(POLICIES / "model.conf"), "policy": str(POLICIES / "policy.csv")}
    return validate_strictly(Settings, {"policy": policy, **fields}, POLICIES / "config.yaml")


def test_only_settings_that_wait_on_the_network_move_checks_to_the_pool(tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": []}')
    local = {
        "name": "local",
        "issuer": "https://local.example",
        "audiences": ["api"],
        "jwks_file": str(jwks),
    }
    remote = {
        "name": "idp",
        "issuer": "https://idp.example",
        "audiences": ["api"],
        "discovery": True,
    }
    redis = {"backend": "redis", "redis": {"url": "redis://127.0.0.1:6379/0"}}

    assert waits_on_network(_settings(providers=[local])) == []
    assert (
        waits_on_network(_settings(providers=[{**remote, "keys": {"unknown_kid_wait": 0}}])) == []
    )
    # An unknown kid waits for the refetch it triggered; Redis is asked on every limited check.
    assert "https://idp.example" in " ".join(waits_on_network(_settings(providers=[remote])))
    assert "Redis" in " ".join(waits_on_network(_settings(rate_limits=redis)))
