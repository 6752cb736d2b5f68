"""The decision log line: its content, the logging configuration that applies to it, and when it
is written (in batches, in order with other lines)."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import time
import weakref
from collections.abc import Iterator
from typing import Protocol

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from ext_authz.decision_log import (
    DECISION_LOGGER,
    PIPE_BUF,
    BatchingHandler,
    DecisionLog,
    JsonFormatter,
    _latency_ms,
    log_decision,
)
from ext_authz.logging_setup import configure_logging
from ext_authz.models import AuthRequest, Decision, Identity, Outcome

NOW = 1795984085.0421875  # 2026-11-29T20:28:05.042Z
TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
ALICE = Identity("alice", ("viewer", "editor"))
REQUEST = AuthRequest(
    "GET",
    "/api/books/42",
    (("q", "SECRET-QUERY-VALUE"), ("page", "2"), ("q", "again")),
    source_address="10.0.0.7",
)
DECISIONS = {
    "allow": (
        Decision(Outcome.ALLOW, "allowed", "d-1", ALICE, "p, viewer, /api/*, GET", "", "r-1"),
        REQUEST,
    ),
    "deny, no rule, no roles": (
        Decision(Outcome.FORBIDDEN, "access_denied", "d-2", Identity("bob"), request_id="r-2"),
        AuthRequest("DELETE", "/", source_address="::1"),
    ),
    "anonymous 401": (Decision(Outcome.UNAUTHENTICATED, "missing_credential", "d-3"), REQUEST),
    "unparsed request": (Decision(Outcome.INVALID_REQUEST, "invalid_request", "d-4"), None),
    "quotes, escapes, non-ASCII": (
        Decision(Outcome.ALLOW, "allowed", "d-5", Identity('zoë "q" \\ \u2028 \t', ("rôle",))),
        AuthRequest("GET", '/caf\u00e9/"x"\n', (("ñ", "v"),), source_address="10.0.0.8"),
    ),
}


class Records(logging.Handler):
    """Another handler, as pytest's caplog or a user's log shipper would add."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Configure(Protocol):
    def __call__(self, level: str, worker: int | None = None) -> io.StringIO: ...


