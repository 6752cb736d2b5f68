"""watch.py: a file-backed value that reloads on change and keeps the last good value on error."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fakes import wait_for

from ext_authz.errors import ConfigError
from ext_authz.watch import WatchedFile


def load_number(path: Path) -> int:
    """A tiny loader with the loaders' contract: ConfigError naming the file on bad input."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    if not text.strip().isdigit():
        raise ConfigError(f"{path}: expected a number")
    return int(text)


def rewrite(path: Path, text: str) -> None:
    """Rewrite in place (same inode), moving mtime clearly forward: coarse file timestamps must
    not make two writes look alike."""
    before = path.stat().st_mtime_ns
    path.write_text(text, encoding="utf-8")
    later = before + 2_000_000_000
    os.utime(path, ns=(later, later))


def replace(path: Path, text: str) -> None:
    """Write a new file beside it and rename it over ``path`` (a new inode)."""
    temp = path.with_name(path.name + ".new")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)


@pytest.fixture
def number_file(tmp_path: Path) -> Path:
    path = tmp_path / "number.txt"
    path.write_text("1", encoding="utf-8")
    return path


def test_value_is_loaded_at_construction(number_file: Path) -> None:
    watched = WatchedFile(number_file, load_number)
    assert watched.current() == 1
    assert (watched.reloads, watched.failures) == (0, 0)


def test_bad_file_at_construction_raises_the_config_error(tmp_path: Path) -> None:
    path = tmp_path / "number.txt"
    path.write_text("one", encoding="utf-8")
    with pytest.raises(ConfigError, match=str(path)):
        WatchedFile(path, load_number)


def test_missing_file_at_construction_raises_the_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        WatchedFile(tmp_path / "absent.txt", load_number)


