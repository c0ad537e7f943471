"""The log source on real files in a temporary folder, under inotify (with the safety sweep
pushed out of reach, so only inotify can deliver) and under polling: append, rotation
(rename + a new file), copytruncate, a file or folder created after start, the secrets
globs (no symlinks), catch-up, and close() ending the iteration."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from remediation.settings import Settings
from remediation.settings.access import AccessLog, AccessSettings
from remediation.settings.log_secrets import LogSecretsSettings
from remediation.settings.watch import WatchSettings
from remediation.watch.events import CATCH_UP, Event
from remediation.watch.sources import logs
from remediation.watch.sources.logs import LogSource, Seen, change

WAIT = 10.0
"""How long an expected event may take on a loaded machine (a bound, not a measurement)."""
LINE = b'192.0.2.7 - - [28/Nov/2026:11:00:00 +0000] "POST /login HTTP/1.1" 401 0 "-" "x"\n'


class Running:
    """A source connected and iterated in a thread of its own; its events in a queue."""

    def __init__(self, src: LogSource) -> None:
        self.src = src
        self.got: queue.Queue[Event] = queue.Queue()
        self.seen: list[Event] = []
        src.connect()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for ev in self.src.events():
            self.got.put(ev)

    def next(self, match: Callable[[Event], bool]) -> Event:
        """The first event (from now on, earlier ones kept in seen) that matches."""
        while True:
            try:
                ev = self.got.get(timeout=WAIT)
            except queue.Empty:
                raise AssertionError(f"no matching event; saw {self.seen}") from None
            self.seen.append(ev)
            if match(ev):
                return ev

    def stop(self) -> None:
        self.src.close()
        self.thread.join(WAIT)


@pytest.fixture(params=["inotify", "poll"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "inotify":  # only inotify can deliver within WAIT
        monkeypatch.setattr(logs, "RESWEEP_SECONDS", 3600.0)
    return str(request.param)


@pytest.fixture
def start(mode: str, tmp_path: Path) -> Iterator[Callable[..., Running]]:
    running: list[Running] = []

    def make(access: dict[str, Path] | None = None, files: list[str] | None = None) -> Running:
        settings = Settings(
            access=AccessSettings(
                logs=[AccessLog(name=n, path=str(p)) for n, p in (access or {}).items()]
            ),
            secrets=LogSecretsSettings(
                files=files or [], quarantine_dir=str(tmp_path / "quarantine")
            ),
            watch=WatchSettings(
                log_inotify=mode == "inotify",
                log_poll_seconds=0.05,  # under inotify: only for unwatched folders
            ),
        )
        run = Running(LogSource(settings))
        running.append(run)
        return run

    yield make
    for run in running:
        run.stop()


def append(path: Path, data: bytes = LINE) -> None:
    with path.open("ab") as fh:
        fh.write(data)


def access(kind: str, name: str = "www") -> Callable[[Event], bool]:
    return lambda ev: ev.kind == kind and ev.resource == f"access/{name}"


def test_append_is_grew_for_that_log_with_its_name_as_target(
    start: Callable[..., Running], tmp_path: Path, mode: str
) -> None:
    """A line appended to one of two logs: grew, for that log's check only."""
    www, api = tmp_path / "www.log", tmp_path / "api.log"
    www.write_bytes(LINE)
    api.write_bytes(b"")
    run = start({"www": www, "api": api})
    assert run.src.mode == mode
    append(api)
    ev = run.next(access("grew", "api"))
    assert (ev.source, ev.check, ev.params) == ("logs", "access_log_clients", {"target": "api"})
    assert ev.detail["size"] == len(LINE)
    assert not [e for e in run.seen if e.resource == "access/www"]


def test_rotation_by_rename_and_a_new_file_is_rotated(
    start: Callable[..., Running], tmp_path: Path
) -> None:
    """access.log renamed access.log.1 and a new access.log written: rotated."""
    log = tmp_path / "access.log"
    log.write_bytes(LINE * 3)
    run = start({"www": log})
    log.rename(tmp_path / "access.log.1")
    log.write_bytes(LINE)
    run.next(access("rotated"))
    append(log)
    run.next(access("grew"))


def test_copytruncate_is_truncated_then_growth_again(
    start: Callable[..., Running], tmp_path: Path
) -> None:
    """The same file cut to nothing (logrotate's copytruncate): truncated; then grew."""
    log = tmp_path / "access.log"
    log.write_bytes(LINE * 5)
    run = start({"www": log})
    ino = log.stat().st_ino
    os.truncate(log, 0)
    run.next(access("truncated"))
    append(log)
    run.next(access("grew"))
    assert log.stat().st_ino == ino


