"""Sliding-window detectors with bounded memory.

Each detector is fed one occurrence at a time with the current time (any monotonic clock) and
answers a Crossing when its threshold is crossed. It then stays quiet for that key for one window
(occurrences still count), so a flood raises one crossing per window, not one per request.

Memory is bounded whatever the traffic: at most ``max_keys`` keys per detector (the least recently
updated is forgotten), and per key at most ``threshold`` timestamps, ``threshold + 1`` distinct
values (kept as hashes, so a long path costs no more than a short one) and ``SAMPLE_SIZE``
request ids. The deny spike keeps a fixed number of time buckets.

Thresholds: ``CountDetector`` fires when ``threshold`` occurrences fall within the window;
``DistinctDetector`` when more than ``threshold`` distinct values do (``threshold`` is how many
a key may legitimately have, e.g. addresses one user works from).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from ext_authz.settings import SpikeSettings, ThresholdSettings

__all__ = ["CountDetector", "Crossing", "DistinctDetector", "SAMPLE_SIZE", "SpikeDetector"]

SAMPLE_SIZE = 5  # request ids kept per key, for the event
_MAX_REQUEST_ID = 128  # characters kept of one request id (they come from the client's side)
_SPIKE_BUCKETS = 10  # buckets per spike window
_BASELINE_BUCKETS = 100  # at most this many buckets over the baseline


@dataclass(frozen=True, slots=True)
class Crossing:
    """A threshold crossed: the key, how many, and when (detector clock)."""

    key: str
    count: int
    window: float
    first_seen: float
    last_seen: float
    request_ids: tuple[str, ...]
    baseline_rate: float | None = None


class _Track:
    """What every detector keeps per key: a sample of request ids and the end of its quiet."""

    __slots__ = ("ids", "quiet_until")

    def __init__(self) -> None:
        self.ids: deque[str] = deque(maxlen=SAMPLE_SIZE)
        self.quiet_until = -math.inf

    def note(self, request_id: str, now: float) -> bool:
        """Keep ``request_id`` for the sample; True while the track is quiet."""
        self.ids.append(request_id[:_MAX_REQUEST_ID])
        return now < self.quiet_until

    def fire(
        self,
        key: str,
        count: int,
        window: float,
        first: float,
        now: float,
        baseline_rate: float | None = None,
    ) -> Crossing:
        """The Crossing; the sample starts again and the track is quiet for one window."""
        crossing = Crossing(key, count, window, first, now, tuple(self.ids), baseline_rate)
        self.ids.clear()
        self.quiet_until = now + window
        return crossing


class _Count(_Track):
    __slots__ = ("times",)

    def __init__(self, threshold: int) -> None:
        super().__init__()
        self.times: deque[float] = deque(maxlen=threshold)  # the latest ``threshold`` only


class _Distinct(_Track):
    __slots__ = ("seen",)

    def __init__(self) -> None:
        super().__init__()
        self.seen: OrderedDict[int, float] = OrderedDict()  # hash -> last seen, oldest first


TrackT = TypeVar("TrackT", bound=_Track)


class _KeyedDetector(Generic[TrackT]):
    """Per-key tracks, at most ``max_keys`` of them: the least recently updated is evicted."""

    def __init__(self, settings: ThresholdSettings, max_keys: int, new: Callable[[], TrackT]):
        self.window = settings.window
        self._threshold = settings.threshold
        self._max_keys = max_keys
        self._new = new
        self._tracks: OrderedDict[str, TrackT] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._tracks)

    def _track(self, key: str) -> TrackT:
        track = self._tracks.get(key)
        if track is None:
            track = self._tracks[key] = self._new()
            if len(self._tracks) > self._max_keys:
                self._tracks.popitem(last=False)
        else:
            self._tracks.move_to_end(key)
        return track


class CountDetector(_KeyedDetector[_Count]):
    """Fires when ``threshold`` occurrences for one key fall within ``window`` seconds."""

    def __init__(self, settings: ThresholdSettings, max_keys: int) -> None:
        super().__init__(settings, max_keys, lambda: _Count(settings.threshold))

    def record(self, key: str, now: float, request_id: str) -> Crossing | None:
        with self._lock:
            track = self._track(key)
            track.times.append(now)
            quiet = track.note(request_id, now)
            oldest = track.times[0]
            if quiet or len(track.times) < self._threshold or oldest <= now - self.window:
                return None
            count = len(track.times)
            track.times.clear()
            return track.fire(key, count, self.window, oldest, now)


class DistinctDetector(_KeyedDetector[_Distinct]):
    """Fires when one key has more than ``threshold`` distinct values within ``window`` seconds."""

    def __init__(self, settings: ThresholdSettings, max_keys: int) -> None:
        super().__init__(settings, max_keys, _Distinct)

    def record(self, key: str, value: str, now: float, request_id: str) -> Crossing | None:
        digest = hash(value)
        horizon = now - self.window
        with self._lock:
            track = self._track(key)
            seen = track.seen
            seen[digest] = now
            seen.move_to_end(digest)  # ordered by last sighting, oldest first
            while seen[next(iter(seen))] <= horizon:
                seen.popitem(last=False)
            if len(seen) > self._threshold + 1:  # while quiet: more would add nothing
                seen.popitem(last=False)
            quiet = track.note(request_id, now)
            if quiet or len(seen) <= self._threshold:
                return None
            count, first = len(seen), next(iter(seen.values()))
            seen.clear()
            return track.fire(key, count, self.window, first, now)


class _Buckets:
    """Occurrences counted per ``width``-second bucket, kept for ``span`` seconds."""

    def __init__(self, width: float, span: float) -> None:
        self.width = width
        self._keep = math.ceil(span / width) + 1
        self._counts: deque[list[int]] = deque()  # [bucket index, count], oldest first
        self._sum = 0  # of every count kept: a total is this minus the few buckets outside

    def add(self, now: float) -> None:
        index = math.floor(now / self.width)
        counts = self._counts
        if counts and counts[-1][0] == index:
            counts[-1][1] += 1
        else:
            counts.append([index, 1])
        self._sum += 1
        while counts[0][0] <= index - self._keep:
            self._sum -= counts.popleft()[1]

    def total(self, start: float, end: float = math.inf) -> int:
        """Occurrences in the buckets that lie wholly within [start, end)."""
        first = math.ceil(start / self.width)
        counts = self._counts
        total = self._sum
        # Buckets are in index order, so those outside are a few at the front (before start)
        # and a few at the back (past end): subtracted instead of summing the ~100 inside.
        low, high = 0, len(counts)
        while low < high and counts[low][0] < first:
            total -= counts[low][1]
            low += 1
        while high > low and (counts[high - 1][0] + 1) * self.width > end:
            total -= counts[high - 1][1]
            high -= 1
        return total

    def covered(self, start: float, end: float) -> float:
        """The seconds the whole buckets within [start, end) span."""
        whole = math.floor(end / self.width) - math.ceil(start / self.width)
        return max(whole, 0) * self.width


class SpikeDetector:
    """Fires when the denials of the last ``window`` seconds are at least ``min_denials`` and
    their rate is above ``factor`` times the rate over the ``baseline`` seconds before the
    window (since the detector started, when that is more recent). Until the detector has seen
    one window's worth of baseline, there is nothing to compare with and it stays quiet: a
    restart amid steady denials is not a spike."""

    def __init__(self, settings: SpikeSettings, now: float) -> None:
        self.window = settings.window
        self._settings = settings
        width = settings.window / _SPIKE_BUCKETS
        self._recent = _Buckets(width, settings.window)
        history_width = max(width, settings.baseline / _BASELINE_BUCKETS)
        self._history = _Buckets(history_width, settings.window + settings.baseline)
        self._started = now
        self._track = _Track()
        self._lock = threading.Lock()

    def record(self, now: float, request_id: str) -> Crossing | None:
        settings = self._settings
        with self._lock:
            self._recent.add(now)
            self._history.add(now)
            if self._track.note(request_id, now):
                return None
            count = self._recent.total(now - self.window)
            if count < settings.min_denials:
                return None
            window_start = now - self.window
            baseline_start = max(window_start - settings.baseline, self._started)
            before = self._history.total(baseline_start, window_start)
            seconds = self._history.covered(baseline_start, window_start)
            if seconds < self.window:
                return None
            baseline_rate = before / seconds
            if count / self.window <= settings.factor * baseline_rate:
                return None
            return self._track.fire("*", count, self.window, window_start, now, baseline_rate)
