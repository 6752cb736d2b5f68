"""`serve --workers N`: N server processes sharing the gRPC port (SO_REUSEPORT), one supervisor.

One Python process runs Check on one core at a time (the GIL); N processes use N cores. Each
worker is a complete `ext-authz serve` (its own runtime, background reloads and health), started
as ``python -m ext_authz serve --config FILE --worker-index I``; the kernel hands each new
connection to one of them. The supervisor:

- forwards SIGTERM/SIGINT (each worker drains for ``grace_period``) and SIGHUP (reload);
- restarts a worker that dies, like gunicorn, and gives up (stops the rest, exits 1) when
  workers keep dying (``MAX_RESTARTS`` within ``RESTART_WINDOW_S``): then the orchestrator sees
  the failure and restarts the whole service;
- exits 2 when a worker exits 2 (bad configuration found at start, e.g. an invalid policy):
  restarting it could not help.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ext_authz.settings import Settings

__all__ = ["MAX_RESTARTS", "RESTART_WINDOW_S", "die_with_parent", "run_workers"]

log = logging.getLogger(__name__)

MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
EXIT_CONFIG = 2
_POLL_S = 0.2
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None] | None:
    """A pre-exec hook (Linux) so a child gets SIGTERM if its parent is killed."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork: the hook only calls

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return hook


class _Supervisor:
    def __init__(self, config: Path, count: int) -> None:
        self._config = config
        self._workers: list[subprocess.Popen[bytes]] = [self._spawn(i) for i in range(count)]
        self._restarts: list[float] = []

    def _spawn(self, index: int) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "ext_authz", "serve", "--config", str(self._config)]
        worker = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            [*argv, "--worker-index", str(index)], preexec_fn=die_with_parent()
        )
        log.info("worker %d started (pid %d)", index, worker.pid)
        return worker

    def signal_all(self, signum: int) -> None:
        for worker in self._workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    def check(self) -> int | None:
        """Restart dead workers; an exit status for the supervisor when it must give up."""
        for index, worker in enumerate(self._workers):
            status = worker.poll()
            if status is None:
                continue
            if status == EXIT_CONFIG:
                log.error("worker %d exited with status 2 (configuration); stopping", index)
                return EXIT_CONFIG
            now = time.monotonic()
            self._restarts = [t for t in self._restarts if now - t < RESTART_WINDOW_S]
            if len(self._restarts) >= MAX_RESTARTS:
                log.error(
                    "worker %d exited with status %s; %d restarts within %ss, giving up",
                    index,
                    status,
                    len(self._restarts),
                    RESTART_WINDOW_S,
                )
                return 1
            self._restarts.append(now)
            log.error(
                "worker %d (pid %d) exited with status %s; restarting", index, worker.pid, status
            )
            self._workers[index] = self._spawn(index)
        return None

    def stop(self, timeout: float) -> bool:
        """SIGTERM every worker; True when all stopped cleanly within ``timeout``."""
        self.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        clean = True
        for worker in self._workers:
            try:
                clean &= worker.wait(max(0.0, deadline - time.monotonic())) == 0
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
                clean = False
        return clean


def run_workers(settings: Settings, config: Path, count: int) -> int:
    """Run ``count`` workers until SIGTERM/SIGINT; the exit status (see the module docstring)."""
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    supervisor = _Supervisor(config, count)
    signal.signal(signal.SIGHUP, lambda *_: supervisor.signal_all(signal.SIGHUP))
    log.info("serving ext_authz on %s with %d worker processes", settings.listen, count)
    status = None
    while status is None and not stopping.wait(_POLL_S):
        status = supervisor.check()
    # Workers drain for grace_period each, in parallel; a little more for their start-up.
    clean = supervisor.stop(settings.grace_period + 5)
    log.info("stopped")
    if status is not None:
        return status
    return 0 if clean else 1
