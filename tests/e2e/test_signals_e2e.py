"""Security signals through the real Envoy: each detector's event in the service log, and the
block that follows (429 with Retry-After, never reaching the upstream, lifted after the TTL).

This module runs its own stack with small thresholds, short windows and a short block TTL. Each
test plays its attacker from its own loopback address (127.0.0.x), so blocks do not interfere;
127.0.0.1 is allowlisted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import pytest
from harness import Client, Reply, start_stack

from ext_authz.demo.issuer import mint_demo_token
from ext_authz.demo.stack import DemoStack

pytestmark = pytest.mark.e2e

TTL = 2  # seconds a block lasts
SETTINGS = {
    "security": {
        "auth_failures_per_source": {"threshold": 5, "window": 10},
        "auth_failures_per_subject": {"threshold": 3, "window": 10},
        "addresses_per_subject": {"threshold": 2, "window": 10},
        "denied_paths_per_source": {"threshold": 5, "window": 10},
        "deny_spike": {"window": 2, "baseline": 30, "factor": 3, "min_denials": 25},
        "block": {"enabled": True, "ttl": TTL, "status": 429, "allowlist": ["127.0.0.1"]},
    },
    "rate_limits": {"rules": []},  # the attacks here are about blocks, not rate limits
}
EVENT_TIMEOUT = 5.0


@pytest.fixture(scope="module")
def signals_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStack]:
    running = start_stack(tmp_path_factory.mktemp("signals"), SETTINGS)
    yield running
    running.stop()


@pytest.fixture
def client_from(signals_stack: DemoStack) -> Callable[[str], Client]:
    def make(source: str) -> Client:
        return Client(signals_stack.state_dir, signals_stack.ports.https, source=source)

    return make


class ServiceLog:
    """The security events the service logs from now on (ext-authz.log holds JSON lines, and
    other output such as console spans)."""

    def __init__(self, stack: DemoStack) -> None:
        self.path = stack.state_dir / "ext-authz.log"
        self.offset = self.path.stat().st_size

    def events(self) -> list[dict[str, object]]:
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            written = handle.read().decode(errors="replace")
        found = []
        for line in written.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("event") == "security_event":
                found.append(entry)
        return found

    def wait_for(self, kind: str, key: str) -> dict[str, object]:
        deadline = time.monotonic() + EVENT_TIMEOUT
        while True:
            matching = [e for e in self.events() if e["kind"] == kind and e["key"] == key]
            if matching:
                assert len(matching) == 1, matching  # one event per window, not one per request
                return matching[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"no {kind} event for {key} in {EVENT_TIMEOUT} s")
            time.sleep(0.05)


@pytest.fixture
def service_log(signals_stack: DemoStack) -> ServiceLog:
    return ServiceLog(signals_stack)


def assert_blocked(stack: DemoStack, reply_of: Callable[[], Reply], ttl: int = TTL) -> Reply:
    before = stack.upstream_requests
    reply = reply_of()
    assert reply.status == 429, reply.body
    assert reply.json()["reason"] == "blocked"
    assert 1 <= int(reply.headers["Retry-After"]) <= ttl
    assert stack.upstream_requests == before, "a blocked request reached the upstream"
    return reply


def assert_served_after_the_ttl(reply_of: Callable[[], Reply]) -> None:
    time.sleep(TTL)
    assert reply_of().status == 200


def test_credential_stuffing_raises_the_event_and_blocks_the_address(
    signals_stack, client_from, service_log
) -> None:
    attacker = client_from("127.0.0.11")
    for index in range(5):
        reply = attacker.get("/api/books", token=f"guessed-token-{index}")
        assert reply.status == 401
    event = service_log.wait_for("credential_stuffing", "127.0.0.11")
    assert (event["key_type"], event["count"], event["blocked_for_s"]) == ("address", 5, TTL)
    assert event["level"] == "warning" and event["logger"] == "ext_authz.security"
    assert "guessed-token" not in json.dumps(service_log.events())

    def public() -> Reply:
        return attacker.get("/public/hello")

    assert_blocked(signals_stack, public)  # every route: the address is blocked
    assert client_from("127.0.0.12").get("/public/hello").status == 200  # only that address
    assert_served_after_the_ttl(public)


def test_path_scanning_raises_the_event_and_blocks_the_address(
    signals_stack, client_from, service_log
) -> None:
    scanner = client_from("127.0.0.13")
    for path in ["/admin", "/admin/users", "/.env", "/api/secrets", "/wp-login.php", "/.git"]:
        assert scanner.get(path).status in (401, 403)
    event = service_log.wait_for("path_scanning", "127.0.0.13")
    assert (event["key_type"], event["count"]) == ("address", 6)
    assert_blocked(signals_stack, lambda: scanner.get("/public/hello"))


def test_token_guessing_raises_the_event_and_blocks_the_subject(
    signals_stack, client_from, service_log
) -> None:
    state = signals_stack.state_dir
    expired = [mint_demo_token(state, "mallory", ["viewer"], ttl=-120) for _ in range(3)]
    guesser = client_from("127.0.0.14")
    for token in expired:
        reply = guesser.get("/api/books", token=token)
        assert (reply.status, reply.json()["reason"]) == (401, "expired_token")
    event = service_log.wait_for("token_guessing", "mallory")
    assert (event["key_type"], event["count"], event["blocked_for_s"]) == ("subject", 3, TTL)

    valid = mint_demo_token(state, "mallory", ["viewer"], ttl=600)
    other_address = client_from("127.0.0.15")

    def books() -> Reply:
        return other_address.get("/api/books", token=valid)

    assert_blocked(signals_stack, books)  # the subject, from any address
    assert guesser.get("/public/hello").status == 200  # the address is not blocked
    assert_served_after_the_ttl(books)


def test_token_theft_raises_the_event_and_blocks_the_subject(
    signals_stack, client_from, service_log
) -> None:
    token = mint_demo_token(signals_stack.state_dir, "trent", ["viewer"], ttl=600)
    for address in ["127.0.0.21", "127.0.0.22", "127.0.0.23"]:
        assert client_from(address).get("/api/books", token=token).status == 200
    event = service_log.wait_for("token_theft", "trent")
    assert (event["key_type"], event["count"]) == ("subject", 3)
    assert_blocked(signals_stack, lambda: client_from("127.0.0.21").get("/api/books", token=token))


def test_deny_spike_raises_the_event(client_from, service_log) -> None:
    anonymous = client_from("127.0.0.31")
    time.sleep(2)  # a window of baseline (the stack may have just started)
    deadline = time.monotonic() + EVENT_TIMEOUT
    while not any(e["kind"] == "deny_spike" for e in service_log.events()):
        assert time.monotonic() < deadline, "no deny_spike event"
        assert anonymous.get("/api/books").status == 401  # one path, missing credential
    event = service_log.wait_for("deny_spike", "*")
    assert event["key_type"] == "service"
    assert int(str(event["count"])) >= 25
    assert anonymous.get("/public/hello").status == 200  # a spike blocks nobody


def test_allowlisted_address_raises_the_event_but_is_not_blocked(client_from, service_log) -> None:
    trusted = client_from("127.0.0.1")
    for index in range(5):
        assert trusted.get("/api/books", token=f"bad-{index}").status == 401
    event = service_log.wait_for("credential_stuffing", "127.0.0.1")
    assert event["blocked_for_s"] is None
    assert trusted.get("/public/hello").status == 200


def test_the_demo_blocks_a_scripted_credential_stuffing_run(tmp_path) -> None:
    """The demo's own settings (no overrides): ten bad tokens from 127.0.0.1 block it."""
    demo = start_stack(tmp_path)
    try:
        service_log = ServiceLog(demo)
        client = Client(demo.state_dir, demo.ports.https)
        for index in range(10):
            assert client.get("/api/books", token=f"stuffed-{index}").status == 401
        event = service_log.wait_for("credential_stuffing", "127.0.0.1")
        assert (event["count"], event["window_s"], event["blocked_for_s"]) == (10, 30, 60)
        reply = assert_blocked(demo, lambda: client.get("/public/hello"), ttl=60)
        assert reply.json()["error"] == "too_many_requests"
    finally:
        demo.stop()
