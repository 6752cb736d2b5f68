"""WatchedFile: a value loaded from a file and re-loaded when the file changes.

Polls ``stat`` (inode, size, mtime): simple, and it follows atomic renames and Kubernetes
ConfigMap symlink swaps, which inotify-based watchers can miss. A change that fails to load is
logged with the loader's message (naming the file) and the last good value stays in force.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from ext_authz.errors import ConfigError

__all__ = ["WatchedFile"]

T = TypeVar("T")
log = logging.getLogger(__name__)


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = os.stat(path)  # follows symlinks: a swapped target is a change
    except OSError:
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


class WatchedFile(Generic[T]):
    """Loads ``path`` now (a ConfigError propagates: bad input at start is fatal), then again
    whenever it changes, from ``check()`` or the polling thread ``start()`` runs."""

    def __init__(self, path: Path, load: Callable[[Path], T], interval: float = 1.0) -> None:
        self.path = path
        self._load = load
        self._interval = interval
        self._signature = _signature(path)
        self._value = load(path)
        self.reloads = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def current(self) -> T:
        return self._value

    def check(self) -> bool:
        """Reload if the file changed; True when a new value was loaded."""
        signature = _signature(self.path)
        if signature == self._signature:
            return False
        self._signature = signature
        try:
            value = self._load(self.path)
        except ConfigError as error:
            self.failures += 1
            log.error("reload failed, keeping the last good version: %s", error)
            return False
        self._value = value  # one reference swap: readers see the old or the new value whole
        self.reloads += 1
        log.info("reloaded %s", self.path)
        return True

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._poll, name=f"watch:{self.path.name}", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _poll(self) -> None:
        while not self._stop.wait(self._interval):
            self.check()
