"""The spool directory on its own: append, claim, order, keep, drop torn lines (no database)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from remediation.audit.spool import ACTIVE, CLAIMED, Spool, StopReplay
from remediation.errors import AuditError


def files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.endswith((ACTIVE, CLAIMED)))


def test_lines_are_whole_json_records_in_a_private_file(tmp_path: Path) -> None:
    """One file per host and pid, mode 0600, one JSON object per line even with newlines."""
    spool = Spool(tmp_path)
    spool.append({"op": "x", "args": {"text": "a\nb\r\n\u2028c"}})
    spool.append({"op": "y", "args": {}})
    (path,) = files(tmp_path)
    assert path == spool.own_path()
    assert path.stat().st_mode & 0o777 == 0o600
    lines = path.read_bytes().splitlines()
    assert [json.loads(ln)["op"] for ln in lines] == ["x", "y"]
    assert json.loads(lines[0])["args"]["text"] == "a\nb\r\n\u2028c"


def test_appends_racing_replay_rounds_lose_and_repeat_nothing(tmp_path: Path) -> None:
    """A writer appending while rounds claim its file: every record applied exactly once."""
    writer, replayer = Spool(tmp_path), Spool(tmp_path)
    seen: list[int] = []
    total = 1000

    def write() -> None:
        for n in range(total):
            writer.append({"op": "n", "args": {"n": n}})

    thread = threading.Thread(target=write)
    thread.start()
    rounds = 0
    while thread.is_alive():
        result = replayer.replay(lambda r: seen.append(r["args"]["n"]), wait=1)
        rounds += 1
        assert result is not None and result.kept == 0
    thread.join()
    replayer.replay(lambda r: seen.append(r["args"]["n"]))
    assert seen == list(range(total))  # in order, none twice, none missing
    assert rounds > 1 and files(tmp_path) == []


def test_records_are_ordered_by_time_across_files(tmp_path: Path) -> None:
    """Two processes' files interleave by timestamp, not by file name."""
    a, b = tmp_path / f"zz-1{ACTIVE}", tmp_path / f"aa-2{ACTIVE}"
    a.write_text('{"ts":1,"op":"parent"}\n{"ts":4,"op":"a2"}\n')
    b.write_text('{"ts":2,"op":"child"}\n{"ts":3,"op":"b2"}\n')
    seen: list[str] = []
    Spool(tmp_path).replay(lambda r: seen.append(r["op"]))
    assert seen == ["parent", "child", "b2", "a2"]


def test_failed_record_stays_for_a_later_round(tmp_path: Path) -> None:
    """A record whose apply fails (parent not there yet) is kept; the others are removed."""
    spool = Spool(tmp_path)
    for op in ("a", "orphan", "b"):
        spool.append({"op": op})
    ready = False

    def apply(record: dict[str, Any]) -> None:
        if record["op"] == "orphan" and not ready:
            raise ValueError("foreign key")

    first = spool.replay(apply)
    assert first is not None and (first.applied, first.kept) == (2, 1)
    (rest,) = files(tmp_path)
    assert [json.loads(ln)["op"] for ln in rest.read_bytes().splitlines()] == ["orphan"]
    ready = True
    second = spool.replay(apply)
    assert second is not None and (second.applied, second.kept) == (1, 0)
    assert files(tmp_path) == []


def test_stop_ends_the_round_and_keeps_what_was_not_applied(tmp_path: Path) -> None:
    """The database going away mid-round: applied records are not applied again later."""
    spool = Spool(tmp_path)
    for n in range(5):
        spool.append({"op": "n", "args": {"n": n}})
    seen: list[int] = []
    stop_at = [2]  # the database goes away once, just before record 2

    def apply(record: dict[str, Any]) -> None:
        if stop_at and record["args"]["n"] == stop_at[0]:
            stop_at.clear()
            raise StopReplay
        seen.append(record["args"]["n"])

    first = spool.replay(apply)
    assert first is not None and first.stopped and (first.applied, first.kept) == (2, 3)
    spool.replay(apply)
    assert seen == [0, 1, 2, 3, 4] and files(tmp_path) == []


def test_torn_line_from_a_crashed_write_is_dropped(tmp_path: Path) -> None:
    """A line cut by a crash (never acknowledged) is counted and dropped, the rest replayed."""
    spool = Spool(tmp_path)
    spool.append({"op": "a"})
    with open(spool.own_path(), "ab") as fh:
        fh.write(b'{"ts":99,"op":"b","ar')
    seen: list[str] = []
    result = spool.replay(lambda r: seen.append(r["op"]))
    assert result is not None and (result.applied, result.dropped) == (1, 1) and seen == ["a"]


def test_busy_lock_means_no_round(tmp_path: Path) -> None:
    """While another round holds the lock, replay says so (None) instead of waiting forever."""
    spool = Spool(tmp_path)
    spool.append({"op": "a"})
    with Spool(tmp_path).locked() as held:
        assert held
        assert spool.replay(lambda r: None, wait=0.2) is None
    assert spool.pending()


def test_full_spool_refuses(tmp_path: Path) -> None:
    """Past max_mb the append raises AuditError and writes nothing."""
    spool = Spool(tmp_path, max_mb=1)
    blob = "x" * 300_000
    accepted = 0
    with pytest.raises(AuditError, match="audit spool full"):
        for _ in range(10):
            spool.append({"op": "big", "args": {"blob": blob}})
            accepted += 1
    assert accepted == 3 and spool.size() <= 1024 * 1024
    assert len(spool.own_path().read_bytes().splitlines()) == 3
