"""WebhookSink: security events POSTed as JSON from a worker thread, never from a check.

``submit`` only puts the event on a bounded queue: when the queue is full the event is dropped and
counted. The worker POSTs each event (https only; plain http only to loopback; no redirects),
retrying failures with exponential backoff. ``stop`` lets it drain the queue for a short while
(one attempt per event), then drops what is left. The webhook URL is never logged: such URLs
often carry a secret.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time

from ext_authz.errors import describe_error
from ext_authz.identity.http import post_form
from ext_authz.settings import WebhookSettings
from ext_authz.signals.events import SecurityEvent

__all__ = ["DRAIN_S", "WebhookSink"]

log = logging.getLogger(__name__)

DRAIN_S = 2.0  # how long stop() lets the queue drain
_POLL_S = 0.2
_LOG_EVERY = 100  # dropped events between two warnings
_HEADERS = {"Content-Type": "application/json", "User-Agent": "ext-authz"}


class WebhookSink:
    """Delivers events to ``settings.url``; ``backoff`` is the first retry delay (doubling)."""

    def __init__(self, settings: WebhookSettings, backoff: float = 0.5) -> None:
        self._settings = settings
        self._backoff = backoff
        self._queue: queue.Queue[bytes] = queue.Queue(settings.queue_size)
        self._stopping = threading.Event()
        self._drain_until = 0.0
        self._thread: threading.Thread | None = None
        self._counts_lock = threading.Lock()
        self.delivered = 0
        self.failed = 0  # given up on after every retry
        self.dropped = 0  # the queue was full, or stop() ran out of time

    def submit(self, event: SecurityEvent) -> bool:
        """Queue ``event`` without waiting; False when the queue is full and it was dropped."""
        try:
            self._queue.put_nowait(json.dumps(event.as_dict()).encode())
        except queue.Full:
            self._drop(1)
            return False
        return True

    def start(self) -> None:
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="security-webhook", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._drain_until = time.monotonic() + DRAIN_S
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(DRAIN_S + self._settings.timeout + _POLL_S)
            self._thread = None

    def _run(self) -> None:
        while True:
            try:
                body = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                if self._stopping.is_set():
                    return
                continue
            if self._stopping.is_set() and time.monotonic() > self._drain_until:
                self._drop(1 + self._discard_queued())
                return
            self._deliver(body)

    def _deliver(self, body: bytes) -> None:
        delay = self._backoff
        attempts = 1 + self._settings.retries
        for attempt in range(1, attempts + 1):
            if self._send(body, attempt):
                with self._counts_lock:
                    self.delivered += 1
                return
            # Once stopping, wait() returns at once: one attempt per event while draining.
            if attempt == attempts or self._stopping.wait(delay):
                break
            delay *= 2
        with self._counts_lock:
            self.failed += 1
        log.error("security webhook: an event was not delivered after %d attempt(s)", attempt)

    def _send(self, body: bytes, attempt: int) -> bool:
        settings = self._settings
        try:
            status, _ = post_form(settings.url, body, _HEADERS, settings.timeout)
        except OSError as error:
            why = describe_error(error).replace(settings.url, "the webhook URL")
            log.warning("security webhook: attempt %d failed: %s", attempt, why)
            return False
        if not 200 <= status < 300:  # 202 Accepted and 204 No Content are deliveries too
            log.warning("security webhook: attempt %d answered HTTP %d", attempt, status)
            return False
        return True

    def _discard_queued(self) -> int:
        discarded = 0
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return discarded
            discarded += 1

    def _drop(self, count: int) -> None:
        with self._counts_lock:
            before = self.dropped
            self.dropped += count
            dropped = self.dropped
        if before == 0 or before // _LOG_EVERY != dropped // _LOG_EVERY:  # not one line per drop
            log.warning("security webhook: queue full or stopping; %d event(s) dropped", dropped)
