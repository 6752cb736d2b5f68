"""admin/: the admin HTTP server (metrics, health, the live page, its JSON and event stream) and
the LiveView's bounded, time-windowed aggregates."""

from __future__ import annotations

import base64
import gc
import hashlib
import http.client
import json
import re
import socket
import tracemalloc
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import pytest
from fakes import FakeClock

from ext_authz.admin import AdminServer, LiveView
from ext_authz.admin import server as server_module
from ext_authz.admin.live import EVENTS_KEPT, MAX_VALUE_CHARS
from ext_authz.errors import ConfigError
from ext_authz.metrics import Metrics
from ext_authz.models import AuthRequest, Decision, Outcome

NOW = 1_700_000_000.0
TIMEOUT = 5.0


def deny(path: str, address: str = "198.51.100.7") -> tuple[Decision, AuthRequest]:
    return (
        Decision(Outcome.FORBIDDEN, "access_denied", "id"),
        AuthRequest("GET", path, source_address=address),
    )


def allow(path: str = "/public/hello") -> tuple[Decision, AuthRequest]:
    return Decision(Outcome.ALLOW, "allowed", "id"), AuthRequest("GET", path, source_address="::1")


class Admin:
    def __init__(self, server: AdminServer, metrics: Metrics, live: LiveView, clock: FakeClock):
        self.server = server
        self.metrics = metrics
        self.live = live
        self.clock = clock

    def observe(self, *decisions: tuple[Decision, AuthRequest]) -> None:
        for decision, request in decisions:
            self.metrics.observe(decision, request, 0.0004)
            self.live.observe(decision, request, 0.0004)

    def connect(self) -> http.client.HTTPConnection:
        host, port = self.server.address
        return http.client.HTTPConnection(host, port, timeout=TIMEOUT)

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        connection = self.connect()
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()


@pytest.fixture
def admin() -> Iterator[Admin]:
    clock = FakeClock(NOW)
    metrics = Metrics()
    live = LiveView(
        blocks=lambda: [{"key": "203.0.113.9", "kind": "address", "expires_in": 120.0}],
        policy_version=lambda: 7,
        clock=clock,
    )
    server = AdminServer("127.0.0.1:0", metrics, live)
    server.start()
    try:
        yield Admin(server, metrics, live, clock)
    finally:
        server.stop()


