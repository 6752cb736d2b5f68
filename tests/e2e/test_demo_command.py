"""`ext-authz demo` and `ext-authz token` as a user runs them: ready line, tokens, clean stop."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import Client, demo_ports

from ext_authz.demo.envoy_config import DemoPorts

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-m", "ext_authz"]


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def demo_argv(state: Path, ports: DemoPorts) -> list[str]:
    """`ext-authz demo` on the given state dir and ports (every port flag the demo has)."""
    flags = {
        "--https-port": ports.https,
        "--http-port": ports.http,
        "--grpc-port": ports.grpc,
        "--admin-port": ports.admin,
        "--upstream-port": ports.upstream,
        "--mtls-port": ports.mtls,
        "--metrics-port": ports.metrics,
    }
    return [*CLI, "demo", "--state-dir", str(state), *(f"{k}={v}" for k, v in flags.items())]


def test_demo_command_prints_ready_serves_tokens_and_stops_everything(tmp_path: Path) -> None:
    ports = demo_ports()
    state = tmp_path / "state"
    argv = demo_argv(state, ports)
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as demo:
        try:
            assert demo.stdout is not None
            first_line = demo.stdout.readline().strip()
            assert first_line == f"ready https://127.0.0.1:{ports.https}", demo.stderr
            for name in ("tls.crt", "tls.key", "issuer.key", "jwks.json"):
                assert (state / name).is_file()

            token = subprocess.run(
                [*CLI, "token", "--state-dir", str(state), "--sub", "erin", "--role", "editor"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            client = Client(state, ports.https)
            reply = client.get("/api/books?include=drafts", token=token)
            assert reply.status == 200
            assert reply.upstream_headers["x-auth-subject"] == "erin"
            assert client.get("/api/books?include=drafts").status == 401

            demo.send_signal(signal.SIGTERM)
            assert demo.wait(30) == 0
            assert "stopped" in demo.stdout.read()
        finally:
            if demo.poll() is None:  # a failed assertion must not leave the demo running
                demo.kill()
    deadline = time.monotonic() + 10
    busy = [p for p in (ports.https, ports.grpc, ports.admin, ports.upstream) if _port_open(p)]
    while busy and time.monotonic() < deadline:
        time.sleep(0.2)
        busy = [p for p in busy if _port_open(p)]
    assert not busy, f"ports still served after stop: {busy}"


def test_demo_reports_a_port_in_use_and_exits_non_zero(tmp_path: Path) -> None:
    ports = demo_ports()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports.grpc))
        taken.listen()
        result = subprocess.run(
            demo_argv(tmp_path, ports),
            capture_output=True,
            text=True,
            timeout=90,
        )
    assert result.returncode != 0
    assert "ext-authz" in result.stderr
    assert "ready" not in result.stdout