@pytest.fixture
def configure(monkeypatch: pytest.MonkeyPatch) -> Iterator[Configure]:
    """configure_logging, called in the test (after pytest's log capture is set up), with stderr
    a buffer it returns; the logging configuration is restored afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    for flag in ("logThreads", "logProcesses", "logMultiprocessing"):
        monkeypatch.setattr(logging, flag, getattr(logging, flag))

    def configure(level: str, worker: int | None = None) -> io.StringIO:
        stream = io.StringIO()
        monkeypatch.setattr(sys, "stderr", stream)
        configure_logging(level, worker)
        return stream

    yield configure
    for handler in root.handlers:
        if isinstance(handler, BatchingHandler):
            handler.close()
    root.handlers[:], level = saved
    root.setLevel(level)
    logging.getLogger(DECISION_LOGGER).setLevel(logging.NOTSET)


def written(stream: io.StringIO) -> list[dict[str, object]]:
    for handler in logging.getLogger().handlers:
        handler.flush()
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def decisions(stream: io.StringIO) -> list[dict[str, object]]:
    return [line for line in written(stream) if line.get("event") == "decision"]


def test_a_decision_line_has_every_field_and_names_but_no_query_values(
    configure: Configure,
) -> None:
    stderr = configure("info", worker=3)
    with trace.use_span(NonRecordingSpan(SpanContext(TRACE_ID, 7, True, TraceFlags(1)))):
        log_decision(*DECISIONS["allow"], 0.0123456)

    (line,) = decisions(stderr)
    assert line == {
        "time": line["time"],
        "level": "info",
        "logger": "ext_authz.decision",
        "message": "allow allowed",
        "event": "decision",
        "decision_id": "d-1",
        "decision": "allow",
        "reason_code": "allowed",
        "subject": "alice",
        "roles": ["viewer", "editor"],
        "matched_rule": "p, viewer, /api/*, GET",
        "latency_ms": 12.346,
        "request_id": "r-1",
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "method": "GET",
        "path": "/api/books/42",
        "query_names": ["page", "q"],
        "source_address": "10.0.0.7",
        "worker": 3,
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(line["time"]))
    assert "SECRET-QUERY-VALUE" not in stderr.getvalue()


def test_the_line_keeps_the_key_order_and_the_time_of_the_decision(
    configure: Configure, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(time, "time", lambda: NOW)
    monkeypatch.setattr(time, "time_ns", lambda: int(NOW * 1e9))  # what LogRecord reads on 3.13
    stderr = configure("info")
    log_decision(*DECISIONS["allow"], 0.001)
    written(stderr)
    (line,) = stderr.getvalue().splitlines()
    assert line.startswith(
        '{"time":"2026-11-29T20:28:05.042Z","level":"info","logger":"ext_authz.decision",'
        '"message":"allow allowed","event":"decision","decision_id":"d-1",'
    )
    assert line.endswith(',"query_names":["page","q"],"source_address":"10.0.0.7"}')


@pytest.mark.parametrize("traced", [False, True])
@pytest.mark.parametrize("latency_s", [0.0004567, 0.0015, 2.0])
@pytest.mark.parametrize("worker", [None, 5])
@pytest.mark.parametrize("case", list(DECISIONS))
def test_a_decision_is_the_same_line_whether_or_not_another_handler_sees_it(
    configure: Configure,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    worker: int | None,
    latency_s: float,
    traced: bool,
) -> None:
    """Decisions take a direct path when only the JSON handler would see them; with another
    handler on the way (pytest's caplog, a user's) they are records formatted by JsonFormatter.
    Both must write the same bytes."""
    monkeypatch.setattr(time, "time", lambda: NOW)
    monkeypatch.setattr(time, "time_ns", lambda: int(NOW * 1e9))  # what LogRecord reads on 3.13
    decision, request = DECISIONS[case]
    stderr = configure("info", worker=worker)
    if traced:
        span = NonRecordingSpan(SpanContext(TRACE_ID, 7, True, TraceFlags(1)))
        monkeypatch.setattr(trace, "get_current_span", lambda: span)
    log_decision(decision, request, latency_s)
    written(stderr)
    direct = stderr.getvalue()
    stderr.seek(0)
    stderr.truncate()

    other = Records()
    logging.getLogger("ext_authz").addHandler(other)
    try:
        log_decision(decision, request, latency_s)
    finally:
        logging.getLogger("ext_authz").removeHandler(other)
    written(stderr)

    assert ('"trace_id":"0af7651916cd43dd8448eb211c80319c"' in direct) is traced
    assert stderr.getvalue() == direct
    (record,) = other.records
    assert JsonFormatter(worker).format(record) + "\n" == direct
    assert record.getMessage() == f"{decision.outcome.value} {decision.reason_code}"


@settings(max_examples=2000, deadline=None)
@given(
    st.one_of(
        st.floats(0, 3e9),  # seconds: under a century
        st.floats(0, 0.01),
        st.integers(0, 10**9).map(lambda n: n / 1e6),
        st.integers(0, 10**9).map(lambda n: (n + 0.5) / 1e6),  # halfway between two µs
    )
)
def test_the_latency_text_is_how_json_writes_the_rounded_milliseconds(latency_s: float) -> None:
    assert _latency_ms(latency_s) == repr(round(latency_s * 1000, 3))


def test_one_formatter_writes_each_outcome_and_reason_code_as_decided() -> None:
    # The JSON only the outcome and reason code make is made once per pair and remembered.
    formatter = JsonFormatter()
    cases = [
        (Outcome.FORBIDDEN, "access_denied"),
        (Outcome.UNAUTHENTICATED, "access_denied"),
        (Outcome.FORBIDDEN, "blocked"),
        (Outcome.FORBIDDEN, 'odd "code" \u2028'),
    ]
    for _ in range(2):
        for outcome, reason in cases:
            line = formatter.decision_line(Decision(outcome, reason, "d"), None, 1.0, None, [])
            fields = json.loads(line)
            assert (fields["message"], fields["decision"], fields["reason_code"]) == (
                f"{outcome.value} {reason}",
                outcome.value,
                reason,
            )
    for index in range(5000):
        formatter.decision_line(Decision(Outcome.ERROR, f"code_{index}", "d"), None, 1.0, None, [])
    assert len(formatter._verdicts) <= 1024


def test_another_handler_gets_records_with_the_fields(configure: Configure) -> None:
    stderr = configure("info")
    other = Records()
    logging.getLogger().addHandler(other)
    log_decision(*DECISIONS["allow"], 0.001)
    (record,) = other.records
    assert record.name == "ext_authz.decision" and record.levelno == logging.INFO
    assert getattr(record, "fields")["subject"] == "alice"  # noqa: B009
    assert len(decisions(stderr)) == 1


def test_log_level_warning_writes_no_decision_lines(configure: Configure) -> None:
    stderr = configure("warning")
    log_decision(*DECISIONS["allow"], 0.001)
    logging.getLogger("ext_authz.test").warning("still written")
    assert [line["message"] for line in written(stderr)] == ["still written"]


def test_the_decision_logger_can_be_silenced_or_filtered(configure: Configure) -> None:
    stderr = configure("info")
    decision_logger = logging.getLogger("ext_authz.decision")
    decision_logger.setLevel(logging.WARNING)
    log_decision(*DECISIONS["allow"], 0.001)
    assert decisions(stderr) == []

    decision_logger.setLevel(logging.NOTSET)
    only_denials = logging.Filter()
    only_denials.filter = lambda record: "allow" not in record.getMessage()  # type: ignore[method-assign]
    decision_logger.addFilter(only_denials)
    try:
        log_decision(*DECISIONS["allow"], 0.001)
        log_decision(*DECISIONS["deny, no rule, no roles"], 0.001)
    finally:
        decision_logger.removeFilter(only_denials)
    assert [line["decision_id"] for line in decisions(stderr)] == ["d-2"]


def test_allows_are_sampled_and_denials_always_logged(configure: Configure) -> None:
    stderr = configure("info")
    never = DecisionLog(allow_sample_rate=0.0)
    never.observe(*DECISIONS["allow"], 0.001)
    never.observe(*DECISIONS["deny, no rule, no roles"], 0.001)
    assert [line["decision"] for line in decisions(stderr)] == ["forbidden"]


def test_decision_lines_wait_for_the_batch_but_never_behind_another_line() -> None:
    stream = io.StringIO()
    handler = BatchingHandler(stream, JsonFormatter(), interval=60)
    decision_logger = logging.getLogger("ext_authz.decision")
    other_logger = logging.getLogger("ext_authz.test_batching")
    decision_logger.addHandler(handler)
    other_logger.addHandler(handler)
    decision_logger.propagate = other_logger.propagate = False
    decision_logger.setLevel(logging.INFO)
    try:
        log_decision(*DECISIONS["allow"], 0.001)
        log_decision(*DECISIONS["anonymous 401"], 0.001)
        assert stream.getvalue() == ""  # queued: one write per batch
        other_logger.warning("key set refetch failed")
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert [line["message"] for line in lines] == [
            "allow allowed",
            "unauthenticated missing_credential",
            "key set refetch failed",
        ]
    finally:
        decision_logger.removeHandler(handler)
        other_logger.removeHandler(handler)
        decision_logger.propagate = other_logger.propagate = True
        decision_logger.setLevel(logging.NOTSET)
        handler.close()


def test_the_background_writer_writes_a_batch_after_the_interval() -> None:
    stream = io.StringIO()
    handler = BatchingHandler(stream, JsonFormatter(), interval=0.05)
    try:
        handler.queue('{"n":1}')
        handler.queue('{"n":2}')
        deadline = time.monotonic() + 5
        while not stream.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stream.getvalue() == '{"n":1}\n{"n":2}\n'
        handler.queue('{"n":3}')  # a second batch is scheduled too
        while stream.getvalue().count("\n") < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stream.getvalue().endswith('{"n":3}\n')
    finally:
        handler.close()


def test_logging_shutdown_writes_the_queued_lines() -> None:
    stream = io.StringIO()
    handler = BatchingHandler(stream, JsonFormatter(), interval=60)
    handler.queue('{"n":1}')
    logging.shutdown([weakref.ref(handler)])  # what the logging module runs at exit
    assert stream.getvalue() == '{"n":1}\n'


class Writes(io.StringIO):
    """A stream that keeps each write (what the handler hands to one write(2))."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def test_a_batch_is_written_in_whole_lines_of_at_most_pipe_buf_bytes() -> None:
    """`serve --workers` processes share stderr; a write over PIPE_BUF to a pipe could be split
    by another process's lines."""
    stream = Writes()
    handler = BatchingHandler(stream, JsonFormatter(), interval=60)
    assert PIPE_BUF == 4096
    lines = [json.dumps({"n": n, "pad": "x" * (300 + 37 * n)}) for n in range(40)]
    lines.insert(20, json.dumps({"long": "y" * 5000}))
    for line in lines:
        handler.queue(line)
    handler.close()
    assert stream.getvalue() == "".join(line + "\n" for line in lines)
    assert len(stream.writes) > 10
    for text in stream.writes:
        assert text.endswith("\n")
        assert len(text) <= 4096 or text.count("\n") == 1


def test_each_line_has_the_time_it_was_logged_at_to_the_millisecond(
    configure: Configure, monkeypatch: pytest.MonkeyPatch
) -> None:
    stderr = configure("info")
    for now in (NOW, NOW, NOW + 0.001, NOW + 1, NOW + 60.5):
        monkeypatch.setattr(time, "time", lambda now=now: now)
        log_decision(*DECISIONS["allow"], 0.001)
    assert [line["time"] for line in decisions(stderr)] == [
        "2026-11-29T20:28:05.042Z",
        "2026-11-29T20:28:05.042Z",
        "2026-11-29T20:28:05.043Z",
        "2026-11-29T20:28:06.042Z",
        "2026-11-29T20:29:05.542Z",
    ]
