"""LiveView: the live page's numbers, kept in bounded, time-windowed aggregates.

A DecisionObserver: per-second decision and denial counts over the last minute, and the most
denied paths and source addresses over the last five minutes. Those two are Misra-Gries
summaries per 30-second slice (at most ``TOP_CAPACITY`` counters each, amortized O(1) per
decision), so a flood of distinct paths or addresses cannot grow memory: rare values are
dropped, and a value seen more often than 1 in ``TOP_CAPACITY + 1`` denials of its slice is
always kept (its count may be low by at most that share).

Paths are the normalized ones (never a query string); nothing here holds a credential.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ext_authz.models import AuthRequest, Decision, Outcome

__all__ = ["LiveView"]

RATE_WINDOW = 60  # seconds of per-second counts
RATE_AVERAGE = 10  # completed seconds behind the headline decisions per second
TOP_WINDOW = 300  # seconds behind the top denied paths and addresses
TOP_SLICE = 30  # seconds per summary slice
TOP_CAPACITY = 128  # counters per summary slice
TOP_SHOWN = 10
EVENTS_KEPT = 50
MAX_VALUE_CHARS = 200  # longer strings (paths, event fields) are cut to this

_ALLOW = Outcome.ALLOW  # a local name: looking a member up on its Enum class is slow

Scalar = str | int | float | bool | None
Blocks = Callable[[], Sequence[Mapping[str, object]]]


def _cut(text: str) -> str:
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 1] + "…"


def _scalar(value: object) -> Scalar:
    """A JSON-safe value: strings cut to length, non-finite floats and other types as text."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return _cut(str(value))


def _record(fields: Mapping[str, object]) -> dict[str, Scalar]:
    return {_cut(str(key)): _scalar(value) for key, value in fields.items()}


class _Summary:
    """Misra-Gries heavy hitters: at most ``capacity`` counters."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, key: str) -> None:
        counts = self.counts
        if key in counts:
            counts[key] += 1
        elif len(counts) < TOP_CAPACITY:
            counts[key] = 1
        else:
            # Decrement every counter (and drop the zeros) instead of adding the key: at most
            # one such O(capacity) step per capacity increments before it.
            self.counts = {k: c - 1 for k, c in counts.items() if c > 1}


class _Slice:
    __slots__ = ("addresses", "index", "paths")

    def __init__(self, index: int) -> None:
        self.index = index
        self.paths = _Summary()
        self.addresses = _Summary()


class LiveView:
    """What the admin page shows; ``snapshot()`` returns it as a JSON-ready dict.

    ``blocks`` returns the current blocks as ``{key, kind, expires_in}`` mappings;
    ``policy_version`` the live policy's version. ``clock`` is wall-clock seconds.
    """

    def __init__(
        self,
        *,
        blocks: Blocks | None = None,
        policy_version: Callable[[], int] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._blocks = blocks
        self._policy_version = policy_version
        self._clock = clock
        self._lock = threading.Lock()
        # Per-second ring: slot second % RATE_WINDOW holds that second's counts.
        self._seconds = [-1] * RATE_WINDOW
        self._totals = [0] * RATE_WINDOW
        self._denied = [0] * RATE_WINDOW
        self._slices: deque[_Slice] = deque()
        self._events: deque[dict[str, Scalar]] = deque(maxlen=EVENTS_KEPT)

    def observe(self, decision: Decision, request: AuthRequest | None, latency_s: float) -> None:
        now = self._clock()
        second = int(now)
        slot = second % RATE_WINDOW
        with self._lock:
            if self._seconds[slot] != second:
                self._seconds[slot] = second
                self._totals[slot] = 0
                self._denied[slot] = 0
            self._totals[slot] += 1
            if decision.outcome is _ALLOW:
                return
            self._denied[slot] += 1
            if request is None:  # it could not be parsed: no path or address to count
                return
            current = self._current_slice(int(now // TOP_SLICE))
            current.paths.add(_cut(request.path.partition("?")[0]))
            if request.source_address:
                current.addresses.add(_cut(request.source_address))

    def _current_slice(self, index: int) -> _Slice:
        slices = self._slices
        if not slices or slices[-1].index != index:
            slices.append(_Slice(index))
        oldest = index - TOP_WINDOW // TOP_SLICE
        while slices[0].index <= oldest:
            slices.popleft()
        return slices[-1]

    def record_event(self, event: Mapping[str, object]) -> None:
        """Keep a security event for the page (the last ``EVENTS_KEPT``); values are kept as
        JSON scalars, strings cut to ``MAX_VALUE_CHARS``. Adds ``time`` if it has none."""
        record = _record(event)
        record.setdefault("time", self._clock())
        with self._lock:
            self._events.append(record)

    def snapshot(self) -> dict[str, Any]:
        now = self._clock()
        second = int(now)
        with self._lock:
            rates = {
                s: (total, denied)
                for s, total, denied in zip(self._seconds, self._totals, self._denied, strict=True)
                if s > second - RATE_WINDOW
            }
            oldest = int(now // TOP_SLICE) - TOP_WINDOW // TOP_SLICE
            summaries = [
                (dict(s.paths.counts), dict(s.addresses.counts))
                for s in self._slices
                if s.index > oldest
            ]
            events = list(reversed(self._events))
        per_second = [
            {"t": s, "total": total, "denied": denied}
            for s in range(second - RATE_WINDOW + 1, second + 1)
            for total, denied in (rates.get(s, (0, 0)),)
        ]
        total = sum(point["total"] for point in per_second)
        denied = sum(point["denied"] for point in per_second)
        recent = per_second[-RATE_AVERAGE - 1 : -1]  # completed seconds only
        return {
            "time": now,
            "policy_version": self._policy_version() if self._policy_version else None,
            "window_seconds": RATE_WINDOW,
            "per_second": per_second,
            "decisions_per_second": sum(point["total"] for point in recent) / RATE_AVERAGE,
            "decisions": total,
            "denied": denied,
            "deny_ratio": denied / total if total else None,
            "top_window_seconds": TOP_WINDOW,
            "top_denied_paths": _top(paths for paths, _ in summaries),
            "top_denied_addresses": _top(addresses for _, addresses in summaries),
            "events": events,
            "blocks": [_record(block) for block in self._blocks()] if self._blocks else [],
        }


def _top(summaries: Iterable[dict[str, int]]) -> list[dict[str, Scalar]]:
    merged: Counter[str] = Counter()
    for counts in summaries:
        merged.update(counts)
    ranked = sorted(merged.items(), key=lambda item: (-item[1], item[0]))[:TOP_SHOWN]
    return [{"key": key, "count": count} for key, count in ranked]
