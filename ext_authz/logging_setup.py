"""Process-wide logging: JSON lines on stderr, decision lines written in batches."""

from __future__ import annotations

import logging
import sys

from ext_authz.decision_log import BatchingHandler, JsonFormatter

__all__ = ["configure_logging"]


def configure_logging(level: str, worker: int | None = None) -> None:
    """JSON lines on stderr at ``level``; ``worker`` (the `serve --workers` index) on each."""
    # The JSON lines carry none of these; without them each record is cheaper to make.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [BatchingHandler(sys.stderr, JsonFormatter(worker))]
    root.setLevel(level.upper())
