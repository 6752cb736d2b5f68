"""Decision lines are written in batches; none is lost when the process exits cleanly: a plain
exit, `serve` stopped by SIGTERM, a `serve --workers` worker stopped with its supervisor."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from ext_authz._proto.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

POLICIES = Path(__file__).resolve().parents[2] / "policies"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _lines(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def _serving(log: Path) -> list[dict[str, object]]:
    return [line for line in _lines(log) if str(line["message"]).startswith("serving ext_authz")]


def _wait(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def _serve_one_check_then_sigterm(
    tmp_path: Path, check: external_auth_pb2.CheckRequest, *extra: str
) -> list[dict[str, object]]:
    """Start `ext-authz serve`, answer one Check, SIGTERM at once; the lines it logged."""
    port = _free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        f'listen: "127.0.0.1:{port}"\ngrace_period: 2\n'
        f"policy:\n  model: {POLICIES / 'model.conf'}\n  policy: {POLICIES / 'policy.csv'}\n"
    )
    log = tmp_path / "serve.log"
    argv = [sys.executable, "-m", "ext_authz", "serve", "--config", str(config), *extra]
    with log.open("wb") as out:
        server = subprocess.Popen(argv, stderr=out)  # noqa: S603 - our own interpreter
    try:
        # Each server's "serving" line; under a supervisor (whose own has no worker), the workers'.
        expected = {0, 1} if "--workers" in extra else {None}
        _wait(lambda: expected <= {line.get("worker") for line in _serving(log)})
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            assert stub.Check(check, timeout=5).HasField("ok_response")
        # Well within the batch interval: the decision line is still queued when the stop begins.
        server.send_signal(signal.SIGTERM)
        assert server.wait(20) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    return _lines(log)


def test_serve_writes_the_decision_lines_before_it_exits_on_sigterm(
    tmp_path: Path, make_check_request: Callable[..., external_auth_pb2.CheckRequest]
) -> None:
    lines = _serve_one_check_then_sigterm(tmp_path, make_check_request(path="/public/x?a=b"))
    (decision,) = [line for line in lines if line.get("event") == "decision"]
    assert decision["path"] == "/public/x" and decision["query_names"] == ["a"]
    messages = [line["message"] for line in lines]
    assert messages.index("allow allowed") < messages.index("stopped")


def test_a_worker_writes_its_decision_lines_before_it_exits(
    tmp_path: Path, make_check_request: Callable[..., external_auth_pb2.CheckRequest]
) -> None:
    lines = _serve_one_check_then_sigterm(
        tmp_path, make_check_request(path="/public/x"), "--workers", "2"
    )
    (decision,) = [line for line in lines if line.get("event") == "decision"]
    assert decision["worker"] in {0, 1}


def test_a_plain_exit_writes_the_queued_decision_lines(tmp_path: Path) -> None:
    script = (
        "from ext_authz.decision_log import log_decision\n"
        "from ext_authz.logging_setup import configure_logging\n"
        "from ext_authz.models import Decision, Outcome\n"
        "configure_logging('info')\n"
        "for n in range(3):\n"
        "    log_decision(Decision(Outcome.FORBIDDEN, 'access_denied', f'd-{n}'), None, 0.001)\n"
    )
    result = subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert [line["decision_id"] for line in lines] == ["d-0", "d-1", "d-2"]
