"""The demo echo upstream: reports exactly what it received, every header copy included."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from ext_authz.demo.upstream import EchoUpstream

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def upstream() -> Iterator[EchoUpstream]:
    server = EchoUpstream()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def conn(upstream: EchoUpstream) -> Iterator[http.client.HTTPConnection]:
    connection = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=5)
    yield connection
    connection.close()


def request(
    conn: http.client.HTTPConnection,
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes | None = None,
) -> tuple[http.client.HTTPResponse, bytes]:
    """Send a request with headers exactly as listed (duplicates kept) and read the response."""
    conn.putrequest(method, target, skip_accept_encoding=True)
    for name, value in headers:
        conn.putheader(name, value)
    if body is not None:
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    response = conn.getresponse()
    return response, response.read()


def echoed(conn: http.client.HTTPConnection, *args: Any, **kwargs: Any) -> dict[str, Any]:
    response, body = request(conn, *args, **kwargs)
    assert response.status == 200
    assert response.getheader("content-type") == "application/json"
    return json.loads(body)  # type: ignore[no-any-return]


def test_echo_reports_method_raw_target_and_headers(conn: http.client.HTTPConnection) -> None:
    seen = echoed(conn, "GET", "/a/%2e/b;x?q=1&r=%20", [("X-Auth-Subject", "alice")])
    assert seen["method"] == "GET"
    assert seen["path"] == "/a/%2e/b;x?q=1&r=%20"
    assert seen["headers"]["x-auth-subject"] == "alice"
    assert seen["headers"]["host"] == f"127.0.0.1:{conn.port}"


def test_duplicated_headers_come_back_as_a_list_in_order(conn: http.client.HTTPConnection) -> None:
    headers = [("X-Auth-Roles", "admin"), ("x-other", "1"), ("x-auth-roles", "viewer")]
    seen = echoed(conn, "GET", "/", headers)
    assert seen["headers"]["x-auth-roles"] == ["admin", "viewer"]
    assert seen["headers"]["x-other"] == "1"


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_every_method_answers_200_with_json(conn: http.client.HTTPConnection, method: str) -> None:
    assert echoed(conn, method, "/x")["method"] == method


def test_head_answers_200_without_a_body(conn: http.client.HTTPConnection) -> None:
    response, body = request(conn, "HEAD", "/x")
    assert response.status == 200
    assert body == b""
    assert int(response.getheader("content-length", "0")) > 0


def test_request_body_is_discarded_and_the_connection_stays_usable(
    conn: http.client.HTTPConnection,
) -> None:
    first = echoed(conn, "POST", "/one", body=b"x" * 100_000)
    second = echoed(conn, "GET", "/two")
    assert (first["path"], second["path"]) == ("/one", "/two")


def test_chunked_request_body_is_discarded(upstream: EchoUpstream) -> None:
    with socket.create_connection(("127.0.0.1", upstream.port), timeout=5) as sock:
        sock.sendall(
            b"POST /chunked HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n0\r\n\r\n"
            b"GET /after HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        )
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.count(b"HTTP/1.1 200 OK") == 2
    assert b'"/after"' in received


def test_invalid_content_length_is_refused(upstream: EchoUpstream) -> None:
    with socket.create_connection(("127.0.0.1", upstream.port), timeout=5) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 400")


def test_port_zero_binds_an_ephemeral_port() -> None:
    server = EchoUpstream(port=0)
    try:
        assert server.port > 0
    finally:
        server.stop()  # never started: must not hang


def test_stop_releases_the_port(upstream: EchoUpstream) -> None:
    port = upstream.port
    upstream.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    upstream.stop()  # a second stop (as the fixture does) is harmless


def test_requests_are_not_logged(
    conn: http.client.HTTPConnection, capfd: pytest.CaptureFixture[str]
) -> None:
    echoed(conn, "GET", "/quiet")
    request(conn, "BREW", "/unsupported")
    captured = capfd.readouterr()
    assert (captured.out, captured.err) == ("", "")


def test_module_serves_in_the_foreground_until_sigterm() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "ext_authz.demo.upstream", "--host", "127.0.0.1"]
    process = subprocess.Popen(
        [*command, "--port", str(port)], stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert process.stderr is not None
        assert "listening" in process.stderr.readline()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        assert echoed(conn, "GET", "/ping")["path"] == "/ping"
        conn.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
        process.wait()
        if process.stderr is not None:
            process.stderr.close()
