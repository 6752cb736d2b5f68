"""WatchedFile: a value loaded from a file and re-loaded when the file changes.

Polls ``stat`` (inode, size, mtime): simple, and it follows atomic renames and Kubernetes
ConfigMap symlink swaps, which inotify-based watchers can miss. A change that fails to load is
logged with the loader's message (naming the file) and the last good value stays in force; so
does one whose loader fails unexpectedly (a bug), which must not end reloading either.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Generic, TypeVar

from ext_authz.errors import ConfigError

__all__ = ["WatchedFile", "file_signature"]

T = TypeVar("T")
log = logging.getLogger(__name__)


def file_signature(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime) of ``path``, or None when it cannot be stat'ed (e.g. it is gone)."""
    try:
        stat = os.stat(path)  # follows symlinks: a swapped target is a change
    except OSError:
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


class WatchedFile(Generic[T]):
    """Loads ``path`` now (a ConfigError propagates: bad input at start is fatal), then again
    whenever it changes, or one of the files ``also`` names (e.g. the model beside a policy):
    from ``check()`` or the polling thread ``start()`` runs; ``reload()`` loads unconditionally."""

    def __init__(
        self,
        path: Path,
        load: Callable[[Path], T],
        interval: float = 1.0,
        also: Sequence[Path] = (),
    ) -> None:
        self.path = path
        self._paths = (path, *also)
        self._load = load
        self._interval = interval
        self._signatures = self._read_signatures()
        self._value = load(path)
        self.reloads = 0
        self.failures = 0
        self._load_lock = threading.Lock()  # one load at a time (the thread and a SIGHUP)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def current(self) -> T:
        return self._value

    def check(self) -> bool:
        """Reload if a watched file changed; True when a new value was loaded."""
        if self._read_signatures() == self._signatures:
            return False
        return self.reload()

    def reload(self) -> bool:
        """Load now whether or not a file changed (e.g. on SIGHUP); True when a new value was
        loaded. A failure is logged and counted, and the last good value stays in force."""
        with self._load_lock:
            # Taken before loading, so a write during the load is seen by the next check.
            self._signatures = self._read_signatures()
            try:
                value = self._load(self.path)
            except Exception as error:
                self.failures += 1
                if isinstance(error, ConfigError):  # its message names the file and the fault
                    log.error("reload failed, keeping the last good version: %s", error)
                else:
                    log.error(
                        "%s: reload failed with an unexpected %s, keeping the last good version",
                        self.path,
                        type(error).__name__,
                        exc_info=error,
                    )
                return False
            self._value = value  # one reference swap: readers see the old or the new value whole
            self.reloads += 1
        log.info("reloaded %s", self.path)
        return True

    def _read_signatures(self) -> tuple[tuple[int, int, int] | None, ...]:
        return tuple(file_signature(path) for path in self._paths)

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()  # a stop() before must not end the new thread at once
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
