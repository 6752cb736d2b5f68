"""Process-wide logging: JSON lines on stderr."""

from __future__ import annotations

import logging
import sys

from ext_authz.decision_log import JsonFormatter

__all__ = ["configure_logging"]


class _WorkerField(logging.Filter):
    """Adds ``worker`` (the `serve --workers` index) to every line a worker logs."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self._index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.fields = {**getattr(record, "fields", {}), "worker": self._index}
        return True


def configure_logging(level: str, worker: int | None = None) -> None:
    # The JSON lines carry none of these; without them each record is cheaper to make.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    if worker is not None:
        handler.addFilter(_WorkerField(worker))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
