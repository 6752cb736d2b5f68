"""Decision log: one JSON line per decision, with no credential and no query values in it."""

from __future__ import annotations

import json
import logging
import random
import time

from opentelemetry import trace

from ext_authz.models import AuthRequest, Decision, Outcome

__all__ = ["DecisionLog", "JsonFormatter", "log_decision"]

log = logging.getLogger("ext_authz.decision")


class JsonFormatter(logging.Formatter):
    """Formats every record as one JSON object; structured fields come from ``extra={"fields"}``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"), default=str)


class DecisionLog:
    """One JSON line per decision (a DecisionObserver): denials always; allows sampled."""

    def __init__(self, allow_sample_rate: float = 1.0) -> None:
        self._rate = allow_sample_rate
        self._random = random.Random()  # noqa: S311 - sampling, not security

    def observe(self, decision: Decision, request: AuthRequest | None, latency_s: float) -> None:
        if decision.outcome is Outcome.ALLOW and self._random.random() >= self._rate:
            return
        log_decision(decision, request, latency_s)


def log_decision(decision: Decision, request: AuthRequest | None, latency_s: float) -> None:
    """Log one decision; ``trace_id`` is the current span's (the Check's), else null."""
    if not log.isEnabledFor(logging.INFO):
        return
    span_context = trace.get_current_span().get_span_context()
    fields: dict[str, object] = {
        "event": "decision",
        "decision_id": decision.decision_id,
        "decision": decision.outcome.value,
        "reason_code": decision.reason_code,
        "subject": decision.identity.subject,
        "roles": list(decision.identity.roles),
        "matched_rule": decision.matched_rule,
        "latency_ms": round(latency_s * 1000, 3),
        "request_id": decision.request_id,
        "trace_id": trace.format_trace_id(span_context.trace_id) if span_context.is_valid else None,
    }
    if request is not None:
        fields.update(
            method=request.method,
            path=request.path,
            # Names only: query values can carry tokens or personal data.
            query_names=sorted({name for name, _ in request.query}),
            source_address=request.source_address,
        )
    # Made and handled directly: Logger.info would also walk the stack for the caller's file and
    # line (findCaller), which no formatter here prints, on every Check.
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
