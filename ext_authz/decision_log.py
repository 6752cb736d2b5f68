"""Decision log: one JSON line per decision, with no credential and no query values in it.

A decision is an INFO record of the ``ext_authz.decision`` logger, so the logging configuration
applies: levels, silencing that logger, any handler or filter someone adds, pytest's caplog.
When the record would reach nothing but the ``BatchingHandler`` that ``serve`` installs, the same
line is built straight from the decision and queued: making a LogRecord, dispatching it through
the loggers and the generic JSON encoder cost more than the line itself.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import random
import threading
import time
from json.encoder import encode_basestring_ascii
from typing import TextIO

from opentelemetry import trace

from ext_authz.models import AuthRequest, Decision, Outcome

__all__ = [
    "DECISION_LOGGER",
    "FLUSH_INTERVAL_S",
    "PIPE_BUF",
    "BatchingHandler",
    "DecisionLog",
    "JsonFormatter",
    "log_decision",
]

DECISION_LOGGER = "ext_authz.decision"
# How long a decision line may wait in memory before it is written.
FLUSH_INTERVAL_S = 0.1
# Bytes per write: whole lines, at most PIPE_BUF (Linux), so no other process writing to the same
# pipe (`serve --workers` share stderr) can split a line. Measured: larger writes (one per batch)
# made checks no cheaper; each write is one system call per ~8 lines instead of one per line.
PIPE_BUF = 4096

log = logging.getLogger(DECISION_LOGGER)
_INFO = logging.INFO

# One encoder for every line: json.dumps with options builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)
_quote = encode_basestring_ascii  # how that encoder writes a str
_VERDICTS_KEPT = 1024  # (outcome, reason code) pairs; the code has a few dozen codes
_ALLOW = Outcome.ALLOW  # a local name: looking a member up on its Enum class is slow


def _latency_ms(latency_s: float) -> str:
    """How the JSON encoder writes ``round(latency_s * 1000, 3)`` (its repr), made from the same
    correctly rounded digits without parsing them back into a float: in half the time, and the
    same text for any latency under a century (a test compares the two)."""
    text = f"{latency_s * 1000:.3f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


class JsonFormatter(logging.Formatter):
    """Formats every record as one JSON object; structured fields come from ``extra={"fields"}``,
    then ``worker`` (the `serve --workers` index) when given."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self._worker = worker
        self._worker_json = "" if worker is None else f',"worker":{worker}'
        self._second: tuple[int, str] = (-1, "")
        self._start: tuple[int, str] = (-1, "")
        self._verdicts: dict[tuple[Outcome, str], tuple[str, str]] = {}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": self._time(record.created, int(record.msecs)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if self._worker is not None:
            entry["worker"] = self._worker
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _ENCODER.encode(entry)

    def decision_line(
        self,
        decision: Decision,
        request: AuthRequest | None,
        latency_s: float,
        trace_id: str | None,
        query_names: list[str],
    ) -> str:
        """What ``format`` makes of the record log_decision makes of these, built directly (a
        test compares the two)."""
        identity = decision.identity
        matched_rule = decision.matched_rule
        request_json = (
            ""
            if request is None
            else f',"method":{_quote(request.method)},"path":{_quote(request.path)},'
            f'"query_names":[{",".join(map(_quote, query_names))}],'
            f'"source_address":{_quote(request.source_address)}'
        )
        verdict = self._verdicts.get((decision.outcome, decision.reason_code))
        if verdict is None:
            verdict = self._verdict(decision.outcome, decision.reason_code)
        return (
            f"{self._decision_start(time.time())}{verdict[0]}{_quote(decision.decision_id)}"
            f"{verdict[1]}{_quote(identity.subject)},"
            f'"roles":[{",".join(map(_quote, identity.roles))}],'
            f'"matched_rule":{"null" if matched_rule is None else _quote(matched_rule)},'
            f'"latency_ms":{_latency_ms(latency_s)},"request_id":{_quote(decision.request_id)},'
            f'"trace_id":{"null" if trace_id is None else _quote(trace_id)}'
            f"{request_json}{self._worker_json}}}"
        )

    def _verdict(self, outcome: Outcome, reason_code: str) -> tuple[str, str]:
        """The JSON around the decision id that only the outcome and reason code make, made once
        per pair (they are codes: few, and never more than _VERDICTS_KEPT are kept)."""
        value = outcome.value
        verdict = (
            f'{_quote(f"{value} {reason_code}")},"event":"decision","decision_id":',
            f',"decision":{_quote(value)},"reason_code":{_quote(reason_code)},"subject":',
        )
        if len(self._verdicts) < _VERDICTS_KEPT:
            self._verdicts[(outcome, reason_code)] = verdict
        return verdict

    def _decision_start(self, created: float) -> str:
        # The same for every line made in one millisecond, as several are under load.
        second = int(created)
        msecs = int((created - second) * 1000)  # as LogRecord computes msecs
        millisecond = second * 1000 + msecs
        cached = self._start
        if cached[0] != millisecond:
            time_text = self._time(created, msecs)
            start = f'{{"time":"{time_text}","level":"info","logger":"{DECISION_LOGGER}","message":'
            cached = self._start = (millisecond, start)
        return cached[1]

    def _time(self, created: float, msecs: int) -> str:
        # strftime once a second, not once a line; one tuple, so a racing thread reads a pair.
        second = int(created)
        cached = self._second
        if cached[0] != second:
            cached = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
            self._second = cached
        return f"{cached[1]}.{msecs:03d}Z"


