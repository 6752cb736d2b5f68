"""signals/: sliding-window detectors, security events and their sinks, and the blocklist."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from itertools import accumulate
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import yaml
from fakes import FakeClock, LocalHttpServer, wait_for
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from ext_authz.decision_log import JsonFormatter
from ext_authz.errors import BlockedError
from ext_authz.models import ANONYMOUS, AuthRequest, Decision, Identity, Outcome
from ext_authz.observe import notify
from ext_authz.runtime import build_runtime
from ext_authz.settings import (
    BlockSettings,
    SecuritySettings,
    SpikeSettings,
    ThresholdSettings,
    WebhookSettings,
    load_settings,
)
from ext_authz.signals import (
    Blocklist,
    KeyType,
    SecurityEvent,
    SecuritySignals,
    SignalKind,
    WebhookSink,
)
from ext_authz.signals.detectors import SAMPLE_SIZE, _Buckets

POLICIES = Path(__file__).resolve().parents[2] / "policies"
ISSUER = "https://issuer.test"  # the issuer make_token signs for
QUIET_SPIKE = SpikeSettings(window=10, baseline=300, factor=5, min_denials=10**6)


def security(**overrides: Any) -> SecuritySettings:
    """Small thresholds; the deny spike is kept quiet unless a test sets it."""
    settings: dict[str, Any] = {
        "auth_failures_per_source": ThresholdSettings(threshold=3, window=10),
        "auth_failures_per_subject": ThresholdSettings(threshold=3, window=10),
        "addresses_per_subject": ThresholdSettings(threshold=2, window=10),
        "denied_paths_per_source": ThresholdSettings(threshold=3, window=10),
        "deny_spike": QUIET_SPIKE,
        "max_tracked_keys": 100,
        **overrides,
    }
    return SecuritySettings(**settings)


def request(
    address: str = "203.0.113.7", path: str = "/api/books", token: str | None = None
) -> AuthRequest:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return AuthRequest(
        "GET",
        path,
        headers=MappingProxyType(headers),
        source_address=address,
        request_id=f"req-{path}-{time.perf_counter_ns()}",
    )


def decision(outcome: Outcome, reason: str, identity: Identity = ANONYMOUS) -> Decision:
    return Decision(outcome, reason, "decision-id", identity, request_id="rid")


BAD_TOKEN = decision(Outcome.UNAUTHENTICATED, "invalid_token")
NO_TOKEN = decision(Outcome.UNAUTHENTICATED, "missing_credential")
ALICE = Identity("alice", roles=("viewer",), issuer=ISSUER)


class Recorder:
    """SecuritySignals with a fake clock and every event it raises."""

    def __init__(self, settings: SecuritySettings, **kwargs: Any) -> None:
        self.clock = FakeClock(1000.0)
        self.signals = SecuritySignals(settings, self.clock, **kwargs)
        self.events: list[SecurityEvent] = []
        self.signals.subscribe(self.events.append)

    def send(
        self, result: Decision, req: AuthRequest | None = None, times: int = 1, every: float = 0
    ) -> None:
        for _ in range(times):
            self.signals.observe(result, req or request(), 0.001)
            self.clock.advance(every)

    def kinds(self) -> list[SignalKind]:
        return [event.kind for event in self.events]


def unsigned_jwt(claims: dict[str, Any]) -> str:
    """A JWT-shaped token (the detectors read the payload only of tokens verified upstream)."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2ln"


# --- credential stuffing -----------------------------------------------------------------------


def test_credential_stuffing_fires_exactly_once_at_the_threshold() -> None:
    recorder = Recorder(security())
    recorder.send(BAD_TOKEN, times=2, every=1)
    assert recorder.events == []
    recorder.send(BAD_TOKEN)
    [event] = recorder.events
    assert (event.kind, event.key_type, event.key) == (
        SignalKind.CREDENTIAL_STUFFING,
        KeyType.ADDRESS,
        "203.0.113.7",
    )
    assert (event.count, event.window) == (3, 10)
    assert event.last_seen - event.first_seen == pytest.approx(2, abs=0.01)
    recorder.send(BAD_TOKEN, times=20, every=0.1)  # a flood within the window: quiet
    assert recorder.kinds() == [SignalKind.CREDENTIAL_STUFFING]


