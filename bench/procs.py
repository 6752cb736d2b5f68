"""Processes the benchmark starts: spawn, wait until ready, CPU and RSS from /proc, stop.

CPU is read from /proc/PID/stat (user + system ticks) for a process and all its descendants
(``serve --workers N`` runs its workers as children); RSS is sampled during the run and the
peak per process is kept.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, chars: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def spawn(name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None) -> Proc:
    log = log_dir / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(  # the harness's own commands
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    return Proc(name, popen, log)


def wait_until(what: str, ready: Callable[[], bool], proc: Proc, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.popen.returncode}:\n{proc.tail()}")
        try:
            if ready():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} was not ready within {timeout}s; see {proc.log}")


def stop(proc: Proc, timeout: float = 15.0) -> None:
    if proc.popen.poll() is not None:
        return
    proc.popen.send_signal(signal.SIGTERM)
    try:
        proc.popen.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: only what it started
        proc.popen.wait()


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from the 3rd on (state, ppid, ...)


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = _stat(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICKS


def rss_mb(pid: int) -> float:
    fields = _stat(pid)
    return int(fields[21]) * _PAGE_KB / 1024 if fields is not None else 0.0


@dataclass
class Usage:
    """CPU seconds (per process and per tree) and peak RSS of named process trees over a
    measured window."""

    roots: dict[str, int]
    cpu: dict[str, float] = field(default_factory=dict)
    cpu_by_pid: dict[str, dict[int, float]] = field(default_factory=dict)
    peak_rss_mb: dict[str, dict[int, float]] = field(default_factory=dict)
    _start: dict[int, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Usage:
        for root in self.roots.values():
            for pid in descendants(root):
                self._start[pid] = cpu_seconds([pid])
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for name, root in self.roots.items():
            used = {
                pid: round(cpu_seconds([pid]) - self._start.get(pid, 0.0), 2)
                for pid in descendants(root)
            }
            self.cpu_by_pid[name] = used
            self.cpu[name] = round(sum(used.values()), 2)

    def _sample(self) -> None:
        while True:
            for name, root in self.roots.items():
                peaks = self.peak_rss_mb.setdefault(name, {})
                for pid in descendants(root):
                    peaks[pid] = round(max(peaks.get(pid, 0.0), rss_mb(pid)), 1)
            if self._stop.wait(0.5):
                return