class BatchingHandler(logging.Handler):
    """Writes JSON lines to ``stream``: decision lines in batches (a write per line costs more
    than making the line), every other line at once.

    The thread that logs a decision line writes the queued lines when the line would not fit
    in the same ``PIPE_BUF`` write; a background thread writes the rest ``interval`` after the
    first of them. Any other line first writes the decision lines queued before it, so the
    stream keeps the order in which records were logged. ``logging.shutdown``, which the
    logging module runs at interpreter exit (after SIGTERM's drain, a `serve` exit, a worker's
    exit), writes the rest.
    """

    def __init__(
        self,
        stream: TextIO,
        formatter: JsonFormatter,
        interval: float = FLUSH_INTERVAL_S,
    ) -> None:
        super().__init__()
        self.stream = stream
        self.setFormatter(formatter)
        self._interval = interval
        # Appended to without the handler's lock (deque appends are atomic); drained under it.
        self._pending: collections.deque[str] = collections.deque()
        self._size = 0  # of the pending lines, in bytes: an estimate the writes do not rely on
        self._scheduled = False
        self._wake = threading.Event()
        threading.Thread(target=self._write_batches, name="log-writer", daemon=True).start()

    def emit(self, record: logging.LogRecord) -> None:
        # Handler.handle holds the lock here.
        try:
            line = self.format(record)
            if record.name == DECISION_LOGGER:
                self.queue(line)
            else:
                self._write(line)
        except Exception:  # noqa: BLE001 - as StreamHandler: logging must not break the caller
            self.handleError(record)

    def queue(self, line: str) -> None:
        """Write ``line`` with the next batch."""
        size = len(line) + 1  # JSON lines are ASCII: characters are bytes
        if self._size + size > PIPE_BUF:
            self.flush()
        self._pending.append(line)
        self._size += size
        if not self._scheduled:
            # Set after the append and cleared by the writer before it drains: a line is
            # always either drained or sees the flag clear and wakes the writer.
            self._scheduled = True
            self._wake.set()

    def flush(self) -> None:
        self.acquire()
        try:
            self._write()
        finally:
            self.release()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            super().close()

    def _write(self, line: str | None = None) -> None:
        pending = self._pending
        lines = [pending.popleft() for _ in range(len(pending))]
        self._size = 0
        if line is not None:
            lines.append(line)
        start = size = 0
        for end, text in enumerate(lines):
            if size and size + len(text) + 1 > PIPE_BUF:
                self._write_lines(lines[start:end])
                start, size = end, 0
            size += len(text) + 1
        if size:
            self._write_lines(lines[start:])

    def _write_lines(self, lines: list[str]) -> None:
        self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()  # one write(2) per call, even where stderr is not line-buffered

    def _write_batches(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            time.sleep(self._interval)  # let the batch gather
            self._scheduled = False
            # A closed stream loses the batch; the next line written at once reports the error.
            with contextlib.suppress(OSError, ValueError):
                self.flush()


class DecisionLog:
    """One JSON line per decision (a DecisionObserver): denials always; allows sampled."""

    def __init__(self, allow_sample_rate: float = 1.0) -> None:
        self._rate = allow_sample_rate
        self._random = random.Random()  # noqa: S311 - sampling, not security

    def observe(self, decision: Decision, request: AuthRequest | None, latency_s: float) -> None:
        if self._rate < 1 and decision.outcome is _ALLOW and self._random.random() >= self._rate:
            return
        log_decision(decision, request, latency_s)


def log_decision(decision: Decision, request: AuthRequest | None, latency_s: float) -> None:
    """Log one decision; ``trace_id`` is the current span's (the Check's), else null."""
    if not log.isEnabledFor(_INFO):
        return
    span_context = trace.get_current_span().get_span_context()
    # f"{:032x}" is what trace.format_trace_id does, without the call.
    trace_id = f"{span_context.trace_id:032x}" if span_context.is_valid else None
    # Names only: query values can carry tokens or personal data.
    query = request.query if request is not None else ()
    query_names = sorted({name for name, _ in query}) if query else []
    direct = _sole_handler()
    if direct is not None:
        handler, formatter = direct
        handler.queue(formatter.decision_line(decision, request, latency_s, trace_id, query_names))
        return
    latency_ms = round(latency_s * 1000, 3)
    fields: dict[str, object] = {
        "event": "decision",
        "decision_id": decision.decision_id,
        "decision": decision.outcome.value,
        "reason_code": decision.reason_code,
        "subject": decision.identity.subject,
        "roles": list(decision.identity.roles),
        "matched_rule": decision.matched_rule,
        "latency_ms": latency_ms,
        "request_id": decision.request_id,
        "trace_id": trace_id,
    }
    if request is not None:
        fields.update(
            method=request.method,
            path=request.path,
            query_names=query_names,
            source_address=request.source_address,
        )
    # Made and handled directly: Logger.info would also walk the stack for the caller's file and
    # line (findCaller), which no formatter here prints.
    record = log.makeRecord(
        log.name,
        logging.INFO,
        __file__,
        0,
        "%s %s",
        (decision.outcome.value, decision.reason_code),
        None,
        extra={"fields": fields},
    )
    log.handle(record)


def _sole_handler() -> tuple[BatchingHandler, JsonFormatter] | None:
    """The handler a decision record would reach, when nothing else would see or change it: no
    filter, no other handler on the way to the root (pytest's caplog adds one), JSON lines."""
    if log.disabled or log.filters:
        return None
    found = None
    logger: logging.Logger | None = log
    while logger is not None:
        handlers = logger.handlers
        if handlers:  # most loggers on the way have none: no loop over them
            if found is not None or len(handlers) > 1:
                return None
            found = handlers[0]
        logger = logger.parent if logger.propagate else None
    if type(found) is not BatchingHandler or found.filters or found.level > _INFO:
        return None
    formatter = found.formatter
    if type(formatter) is not JsonFormatter:
        return None
    return found, formatter