def test_credential_stuffing_needs_the_failures_within_one_window() -> None:
    recorder = Recorder(security())
    recorder.send(BAD_TOKEN, times=10, every=5)  # one every 5 s: never 3 within 10 s
    assert recorder.events == []


def test_credential_stuffing_resets_after_the_window() -> None:
    recorder = Recorder(security())
    recorder.send(BAD_TOKEN, times=3)
    recorder.clock.advance(11)
    recorder.send(BAD_TOKEN, times=2)
    assert len(recorder.events) == 1
    recorder.send(BAD_TOKEN)
    assert recorder.kinds() == [SignalKind.CREDENTIAL_STUFFING] * 2


def test_a_flood_yields_one_event_per_window() -> None:
    recorder = Recorder(security())
    recorder.send(BAD_TOKEN, times=3000, every=0.01)  # 30 s of 100 failures a second
    assert recorder.kinds() == [SignalKind.CREDENTIAL_STUFFING] * 3


def test_missing_credentials_and_other_addresses_do_not_add_up_to_credential_stuffing() -> None:
    recorder = Recorder(security())
    recorder.send(NO_TOKEN, times=10)
    for index in range(10):
        recorder.send(BAD_TOKEN, request(address=f"198.51.100.{index}"))
    assert SignalKind.CREDENTIAL_STUFFING not in recorder.kinds()


def test_events_keep_a_bounded_sample_of_request_ids() -> None:
    recorder = Recorder(security(auth_failures_per_source={"threshold": 50, "window": 10}))
    requests = [request() for _ in range(50)]
    for req in requests:
        recorder.signals.observe(
            Decision(Outcome.UNAUTHENTICATED, "invalid_token", "d", request_id=req.request_id),
            req,
            0.0,
        )
    [event] = recorder.events
    assert event.request_ids == tuple(req.request_id for req in requests[-SAMPLE_SIZE:])


# --- token guessing ----------------------------------------------------------------------------


@pytest.mark.parametrize("reason", ["expired_token", "revoked_token"])
def test_token_guessing_counts_refused_verified_tokens_per_subject(reason: str) -> None:
    recorder = Recorder(security(), subject_claims={ISSUER: "sub"})
    token = unsigned_jwt({"iss": ISSUER, "sub": "alice"})
    for index in range(3):  # from three addresses: not credential stuffing
        address = f"198.51.100.{index}"
        recorder.send(decision(Outcome.UNAUTHENTICATED, reason), request(address, token=token))
    # A verified subject seen from three addresses is also token theft (threshold two).
    assert recorder.kinds() == [SignalKind.TOKEN_GUESSING, SignalKind.TOKEN_THEFT]
    event = recorder.events[0]
    assert (event.kind, event.key_type, event.key) == (
        SignalKind.TOKEN_GUESSING,
        KeyType.SUBJECT,
        "alice",
    )


def test_token_guessing_reads_the_issuers_subject_claim() -> None:
    recorder = Recorder(security(), subject_claims={ISSUER: "user.id"})
    token = unsigned_jwt({"iss": ISSUER, "sub": "ignored", "user": {"id": "u-42"}})
    recorder.send(decision(Outcome.UNAUTHENTICATED, "expired_token"), request(token=token), 3)
    assert [(e.kind, e.key) for e in recorder.events][-1] == (SignalKind.TOKEN_GUESSING, "u-42")


@pytest.mark.parametrize(
    "claims",
    [
        {"iss": ISSUER, "sub": "alice"},  # an invalid token: its subject is not to be believed
        {"iss": "https://other.test", "sub": "alice"},  # an issuer that is not configured
    ],
)
def test_unverified_tokens_name_no_subject(claims: dict[str, Any]) -> None:
    recorder = Recorder(security(), subject_claims={ISSUER: "sub"})
    reason = "invalid_token" if claims["iss"] == ISSUER else "expired_token"
    for index in range(5):
        req = request(f"198.51.100.{index}", token=unsigned_jwt(claims))
        recorder.send(decision(Outcome.UNAUTHENTICATED, reason), req)
    assert SignalKind.TOKEN_GUESSING not in recorder.kinds()


