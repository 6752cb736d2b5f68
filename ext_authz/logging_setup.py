"""Process-wide logging: JSON lines on stderr."""

from __future__ import annotations

import logging
import sys

from ext_authz.decision_log import JsonFormatter

__all__ = ["configure_logging"]


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