def test_metrics_endpoint_serves_the_counters(admin: Admin) -> None:
    admin.observe(allow(), allow(), deny("/admin"))
    status, headers, body = admin.get("/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    assert 'ext_authz_decisions_total{decision="allow",reason="allowed"} 2.0' in text
    assert 'ext_authz_decisions_total{decision="forbidden",reason="access_denied"} 1.0' in text
    assert 'ext_authz_decision_duration_seconds_count{decision="allow"} 2.0' in text


def test_healthz_and_unknown_paths(admin: Admin) -> None:
    assert admin.get("/healthz")[::2] == (200, b"ok\n")
    assert admin.get("/nope")[0] == 404
    assert admin.get("/healthz?probe=1")[0] == 200


def test_live_json_has_the_aggregates(admin: Admin) -> None:
    admin.observe(*[allow() for _ in range(6)])
    admin.observe(deny("/admin/users"), deny("/admin/users"), deny("/admin/users"))
    admin.observe(deny("/.env", "203.0.113.9"), deny("/.env", "203.0.113.9"), deny("/wp-login"))
    admin.clock.advance(0.5)

    status, headers, body = admin.get("/api/live")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert headers["Cache-Control"] == "no-store"
    live = json.loads(body)
    assert live["decisions"] == 12
    assert live["denied"] == 6
    assert live["deny_ratio"] == pytest.approx(0.5)
    assert live["top_denied_paths"] == [
        {"key": "/admin/users", "count": 3},
        {"key": "/.env", "count": 2},
        {"key": "/wp-login", "count": 1},
    ]
    assert live["top_denied_addresses"] == [
        {"key": "198.51.100.7", "count": 4},
        {"key": "203.0.113.9", "count": 2},
    ]
    assert live["blocks"] == [{"key": "203.0.113.9", "kind": "address", "expires_in": 120.0}]
    assert live["policy_version"] == 7
    assert len(live["per_second"]) == 60
    assert live["per_second"][-1] == {"t": int(NOW), "total": 12, "denied": 6}


def test_rates_and_top_lists_forget_what_left_their_windows(admin: Admin) -> None:
    live = admin.live
    admin.observe(deny("/old"), allow())
    admin.clock.advance(61)
    admin.observe(deny("/new"))
    snapshot = live.snapshot()
    assert (snapshot["decisions"], snapshot["denied"]) == (1, 1)
    assert [row["key"] for row in snapshot["top_denied_paths"]] == ["/new", "/old"]

    for _ in range(10):  # ten completed seconds of 3 decisions each
        admin.clock.advance(1)
        admin.observe(allow(), allow(), allow())
    admin.clock.advance(1)
    assert live.snapshot()["decisions_per_second"] == pytest.approx(3.0)

    admin.clock.advance(300)
    snapshot = live.snapshot()
    assert snapshot["decisions"] == 0
    assert snapshot["deny_ratio"] is None
    assert snapshot["top_denied_paths"] == []


def test_only_denials_with_a_request_feed_the_top_lists(admin: Admin) -> None:
    admin.live.observe(Decision(Outcome.INVALID_REQUEST, "invalid_request", "id"), None, 0.001)
    admin.observe(allow("/allowed"), deny("/search?q=secret"))
    snapshot = admin.live.snapshot()
    assert snapshot["denied"] == 2
    assert snapshot["top_denied_paths"] == [{"key": "/search", "count": 1}]


def test_stream_pushes_snapshots_as_server_sent_events(admin: Admin) -> None:
    admin.observe(deny("/admin"))
    connection = admin.connect()
    try:
        connection.request("GET", "/api/stream")
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type") == "text/event-stream"
        data = None
        while data is None:
            line = response.fp.readline()
            assert line, "the stream ended before an event"
            if line.startswith(b"data: "):
                data = json.loads(line.removeprefix(b"data: "))
    finally:
        connection.close()
    assert data["top_denied_paths"] == [{"key": "/admin", "count": 1}]


def test_streams_beyond_the_limit_are_refused(
    monkeypatch: pytest.MonkeyPatch, admin: Admin
) -> None:
    monkeypatch.setattr(server_module, "MAX_STREAMS", 1)
    server = AdminServer("127.0.0.1:0", admin.metrics, admin.live)
    server.start()
    host, port = server.address
    try:
        with (
            closing(http.client.HTTPConnection(host, port, timeout=TIMEOUT)) as first,
            closing(http.client.HTTPConnection(host, port, timeout=TIMEOUT)) as second,
        ):
            first.request("GET", "/api/stream")
            # Kept open: a response dropped here would close the stream and free its slot.
            with first.getresponse() as streaming:
                assert streaming.status == 200
                second.request("GET", "/api/stream")
                with second.getresponse() as refused:
                    assert refused.status == 503
    finally:
        server.stop()


def test_page_is_self_contained_html_with_the_charts(admin: Admin) -> None:
    status, headers, body = admin.get("/")
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    page = body.decode()
    assert '<canvas id="rate-chart"' in page
    assert '<canvas id="deny-chart"' in page
    assert 'new EventSource("/api/stream")' in page
    assert 'fetch("/api/live"' in page  # the polling fallback
    # Offline machines: nothing is loaded from anywhere else.
    assert not re.search(r"(src|href)=\"(https?:)?//", page)
    assert "innerHTML" not in page
    # The CSP allows exactly the page's own inline script and style.
    csp = headers["Content-Security-Policy"]
    script = re.search(r"<script>(.*?)</script>", page, re.DOTALL)
    assert script is not None
    digest = base64.b64encode(hashlib.sha256(script.group(1).encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}';" in csp
    assert "default-src 'none'" in csp
    assert "connect-src 'self'" in csp


def test_security_events_are_kept_newest_first_bounded_and_plain() -> None:
    clock = FakeClock(NOW)
    live = LiveView(clock=clock)
    for number in range(EVENTS_KEPT + 5):
        live.record_event({"kind": "auth_failures_per_source", "number": number})
    live.record_event(
        {"kind": "deny_spike", "detail": {"nested": 1}, "long": "x" * 1000, "rate": float("inf")}
    )
    events = live.snapshot()["events"]
    assert len(events) == EVENTS_KEPT
    assert events[0] == {
        "kind": "deny_spike",
        "detail": "{'nested': 1}",
        "long": "x" * (MAX_VALUE_CHARS - 1) + "…",
        "rate": None,
        "time": NOW,
    }
    assert events[1]["number"] == EVENTS_KEPT + 4
    assert events[-1]["number"] == 6
    json.dumps(events, allow_nan=False)


def test_live_view_memory_stays_bounded_under_a_flood_of_distinct_values() -> None:
    clock = FakeClock(NOW)
    live = LiveView(clock=clock)
    decision = Decision(Outcome.UNAUTHENTICATED, "invalid_token", "id")
    hot = AuthRequest("GET", "/login", source_address="192.0.2.1")
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for number in range(100_000):
            address = f"10.{number >> 16}.{number >> 8 & 255}.{number & 255}"
            request = AuthRequest("GET", f"/scan/{number:06d}", source_address=address)
            live.observe(decision, request, 0.0)
            if number % 10 == 0:
                live.observe(decision, hot, 0.0)
            clock.advance(0.003)  # the flood spans the whole five-minute window
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 2_000_000, f"{grown} bytes kept for 100k distinct paths and addresses"
    snapshot = live.snapshot()
    assert snapshot["top_denied_paths"][0]["key"] == "/login"  # the heavy hitter survives
    assert snapshot["top_denied_addresses"][0]["key"] == "192.0.2.1"


def test_bind_failure_is_a_config_error_naming_admin_listen() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = AdminServer(f"127.0.0.1:{port}", Metrics(), LiveView())
        with pytest.raises(
            ConfigError, match=rf"admin\.listen: cannot listen on 127\.0\.0\.1:{port}"
        ):
            server.start()
        server.stop()  # nothing started: a no-op


@pytest.mark.parametrize("listen", ["127.0.0.1", "127.0.0.1:http", "127.0.0.1:70000", ""])
def test_a_malformed_listen_address_is_a_config_error(listen: str) -> None:
    with pytest.raises(ConfigError, match=r"admin\.listen: .* is not host:port"):
        AdminServer(listen, Metrics(), LiveView())


@pytest.mark.parametrize(
    ("listen", "address"),
    [(":9902", ("127.0.0.1", 9902)), ("localhost:80", ("localhost", 80)), ("[::1]:9", ("::1", 9))],
)
def test_listen_defaults_to_loopback(listen: str, address: tuple[str, int]) -> None:
    assert AdminServer(listen, Metrics(), LiveView()).address == address


def test_stop_ends_open_streams_and_frees_the_port() -> None:
    live = LiveView()
    server = AdminServer("127.0.0.1:0", Metrics(), live)
    server.start()
    host, port = server.address
    connection = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    try:
        connection.request("GET", "/api/stream")
        response = connection.getresponse()
        server.stop()
        rest: Any = response.read()  # returns once the server ends the stream
        assert b"data: " in rest
    finally:
        connection.close()
    again = AdminServer(f"127.0.0.1:{port}", Metrics(), live)
    again.start()
    again.stop()
