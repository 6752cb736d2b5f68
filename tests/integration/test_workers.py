"""`ext-authz serve --workers N`: N processes on one port, supervised, stopped together."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from ext_authz._proto.envoy.service.auth.v3 import external_auth_pb2_grpc

POLICIES = Path(__file__).resolve().parents[2] / "policies"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _config(folder: Path, listen: str, policy: Path = POLICIES / "policy.csv") -> Path:
    config = folder / "config.yaml"
    config.write_text(
        f'listen: "{listen}"\ngrace_period: 2\n'
        f"policy:\n  model: {POLICIES / 'model.conf'}\n  policy: {policy}\n"
    )
    return config


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _log_lines(log: Path) -> list[dict[str, object]]:
    lines = []
    for line in log.read_text().splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return lines


def _serving_lines(log: Path) -> list[dict[str, object]]:
    """The "serving" line of each worker start (the supervisor's own has no worker field)."""
    return [
        line
        for line in _log_lines(log)
        if str(line.get("message", "")).startswith("serving ext_authz on") and "worker" in line
    ]


def _serving_workers(log: Path) -> set[object]:
    return {line["worker"] for line in _serving_lines(log)}


def _wait(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    port = _free_port()
    log = tmp_path / "serve.log"
    config = _config(tmp_path, f"127.0.0.1:{port}")
    with log.open("wb") as out:
        parent = subprocess.Popen(
            [sys.executable, "-m", "ext_authz", "serve", "--config", str(config), "--workers", "2"],
            stderr=out,
        )
    try:
        _wait(lambda: _serving_workers(log) >= {0, 1})
        yield parent, port, log
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_two_workers_share_the_port_and_both_answer_checks(
    two_workers: tuple[subprocess.Popen[bytes], int, Path],
    make_check_request: Callable[..., object],
) -> None:
    parent, port, log = two_workers
    assert len(_children(parent.pid)) == 2
    for _ in range(16):  # new connections: the kernel spreads them over the workers
        options = [("grpc.use_local_subchannel_pool", 1)]
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            for _ in range(3):
                reply = stub.Check(make_check_request(path="/public/hello"), timeout=5)
                assert reply.HasField("ok_response")
    _wait(lambda: len([line for line in _log_lines(log) if line.get("event") == "decision"]) >= 48)
    decided_by = {line.get("worker") for line in _log_lines(log) if line.get("event") == "decision"}
    assert decided_by == {0, 1}


def test_sigterm_stops_every_worker_and_exits_0(
    two_workers: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    parent, _, _ = two_workers
    workers = _children(parent.pid)
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(20) == 0
    for pid in workers:
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        )


def test_a_worker_that_dies_is_restarted(
    two_workers: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    parent, _, log = two_workers
    victim = _children(parent.pid)[0]
    os.kill(victim, signal.SIGKILL)
    _wait(lambda: len(_children(parent.pid)) == 2 and victim not in _children(parent.pid))
    _wait(
        lambda: (
            sum(
                1
                for line in _log_lines(log)
                if str(line.get("message", "")).startswith("serving ext_authz on")
            )
            == 3
        )
    )
    assert any("restarting" in str(line.get("message")) for line in _log_lines(log))
    assert parent.poll() is None


def _serve(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ext_authz", "serve", "--config", str(config), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_workers_need_a_fixed_port(tmp_path: Path) -> None:
    result = _serve(_config(tmp_path, "127.0.0.1:0"), "--workers", "2")
    assert result.returncode == 2
    assert "--workers needs a fixed port" in result.stderr


def test_bad_settings_exit_2_before_any_worker_starts(tmp_path: Path) -> None:
    config = _config(tmp_path, f"127.0.0.1:{_free_port()}")
    config.write_text(config.read_text() + "thread: 4\n")  # misspelt key
    result = _serve(config, "--workers", "2")
    assert result.returncode == 2
    assert "thread" in result.stderr
    assert "worker 0 started" not in result.stderr


def test_a_bad_policy_found_by_the_workers_exits_2_with_the_error(tmp_path: Path) -> None:
    policy = tmp_path / "policy.csv"
    policy.write_text("p, everyone, GET, /public/**, *, *, allow\np, broken\n")
    result = _serve(_config(tmp_path, f"127.0.0.1:{_free_port()}", policy), "--workers", "2")
    assert result.returncode == 2
    assert "policy.csv:2" in result.stderr