def test_a_log_and_its_folder_created_after_start(
    start: Callable[..., Running], tmp_path: Path, mode: str
) -> None:
    """Neither the log nor its folder exists at connect: the folder is polled until it is
    there (inotify+poll), then the log's first line is grew."""
    folder = tmp_path / "later"
    log = folder / "access.log"
    run = start({"www": log})
    assert run.src.mode == ("inotify+poll" if mode == "inotify" else "poll")
    folder.mkdir()
    log.write_bytes(LINE)
    run.next(access("grew"))


def test_a_log_created_after_start_in_a_watched_folder(
    start: Callable[..., Running], tmp_path: Path, mode: str
) -> None:
    """The folder is there, the log is not: fully watched; its creation with a line is grew
    (an empty new file is not an event: nothing to read)."""
    log = tmp_path / "access.log"
    run = start({"www": log})
    assert run.src.mode == mode
    log.write_bytes(b"")
    log.write_bytes(LINE)
    ev = run.next(access("grew"))
    assert ev.detail["size"] == len(LINE)


def test_secrets_globs_growth_and_new_files_but_no_symlinks(
    start: Callable[..., Running], tmp_path: Path
) -> None:
    """Growth of a matched file and a matched file created later are log_secrets events
    (resource "secrets", no params); a symlink the glob matches is never followed."""
    logs_dir = tmp_path / "app"
    logs_dir.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"")
    (logs_dir / "a-link.log").symlink_to(outside)
    app = logs_dir / "b-app.log"
    app.write_bytes(b"start\n")
    run = start(files=[str(logs_dir / "*.log")])
    append(outside, b"through the symlink\n")
    append(app, b"more\n")
    ev = run.next(lambda e: e.check == "log_secrets" and e.detail["file"] == str(app))
    assert (ev.kind, ev.resource, ev.params) == ("grew", "secrets", {})
    later = logs_dir / "c-later.log"
    later.write_bytes(b"new\n")
    run.next(lambda e: e.check == "log_secrets" and e.detail["file"] == str(later))
    assert not [e for e in run.seen if "link" in str(e.detail.get("file"))]


def test_catch_up_is_one_event_per_access_log_and_one_for_secrets(tmp_path: Path) -> None:
    """catch_up needs no connect and touches no file: one per log, one for the globs."""
    settings = Settings(
        access=AccessSettings(
            logs=[AccessLog(name=n, path=str(tmp_path / "none" / n)) for n in ("www", "api")]
        ),
        secrets=LogSecretsSettings(files=[str(tmp_path / "none" / "*.log")]),
    )
    got = LogSource(settings).catch_up()
    assert [(e.kind, e.check, e.resource, e.params) for e in got] == [
        (CATCH_UP, "access_log_clients", "access/www", {"target": "www"}),
        (CATCH_UP, "access_log_clients", "access/api", {"target": "api"}),
        (CATCH_UP, "log_secrets", "secrets", {}),
    ]
    only_access = Settings(access=AccessSettings(logs=[AccessLog(name="www", path="/x")]))
    assert [e.check for e in LogSource(only_access).catch_up()] == ["access_log_clients"]


def test_close_from_another_thread_ends_the_iteration(
    start: Callable[..., Running], tmp_path: Path
) -> None:
    """close() while events() waits (nothing changes): the iteration ends (its thread
    joins), and the source connects and delivers again afterwards."""
    log = tmp_path / "access.log"
    log.write_bytes(b"")
    run = start({"www": log})
    run.src.close()
    run.thread.join(3 * logs.CLOSE_POLL + 1)
    assert not run.thread.is_alive()
    again = Running(run.src)
    append(log)
    again.next(access("grew"))
    again.stop()
    assert not again.thread.is_alive()


def test_change_kinds() -> None:
    """Stat pairs to kinds: growth, a shorter file, another inode, a name gone, nothing."""
    a = Seen(1, 10, 100, 0.0)
    assert change(a, Seen(1, 10, 150, 1.0)) == "grew"
    assert change(a, Seen(1, 10, 0, 1.0)) == "truncated"
    assert change(a, Seen(1, 11, 0, 1.0)) == "rotated"
    assert change(a, None) == "rotated"
    assert change(None, Seen(1, 10, 0, 1.0)) is None
    assert change(None, Seen(1, 10, 5, 1.0)) == "grew"
    assert change(a, Seen(1, 10, 100, 2.0)) is None
    assert change(None, None) is None


def test_no_inotify_falls_back_to_polling(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """inotify asked for but not to be had (out of instances): the source polls with stat
    and still reports growth."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(logs.inotify_simple, "INotify", refuse)
    log = tmp_path / "access.log"
    log.write_bytes(b"")
    settings = Settings(
        access=AccessSettings(logs=[AccessLog(name="www", path=str(log))]),
        watch=WatchSettings(log_inotify=True, log_poll_seconds=0.05),
    )
    run = Running(LogSource(settings))
    try:
        assert run.src.mode == "poll"
        append(log)
        run.next(access("grew"))
    finally:
        run.stop()