def test_token_guessing_through_the_real_identity_phase(runtime_with_signals) -> None:
    harness, events = runtime_with_signals
    expired = harness.token(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200)
    for index in range(3):
        assert harness.check(request(f"198.51.100.{index}", token=expired)).reason_code == (
            "expired_token"
        )
    assert (SignalKind.TOKEN_GUESSING, "alice") in [(e.kind, e.key) for e in events]


# --- token theft -------------------------------------------------------------------------------


def test_token_theft_fires_for_more_distinct_addresses_than_the_threshold() -> None:
    recorder = Recorder(security())
    allowed = decision(Outcome.ALLOW, "allowed", ALICE)
    for address in ["192.0.2.1", "192.0.2.2", "192.0.2.1", "192.0.2.2"]:
        recorder.send(allowed, request(address))
    assert recorder.events == []  # two addresses are within the threshold of two
    recorder.send(decision(Outcome.FORBIDDEN, "access_denied", ALICE), request("192.0.2.3"))
    [event] = [e for e in recorder.events if e.kind is SignalKind.TOKEN_THEFT]
    assert (event.key_type, event.key, event.count) == (KeyType.SUBJECT, "alice", 3)


def test_token_theft_forgets_addresses_older_than_the_window() -> None:
    recorder = Recorder(security())
    allowed = decision(Outcome.ALLOW, "allowed", ALICE)
    for index in range(10):  # a new address every 6 s: at most two within 10 s
        recorder.send(allowed, request(f"192.0.2.{index}"), every=6)
    assert recorder.events == []


# --- path scanning -----------------------------------------------------------------------------


def test_path_scanning_counts_distinct_denied_paths_per_address() -> None:
    recorder = Recorder(security())
    for _ in range(5):  # the same denied path again and again is not scanning
        recorder.send(NO_TOKEN, request(path="/admin"))
    allowed = decision(Outcome.ALLOW, "allowed")
    for index in range(5):  # allowed paths are not scanning either
        recorder.send(allowed, request(path=f"/public/{index}"))
    for path in ["/.env", "/wp-admin", "/.git/config"]:
        recorder.send(decision(Outcome.FORBIDDEN, "access_denied", ALICE), request(path=path))
    [event] = recorder.events
    assert (event.kind, event.key, event.count) == (SignalKind.PATH_SCANNING, "203.0.113.7", 4)


# --- deny spike --------------------------------------------------------------------------------

SPIKE = SpikeSettings(window=10, baseline=100, factor=5, min_denials=20)


def test_deny_spike_fires_against_a_quiet_baseline() -> None:
    recorder = Recorder(security(deny_spike=SPIKE))
    recorder.send(NO_TOKEN, times=100, every=1)  # 1 denial/s for 100 s: the baseline
    assert recorder.events == []
    recorder.send(NO_TOKEN, times=100, every=0.05)  # 20/s for 5 s
    spikes = [e for e in recorder.events if e.kind is SignalKind.DENY_SPIKE]
    assert len(spikes) == 1
    [spike] = spikes
    assert (spike.key_type, spike.key) == (KeyType.SERVICE, "*")
    assert spike.baseline_rate == pytest.approx(1, rel=0.2)
    assert spike.count >= 20


def test_deny_spike_stays_quiet_when_the_rate_does_not_rise_enough() -> None:
    recorder = Recorder(security(deny_spike=SPIKE))
    recorder.send(NO_TOKEN, times=1000, every=0.1)  # a steady 10/s from the start
    recorder.send(NO_TOKEN, times=400, every=0.025)  # then 40/s: a rise, but not five-fold
    assert SignalKind.DENY_SPIKE not in recorder.kinds()


def test_deny_spike_waits_for_a_baseline_after_start() -> None:
    recorder = Recorder(security(deny_spike=SPIKE))
    recorder.send(NO_TOKEN, times=100, every=0.05)  # 20/s from the start: nothing to compare
    assert recorder.events == []


def test_deny_spike_needs_min_denials_in_the_window() -> None:
    recorder = Recorder(security(deny_spike=SPIKE))
    recorder.clock.advance(30)  # a baseline of no denials at all
    recorder.send(NO_TOKEN, times=15, every=0.1)  # a sharp rise, but only 15 denials
    assert recorder.events == []
    recorder.send(NO_TOKEN, times=5, every=0.1)
    assert recorder.kinds() == [SignalKind.DENY_SPIKE]


