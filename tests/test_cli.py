"""The `ext-authz` command line as users and scripts call it."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from grpc_health.v1 import health_pb2, health_pb2_grpc
from jose import jwt

from ext_authz._proto.envoy.service.auth.v3 import (
    attribute_context_pb2,
    external_auth_pb2,
    external_auth_pb2_grpc,
)
from ext_authz.cli import main
from ext_authz.demo.issuer import DEMO_AUDIENCE, DEMO_ISSUER

REPO = Path(__file__).resolve().parent.parent


def _write_config(tmp_path: Path, text: str) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(text)
    return config


VALID = f"""
listen: "127.0.0.1:0"
policy:
  model: {REPO}/policies/model.conf
  policy: {REPO}/policies/policy.csv
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (VALID + "threads: 4\nlisten_adress: x\n", "listen_adress: unknown key"),
        (VALID + "threads: '4'\n", "threads: Input should be a valid integer"),
        ("policy: {model: a}\n", "policy.policy: Field required"),
        (
            VALID + "providers: [{name: a, issuer: b, audiences: [c], jwks_file: j, isuer: x}]\n",
            "providers[0].isuer: unknown key",
        ),
        (
            VALID + "providers: [{name: a, issuer: b, audiences: [c], jwks_file: j,"
            " algorithms: [HS256, RS256]}]\n",
            "mixes HMAC",
        ),
        ("listen: [unclosed\n", "not valid YAML"),
    ],
)
def test_serve_with_a_bad_config_exits_2_naming_file_and_key(tmp_path, text, expected) -> None:
    config = _write_config(tmp_path, text)
    result = CliRunner().invoke(main, ["serve", "--config", str(config)])
    assert result.exit_code == 2
    assert str(config) in result.output
    assert expected in result.output
    assert "Traceback" not in result.output


def test_serve_with_a_missing_config_exits_2(tmp_path) -> None:
    result = CliRunner().invoke(main, ["serve", "--config", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "nope.yaml: cannot read settings file" in result.output


def test_serve_with_a_bad_policy_exits_2_naming_file_and_line(tmp_path) -> None:
    policy = tmp_path / "policy.csv"
    policy.write_text(
        "p, everyone, GET, /public/**, *, *, allow\np, everyone, GET, no-slash, *, *, allow\n"
    )
    config = _write_config(
        tmp_path, f"policy: {{model: {REPO}/policies/model.conf, policy: {policy}}}\n"
    )
    result = CliRunner().invoke(main, ["serve", "--config", str(config)])
    assert result.exit_code == 2
    assert f"{policy}:2:" in result.output
    assert "must start with '/'" in result.output


def test_token_command_mints_a_demo_token(tmp_path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "token",
            "--state-dir",
            str(tmp_path),
            "--sub",
            "alice",
            "--role",
            "viewer",
            "--role",
            "editor",
            "--ttl",
            "120",
            "--claim",
            "tenant=acme",
            "--claim",
            "level=3",
        ],
    )
    assert result.exit_code == 0, result.output
    claims = jwt.get_unverified_claims(result.output.strip())
    assert claims["iss"] == DEMO_ISSUER
    assert claims["aud"] == DEMO_AUDIENCE
    assert claims["sub"] == "alice"
    assert claims["roles"] == ["viewer", "editor"]
    assert claims["exp"] - claims["iat"] == 120
    assert claims["tenant"] == "acme"
    assert claims["level"] == 3


@pytest.mark.parametrize("claim", ["iss=https://evil", "noequals"])
def test_token_command_refuses_bad_claims(tmp_path, claim) -> None:
    result = CliRunner().invoke(
        main, ["token", "--state-dir", str(tmp_path), "--sub", "a", "--claim", claim]
    )
    assert result.exit_code == 2
    assert "--claim" in result.output


def test_demo_init_only_writes_the_state_dir(tmp_path) -> None:
    result = CliRunner().invoke(main, ["demo", "--init-only", "--state-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for name in ("tls.crt", "tls.key", "issuer.key", "jwks.json", "config.yaml", "envoy.yaml"):
        assert (tmp_path / name).is_file(), name


def test_serve_stops_cleanly_on_sigterm(tmp_path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = _write_config(
        tmp_path, VALID.replace("127.0.0.1:0", f"127.0.0.1:{port}") + "grace_period: 2\n"
    )
    with subprocess.Popen(
        [sys.executable, "-m", "ext_authz", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as server:
        try:
            deadline = time.monotonic() + 30
            serving = False
            while not serving and time.monotonic() < deadline:
                with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                    try:
                        reply = health_pb2_grpc.HealthStub(channel).Check(
                            health_pb2.HealthCheckRequest(), timeout=1
                        )
                        serving = reply.status == health_pb2.HealthCheckResponse.SERVING
                    except grpc.RpcError:
                        time.sleep(0.1)
            assert serving
            server.send_signal(signal.SIGTERM)
            assert server.wait(10) == 0
            assert b'"message":"stopped"' in server.stderr.read()
        finally:
            if server.poll() is None:
                server.kill()


def _check_public(port: int) -> int:
    http = attribute_context_pb2.AttributeContext.HttpRequest(method="GET", path="/public/x")
    request = external_auth_pb2.CheckRequest(
        attributes=attribute_context_pb2.AttributeContext(
            request=attribute_context_pb2.AttributeContext.Request(http=http)
        )
    )
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        response = external_auth_pb2_grpc.AuthorizationStub(channel).Check(request, timeout=5)
    return response.status.code


def test_sighup_reloads_the_policy_without_a_restart(tmp_path) -> None:
    policy = tmp_path / "policy.csv"
    policy.write_text((REPO / "policies" / "policy.csv").read_text())
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = _write_config(
        tmp_path,
        f'listen: "127.0.0.1:{port}"\n'
        f"policy: {{model: {REPO}/policies/model.conf, policy: {policy},"
        " reload_interval: 3600}\n",
    )
    with subprocess.Popen(
        [sys.executable, "-m", "ext_authz", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ) as server:
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    assert _check_public(port) == 0  # allowed
                    break
                except grpc.RpcError:
                    time.sleep(0.1)
            rules = policy.read_text().splitlines()
            policy.write_text("\n".join(r for r in rules if "/public/**" not in r) + "\n")
            server.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while _check_public(port) == 0 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert _check_public(port) != 0  # the reloaded policy no longer allows it
            server.send_signal(signal.SIGTERM)
            assert server.wait(10) == 0
        finally:
            if server.poll() is None:
                server.kill()
