"""Decision observers: what happens after every decision (the decision log, metrics, security
detectors). They run after the response is built and can never change or delay it by failing."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from ext_authz.models import AuthRequest, Decision

__all__ = ["DecisionObserver", "notify"]

log = logging.getLogger(__name__)


class DecisionObserver(Protocol):
    def observe(self, decision: Decision, request: AuthRequest | None, latency_s: float) -> None:
        """Record one decision; ``request`` is None when the request could not be parsed."""
        ...


def notify(
    observers: Sequence[DecisionObserver],
    decision: Decision,
    request: AuthRequest | None,
    latency_s: float,
) -> None:
    for observer in observers:
        try:
            observer.observe(decision, request, latency_s)
        except Exception:  # an observer bug must not turn into a failed check
            log.exception("decision observer %s failed", type(observer).__name__)
