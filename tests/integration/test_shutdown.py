"""Graceful stop: a check in flight when SIGTERM arrives still gets its answer."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest

from ext_authz._proto.envoy.service.auth.v3 import (
    attribute_context_pb2,
    external_auth_pb2,
    external_auth_pb2_grpc,
)
from ext_authz.models import AuthRequest, Decision, Outcome
from ext_authz.runtime import Runtime
from ext_authz.server import build_server
from ext_authz.settings import HeaderSettings, PolicySettings, Settings

POLICIES = Path(__file__).resolve().parents[2] / "policies"


class SlowAllowPipeline:
    """Allows everything after a delay, so a check is still running when stop() begins."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.started = threading.Event()

    def evaluate(self, request: AuthRequest) -> Decision:
        self.started.set()
        time.sleep(self.delay)
        return Decision(Outcome.ALLOW, "allowed", "d-1")


def _check_request() -> external_auth_pb2.CheckRequest:
    http = attribute_context_pb2.AttributeContext.HttpRequest(method="GET", path="/public/x")
    return external_auth_pb2.CheckRequest(
        attributes=attribute_context_pb2.AttributeContext(
            request=attribute_context_pb2.AttributeContext.Request(http=http)
        )
    )


def test_stop_drains_in_flight_checks_and_then_refuses_new_ones() -> None:
    settings = Settings(
        listen="127.0.0.1:0",
        policy=PolicySettings(model=POLICIES / "model.conf", policy=POLICIES / "policy.csv"),
    )
    pipeline = SlowAllowPipeline(delay=0.5)
    running = build_server(settings, Runtime(pipeline, HeaderSettings()))  # type: ignore[arg-type]
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        in_flight = stub.Check.future(_check_request(), timeout=10)
        assert pipeline.started.wait(5)
        stopper = threading.Thread(target=running.stop, args=(5.0,))
        stopper.start()
        response = in_flight.result()
        stopper.join(10)
        assert not stopper.is_alive()
        assert response.status.code == grpc.StatusCode.OK.value[0]
        assert response.HasField("ok_response")
        with pytest.raises(grpc.RpcError):
            stub.Check(_check_request(), timeout=2)