def test_deny_spike_counts_401_and_403_but_not_allows_or_400s() -> None:
    recorder = Recorder(security(deny_spike=SPIKE))
    recorder.clock.advance(30)
    recorder.send(decision(Outcome.ALLOW, "allowed"), times=100, every=0.01)
    recorder.send(decision(Outcome.INVALID_REQUEST, "invalid_request"), times=100, every=0.01)
    assert recorder.events == []
    recorder.send(decision(Outcome.FORBIDDEN, "access_denied", ALICE), times=20, every=0.01)
    assert SignalKind.DENY_SPIKE in recorder.kinds()


@settings(max_examples=300, deadline=None)
@given(
    width=st.sampled_from([0.1, 0.5, 1.0, 3.0]),
    span=st.sampled_from([1.0, 10.0, 310.0]),
    gaps=st.lists(st.floats(0, 5), min_size=1, max_size=300),
    bounds=st.lists(st.tuples(st.floats(0, 400), st.floats(-10, 400)), min_size=1, max_size=5),
)
def test_deny_counts_over_any_span_are_those_of_the_buckets_kept_inside_it(
    width: float, span: float, gaps: list[float], bounds: list[tuple[float, float]]
) -> None:
    # The spike detector's totals come from a running sum less the buckets outside the span:
    # they must equal counting every kept occurrence whose bucket lies wholly inside it.
    buckets = _Buckets(width, span)
    times = list(accumulate(gaps, initial=1000.0))[1:]
    for now in times:
        buckets.add(now)
    newest = math.floor(times[-1] / width)
    kept = [math.floor(t / width) for t in times]
    kept = [index for index in kept if index > newest - (math.ceil(span / width) + 1)]
    for back, length in bounds:
        start = times[-1] - back
        for end in (start + length, math.inf):
            first = math.ceil(start / width)
            inside = [index for index in kept if index >= first and (index + 1) * width <= end]
            assert buckets.total(start, end) == len(inside)


# --- bounded memory and thread safety ----------------------------------------------------------


def test_detector_memory_is_bounded_under_100k_distinct_addresses() -> None:
    recorder = Recorder(security(max_tracked_keys=1000))
    signals = recorder.signals
    for index in range(100_000):
        address = f"10.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}"
        signals.observe(BAD_TOKEN, request(address, path=f"/scan/{index}"), 0.0)
        signals.observe(
            decision(Outcome.ALLOW, "allowed", Identity(f"user-{index}")), request(address), 0.0
        )
    for detector in (signals._stuffing, signals._scanning, signals._theft, signals._guessing):
        assert len(detector) <= 1000
    assert recorder.events == []