class CountingLoader:
    """load_number, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, path: Path) -> int:
        self.calls += 1
        return load_number(path)


def test_unchanged_file_is_not_reloaded(number_file: Path) -> None:
    load = CountingLoader()
    watched = WatchedFile(number_file, load)
    assert watched.check() is False
    assert watched.check() is False
    assert load.calls == 1


def test_changed_file_is_reloaded(number_file: Path) -> None:
    watched = WatchedFile(number_file, load_number)
    rewrite(number_file, "2")  # same size: only the mtime tells
    assert watched.check() is True
    assert watched.current() == 2
    assert watched.reloads == 1
    assert watched.check() is False


def test_bad_change_keeps_the_last_good_value_and_logs_the_file(
    number_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    watched = WatchedFile(number_file, load_number)
    with caplog.at_level(logging.ERROR, logger="ext_authz.watch"):
        rewrite(number_file, "two")
        assert watched.check() is False
    assert watched.current() == 1
    assert watched.failures == 1
    assert str(number_file) in caplog.text
    assert "last good" in caplog.text


def test_fixed_file_after_a_bad_change_is_loaded(number_file: Path) -> None:
    watched = WatchedFile(number_file, load_number)
    rewrite(number_file, "two")
    watched.check()
    rewrite(number_file, "3")
    assert watched.check() is True
    assert watched.current() == 3


def test_bad_change_is_not_retried_until_the_file_changes_again(number_file: Path) -> None:
    load = CountingLoader()
    watched = WatchedFile(number_file, load)
    rewrite(number_file, "two")
    watched.check()
    watched.check()
    assert load.calls == 2  # construction, and the one failed reload
    assert watched.failures == 1


def test_file_replaced_via_rename_is_picked_up(number_file: Path) -> None:
    watched = WatchedFile(number_file, load_number)
    stat = number_file.stat()
    replace(number_file, "5")
    # Same size, and even the same mtime: the new inode alone marks the change.
    os.utime(number_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert number_file.stat().st_ino != stat.st_ino
    assert watched.check() is True
    assert watched.current() == 5


def test_swapped_symlink_target_is_picked_up(tmp_path: Path) -> None:
    """Kubernetes ConfigMaps update by swapping a symlink to a new directory."""
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "number.txt").write_text("1", encoding="utf-8")
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "number.txt").write_text("2", encoding="utf-8")
    (tmp_path / "data").symlink_to("v1")
    path = tmp_path / "data" / "number.txt"
    watched = WatchedFile(path, load_number)
    (tmp_path / "data.new").symlink_to("v2")
    os.replace(tmp_path / "data.new", tmp_path / "data")
    assert watched.check() is True
    assert watched.current() == 2


def test_deleted_file_keeps_the_last_good_value_until_it_returns(number_file: Path) -> None:
    watched = WatchedFile(number_file, load_number)
    number_file.unlink()
    assert watched.check() is False
    assert watched.current() == 1
    assert watched.failures == 1
    number_file.write_text("7", encoding="utf-8")
    assert watched.check() is True
    assert watched.current() == 7


def test_change_to_a_file_named_in_also_reloads(number_file: Path, tmp_path: Path) -> None:
    """E.g. a policy reloaded when its model changes: ``load`` reads both."""
    offset = tmp_path / "offset.txt"
    offset.write_text("10", encoding="utf-8")
    watched = WatchedFile(
        number_file, lambda path: load_number(path) + load_number(offset), also=(offset,)
    )
    assert watched.current() == 11
    replace(offset, "20")
    assert watched.check() is True
    assert watched.current() == 21
    assert watched.check() is False


def test_reload_loads_without_a_change_and_keeps_the_last_good_value_on_error(
    number_file: Path,
) -> None:
    load = CountingLoader()
    watched = WatchedFile(number_file, load)
    assert watched.reload() is True
    assert (load.calls, watched.reloads) == (2, 1)
    rewrite(number_file, "two")
    assert watched.reload() is False
    assert (watched.current(), watched.failures) == (1, 1)
    assert watched.check() is False  # reload() took the change in: not tried again


# --- the polling thread -----------------------------------------------------------------------


def watch_threads(path: Path) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"watch:{path.name}"]


@contextlib.contextmanager
def polling(path: Path, load: Callable[[Path], int] = load_number) -> Iterator[WatchedFile[int]]:
    """A WatchedFile whose thread polls every 10 ms, stopped on the way out."""
    watched = WatchedFile(path, load, interval=0.01)
    watched.start()
    try:
        yield watched
    finally:
        watched.stop()


def test_polling_thread_reloads_a_changed_file(number_file: Path) -> None:
    with polling(number_file) as watched:
        replace(number_file, "8")
        assert wait_for(lambda: watched.current() == 8)


def test_stop_ends_the_thread_and_reloading(number_file: Path) -> None:
    watched = WatchedFile(number_file, load_number, interval=0.01)
    watched.start()
    assert len(watch_threads(number_file)) == 1
    watched.stop()
    assert watch_threads(number_file) == []
    replace(number_file, "9")
    time.sleep(0.05)
    assert watched.current() == 1


def test_start_twice_runs_one_thread(number_file: Path) -> None:
    with polling(number_file) as watched:
        watched.start()
        assert len(watch_threads(number_file)) == 1


def test_stop_without_start_is_harmless(number_file: Path) -> None:
    WatchedFile(number_file, load_number).stop()


def test_polling_thread_survives_a_bad_change(number_file: Path) -> None:
    with polling(number_file) as watched:
        replace(number_file, "bad")
        assert wait_for(lambda: watched.failures == 1)
        replace(number_file, "4")
        assert wait_for(lambda: watched.current() == 4)


def test_restart_after_stop_polls_again(number_file: Path) -> None:
    with polling(number_file) as watched:
        watched.stop()
        watched.start()
        replace(number_file, "6")
        assert wait_for(lambda: watched.current() == 6, timeout=0.5)


def test_unexpected_loader_error_is_logged_and_polling_goes_on(
    number_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A loader bug (anything but ConfigError) must not end the thread: every later change
    would be missed, e.g. a revocation added to the denylist."""

    def load(path: Path) -> int:
        if path.read_text(encoding="utf-8") == "boom":
            raise KeyError("a loader bug")
        return load_number(path)

    with polling(number_file, load) as watched:
        with caplog.at_level(logging.ERROR, logger="ext_authz.watch"):
            replace(number_file, "boom")
            assert wait_for(lambda: watched.failures == 1)
        assert watched.current() == 1
        assert len(watch_threads(number_file)) == 1
        replace(number_file, "5")
        assert wait_for(lambda: watched.current() == 5)
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert str(number_file) in record.getMessage()
    assert "KeyError" in record.getMessage() and "last good" in record.getMessage()
    assert record.exc_info is not None  # the traceback, to find the bug by