def test_observe_is_safe_from_many_threads() -> None:
    recorder = Recorder(security(auth_failures_per_source={"threshold": 1000, "window": 60}))

    def flood() -> None:
        recorder.send(BAD_TOKEN, times=250)

    threads = [threading.Thread(target=flood) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # 4000 failures at one instant: one event, then quiet for the window.
    assert recorder.kinds() == [SignalKind.CREDENTIAL_STUFFING]


def test_a_failing_subscriber_never_reaches_the_check(caplog: pytest.LogCaptureFixture) -> None:
    recorder = Recorder(security())

    def broken(event: SecurityEvent) -> None:
        raise RuntimeError("subscriber bug")

    recorder.signals.subscribe(broken)
    recorder.send(BAD_TOKEN, times=3)
    assert recorder.kinds() == [SignalKind.CREDENTIAL_STUFFING]  # later subscribers still run
    assert "subscriber" in caplog.text


def test_unparsed_requests_are_ignored() -> None:
    recorder = Recorder(security())
    recorder.signals.observe(decision(Outcome.INVALID_REQUEST, "invalid_request"), None, 0.0)
    assert recorder.events == []


# --- the event log line and no credentials -----------------------------------------------------


def test_each_event_is_one_json_log_line_without_credentials(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder = Recorder(security(), subject_claims={ISSUER: "sub"})
    token = unsigned_jwt({"iss": ISSUER, "sub": "alice", "secret": "s3cr3t-claim"})
    caplog.set_level(logging.WARNING, logger="ext_authz.security")
    for reason in ("invalid_token", "expired_token", "expired_token", "expired_token"):
        recorder.send(decision(Outcome.UNAUTHENTICATED, reason), request(token=token))
    assert recorder.kinds() == [SignalKind.CREDENTIAL_STUFFING, SignalKind.TOKEN_GUESSING]
    records = [r for r in caplog.records if r.name == "ext_authz.security"]
    assert len(records) == 2
    for record in records:
        line = JsonFormatter().format(record)
        assert "\n" not in line
        fields = json.loads(line)
        assert fields["event"] == "security_event"
        assert fields["level"] == "warning"
        assert fields["kind"] in {"credential_stuffing", "token_guessing"}
        for secret in (token, token.split(".")[1], "s3cr3t", "Bearer"):
            assert secret not in line
    for event in recorder.events:
        body = json.dumps(event.as_dict())
        assert token.split(".")[1] not in body and "s3cr3t" not in body


def test_event_times_are_wall_clock() -> None:
    recorder = Recorder(security())
    recorder.send(BAD_TOKEN, times=3)
    fields = recorder.events[0].as_dict()
    assert abs(recorder.events[0].last_seen - time.time()) < 5
    assert str(fields["last_seen"]).endswith("Z") and str(fields["last_seen"]).startswith("20")


# --- blocking ----------------------------------------------------------------------------------


def blocking(**block: Any) -> SecuritySettings:
    return security(block=BlockSettings(enabled=True, ttl=60, **block))


def refused_by(blocklist: Blocklist, identity: Identity, req: AuthRequest) -> BlockedError | None:
    try:
        blocklist.check(identity, req)
    except BlockedError as error:
        return error
    return None


def test_credential_stuffing_blocks_the_address_for_the_ttl_with_429() -> None:
    recorder = Recorder(blocking())
    blocklist = recorder.signals.blocklist
    recorder.send(BAD_TOKEN, times=3)
    assert recorder.events[0].blocked_for == 60
    error = refused_by(blocklist, ANONYMOUS, request())
    assert error is not None and not error.forbid and error.retry_after == 60
    assert refused_by(blocklist, ANONYMOUS, request("198.51.100.1")) is None  # only that one
    recorder.clock.advance(59.5)
    error = refused_by(blocklist, ALICE, request())
    assert error is not None and error.retry_after == 1
    recorder.clock.advance(1)
    assert refused_by(blocklist, ANONYMOUS, request()) is None
    assert blocklist.current_blocks() == []


def test_path_scanning_blocks_the_address_with_403_when_configured() -> None:
    recorder = Recorder(blocking(status=403))
    for index in range(4):
        recorder.send(NO_TOKEN, request(path=f"/scan/{index}"))
    error = refused_by(recorder.signals.blocklist, ANONYMOUS, request())
    assert error is not None and error.forbid and error.code == "blocked"
    [block] = recorder.signals.blocklist.current_blocks()
    assert (block.key_type, block.key, block.reason) == (
        KeyType.ADDRESS,
        "203.0.113.7",
        "path_scanning",
    )
    assert block.remaining_s == pytest.approx(60)


def test_token_theft_blocks_the_subject_wherever_it_comes_from() -> None:
    recorder = Recorder(blocking())
    allowed = decision(Outcome.ALLOW, "allowed", ALICE)
    for index in range(3):
        recorder.send(allowed, request(f"192.0.2.{index}"))
    blocklist = recorder.signals.blocklist
    error = refused_by(blocklist, ALICE, request("198.51.100.99"))
    assert error is not None and "identity" in str(error)
    assert refused_by(blocklist, Identity("bob"), request("192.0.2.1")) is None
    # An unauthenticated caller is never matched by subject.
    assert refused_by(blocklist, Identity("alice", authenticated=False), request("1.2.3.4")) is None


def test_allowlisted_addresses_and_subjects_are_never_blocked() -> None:
    recorder = Recorder(blocking(allowlist=("203.0.113.0/24", "2001:db8::/32", "alice")))
    recorder.send(BAD_TOKEN, times=3)
    recorder.send(BAD_TOKEN, request("2001:db8::7"), times=3)
    for index in range(3):
        recorder.send(decision(Outcome.ALLOW, "allowed", ALICE), request(f"192.0.2.{index}"))
    assert len(recorder.events) == 3  # the events are still raised...
    assert all(event.blocked_for is None for event in recorder.events)
    assert recorder.signals.blocklist.current_blocks() == []  # ...but nothing is blocked


def test_blocked_requests_count_nowhere() -> None:
    recorder = Recorder(blocking())
    recorder.send(BAD_TOKEN, times=3)
    blocked = Decision(Outcome.LIMITED, "blocked", "d", retry_after=60)
    for index in range(100):
        recorder.send(blocked, request(path=f"/{index}"), every=1)
    assert recorder.kinds() == [SignalKind.CREDENTIAL_STUFFING]


def test_nothing_is_blocked_when_blocking_is_off() -> None:
    recorder = Recorder(security())
    recorder.send(BAD_TOKEN, times=3)
    assert recorder.events[0].blocked_for is None
    assert refused_by(recorder.signals.blocklist, ANONYMOUS, request()) is None


def test_the_blocklist_is_bounded() -> None:
    clock = FakeClock(0.0)
    blocklist = Blocklist(BlockSettings(enabled=True, ttl=60), max_entries=100, clock=clock)
    for index in range(1000):
        assert blocklist.block(KeyType.ADDRESS, f"10.0.{index >> 8}.{index & 255}", "x") == 60
    blocks = blocklist.current_blocks()
    assert len(blocks) == 100
    assert blocks[-1].key == "10.0.3.231"  # the latest are kept


# --- webhook -----------------------------------------------------------------------------------


class Receiver(LocalHttpServer):
    """A webhook receiver: answers ``statuses`` in turn (then 200) and keeps every body."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.bodies: list[dict[str, Any]] = []
        self.content_types: list[str | None] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                receiver.bodies.append(json.loads(self.rfile.read(length)))
                receiver.content_types.append(self.headers["Content-Type"])
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(Handler)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


@contextlib.contextmanager
def running(sink: WebhookSink) -> Iterator[WebhookSink]:
    sink.start()
    try:
        yield sink
    finally:
        sink.stop()


def an_event(key: str = "203.0.113.7") -> SecurityEvent:
    now = time.time()
    return SecurityEvent(SignalKind.CREDENTIAL_STUFFING, key, 3, 10, now - 2, now, ("r1",))


def test_signals_post_each_event_to_the_webhook(receiver: Receiver) -> None:
    settings = security(webhook=WebhookSettings(url=receiver.url + "/hook"))
    recorder = Recorder(settings)
    recorder.signals.start()
    try:
        recorder.send(BAD_TOKEN, times=3)
        assert wait_for(lambda: len(receiver.bodies) == 1)
    finally:
        recorder.signals.stop()
    [body] = receiver.bodies
    assert body == json.loads(json.dumps(recorder.events[0].as_dict()))
    assert body["kind"] == "credential_stuffing" and body["key"] == "203.0.113.7"
    assert receiver.content_types == ["application/json"]


def test_webhook_retries_after_a_500_with_backoff() -> None:
    with Receiver(500, 503) as receiver:
        sink = WebhookSink(WebhookSettings(url=receiver.url, retries=3), backoff=0.01)
        with running(sink):
            sink.submit(an_event())
            assert wait_for(lambda: sink.delivered == 1)
    assert len(receiver.bodies) == 3 and receiver.bodies[0] == receiver.bodies[2]
    assert sink.failed == 0


def test_webhook_gives_up_after_the_retries(caplog: pytest.LogCaptureFixture) -> None:
    with Receiver(500, 500, 500) as receiver:
        sink = WebhookSink(WebhookSettings(url=receiver.url + "/secret-token", retries=2), 0.01)
        with running(sink):
            sink.submit(an_event())
            assert wait_for(lambda: sink.failed == 1)
    assert len(receiver.bodies) == 3 and sink.delivered == 0
    assert "secret-token" not in caplog.text  # webhook URLs often hold a secret


def test_webhook_unreachable_is_retried_then_counted_as_failed(caplog) -> None:
    with Receiver() as receiver:
        url = receiver.url
    sink = WebhookSink(WebhookSettings(url=url + "/secret-token", retries=1, timeout=1), 0.01)
    with running(sink):
        sink.submit(an_event())
        assert wait_for(lambda: sink.failed == 1)
    assert "secret-token" not in caplog.text


def test_webhook_queue_overflow_drops_without_blocking() -> None:
    sink = WebhookSink(WebhookSettings(url="http://127.0.0.1:9/hook", queue_size=2))
    started = time.perf_counter()
    accepted = [sink.submit(an_event(f"192.0.2.{index}")) for index in range(1000)]
    assert time.perf_counter() - started < 0.5
    assert accepted[:2] == [True, True] and not any(accepted[2:])
    assert sink.dropped == 998


def test_webhook_stop_drains_the_queue_briefly(receiver: Receiver) -> None:
    sink = WebhookSink(WebhookSettings(url=receiver.url))
    for index in range(5):
        sink.submit(an_event(f"192.0.2.{index}"))
    sink.start()
    sink.stop()
    assert sorted(body["key"] for body in receiver.bodies) == [f"192.0.2.{i}" for i in range(5)]


def test_webhook_stop_does_not_wait_for_a_slow_backoff() -> None:
    with Receiver(*[500] * 10) as receiver:
        sink = WebhookSink(WebhookSettings(url=receiver.url, retries=10), backoff=30)
        sink.start()
        sink.submit(an_event())
        assert wait_for(lambda: len(receiver.bodies) == 1)
        started = time.monotonic()
        sink.stop()
    assert time.monotonic() - started < 2
    assert sink.failed == 1


def test_webhook_url_must_be_https_or_loopback() -> None:
    with pytest.raises(ValidationError, match="https only"):
        WebhookSettings(url="http://hooks.example.com/x")


@pytest.mark.parametrize("status", [202, 204])
def test_a_202_or_204_answer_counts_as_delivered(status: int) -> None:
    with Receiver(status) as receiver:
        sink = WebhookSink(WebhookSettings(url=receiver.url, retries=2), backoff=0.01)
        with running(sink):
            sink.submit(an_event())
            assert wait_for(lambda: sink.delivered == 1)
    assert len(receiver.bodies) == 1 and sink.failed == 0


# --- wiring ------------------------------------------------------------------------------------


@pytest.fixture
def runtime_with_signals(tmp_path: Path, jwks_file: Path, make_token) -> Any:
    """A Runtime built from a settings file, with a ``check(request)`` that runs the pipeline and
    notifies the observers as the servicer does, and the security events it raised."""

    class Harness:
        def __init__(self) -> None:
            document = {
                "providers": [
                    {
                        "name": "t",
                        "issuer": ISSUER,
                        "audiences": ["api"],
                        "jwks_file": str(jwks_file),
                    }
                ],
                "policy": {
                    "model": str(POLICIES / "model.conf"),
                    "policy": str(POLICIES / "policy.csv"),
                },
                "security": {
                    "auth_failures_per_source": {"threshold": 3, "window": 60},
                    "auth_failures_per_subject": {"threshold": 3, "window": 60},
                    "block": {"enabled": True, "ttl": 60},
                },
            }
            path = tmp_path / "settings.yaml"
            path.write_text(yaml.safe_dump(document), encoding="utf-8")
            self.runtime = build_runtime(load_settings(path))
            self.token = make_token

        def check(self, req: AuthRequest) -> Decision:
            result = self.runtime.pipeline.evaluate(req)
            notify(self.runtime.observers, result, req, 0.001)
            return result

    harness = Harness()
    [signals] = [o for o in harness.runtime.observers if isinstance(o, SecuritySignals)]
    events: list[SecurityEvent] = []
    signals.subscribe(events.append)
    return harness, events


def test_runtime_wires_the_detectors_and_the_blocklist(runtime_with_signals) -> None:
    harness, events = runtime_with_signals
    assert any(isinstance(task, SecuritySignals) for task in harness.runtime.tasks)
    for _ in range(3):
        result = harness.check(request(token="not-a-jwt"))
        assert result.reason_code == "invalid_token"
    assert [e.kind for e in events] == [SignalKind.CREDENTIAL_STUFFING]
    result = harness.check(request(path="/public/hello"))
    assert (result.outcome, result.reason_code, result.retry_after) == (
        Outcome.LIMITED,
        "blocked",
        60,
    )
    assert harness.check(request("198.51.100.1", path="/public/hello")).outcome is Outcome.ALLOW
