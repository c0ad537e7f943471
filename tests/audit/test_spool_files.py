"""The spool directory on its own: append, claim, order, keep, drop torn lines (no database)."""

from __future__ import annotations

import json
import os
import threading
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from remediation.audit.spool import ACTIVE, CLAIMED, MAX_RECORD_BYTES, Spool, StopReplay
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


# --- the folder and its files belong to this process's user alone ------------------------


def test_new_folder_is_created_private(tmp_path: Path) -> None:
    """A missing spool folder (and its missing parents) is created, the folder itself 0700."""
    folder = tmp_path / "a" / "b" / "spool"
    Spool(folder).append({"op": "a"})
    assert folder.stat().st_mode & 0o777 == 0o700
    assert len(files(folder)) == 1


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702], ids=lambda m: f"{m:04o}")
def test_folder_writable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    """A group- or world-writable folder: append and replay raise AuditError naming the
    folder and the mode, and nothing is written or read."""
    folder = tmp_path / "spool"
    folder.mkdir()
    (folder / f"other-1{ACTIVE}").write_text('{"ts":1,"op":"planted"}\n')
    folder.chmod(mode)
    spool = Spool(folder)
    with pytest.raises(AuditError, match=f"{folder}.*writable by group or others"):
        spool.append({"op": "a"})
    seen: list[str] = []
    with pytest.raises(AuditError, match=f"{folder}.*mode {mode:04o}"):
        spool.replay(lambda r: seen.append(r["op"]))
    assert seen == [] and [p.name for p in files(folder)] == [f"other-1{ACTIVE}"]


def test_folder_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    """A 0700 folder owned by uid 65534: append and replay raise AuditError naming it."""
    if os.geteuid() != 0:
        pytest.skip("only root can give a folder to another user")
    folder = tmp_path / "spool"
    folder.mkdir(mode=0o700)
    (folder / f"other-1{ACTIVE}").write_text('{"ts":1,"op":"planted"}\n')
    os.chown(folder, 65534, 65534)
    spool = Spool(folder)
    with pytest.raises(AuditError, match=f"{folder}.*owned by uid 65534"):
        spool.append({"op": "a"})
    seen: list[str] = []
    with pytest.raises(AuditError, match=f"{folder}.*owned by uid 65534"):
        spool.replay(lambda r: seen.append(r["op"]))
    assert seen == [] and [p.name for p in files(folder)] == [f"other-1{ACTIVE}"]


def test_symlinked_folder_is_refused(tmp_path: Path) -> None:
    """A spool folder that is a symbolic link (to a private folder) is refused; the folder it
    points to gets nothing."""
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "spool"
    link.symlink_to(real)
    spool = Spool(link)
    with pytest.raises(AuditError, match=f"{link}.*symbolic link"):
        spool.append({"op": "a"})
    with pytest.raises(AuditError, match=f"{link}.*symbolic link"):
        spool.replay(lambda r: None)
    assert list(real.iterdir()) == []


def test_symlink_at_own_spool_file_fails_the_write(tmp_path: Path) -> None:
    """A link planted where this process's spool file goes: append raises AuditError and the
    file it points to stays byte-for-byte unchanged (also when the link dangles)."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    victim.chmod(0o644)
    spool = Spool(tmp_path / "spool")
    spool.append({"op": "first"})  # creates the folder, then the file is swapped for a link
    spool.own_path().unlink()
    spool.own_path().symlink_to(victim)
    with pytest.raises(AuditError, match="symbolic link"):
        spool.append({"op": "a"})
    assert victim.read_bytes() == b"precious\n" and victim.stat().st_mode & 0o777 == 0o644
    spool.own_path().unlink()
    spool.own_path().symlink_to(tmp_path / "created-through-link")
    with pytest.raises(AuditError, match="symbolic link"):
        spool.append({"op": "b"})
    assert not (tmp_path / "created-through-link").exists()


def test_replay_never_follows_planted_links(tmp_path: Path) -> None:
    """Links planted at another active file's name, at a claimed file's rest and at the
    replay lock: the files they point to are never read or changed, the links stay."""
    folder = tmp_path / "spool"
    spool = Spool(folder)
    spool.append({"op": "orphan"})
    spool.append({"op": "b"})
    victim = tmp_path / "victim"
    victim.write_bytes(b'{"ts":1,"op":"from-victim"}\n')
    (folder / f"planted-1{ACTIVE}").symlink_to(victim)
    (folder / f"planted-2{CLAIMED}").symlink_to(victim)
    seen: list[str] = []

    def apply(record: dict[str, Any]) -> None:
        seen.append(record["op"])
        if record["op"] == "orphan":
            raise ValueError("kept")

    first = spool.replay(apply)
    assert first is not None and (first.applied, first.kept) == (1, 1)
    (claimed,) = [p for p in files(folder) if not p.is_symlink()]
    rest_link = folder / f".{claimed.name}.tmp"
    rest_link.symlink_to(victim)  # where the next round writes this file's rest
    second = spool.replay(apply)
    assert second is not None and (second.applied, second.kept) == (0, 1)
    assert seen == ["orphan", "b", "orphan"]
    assert victim.read_bytes() == b'{"ts":1,"op":"from-victim"}\n'
    assert (folder / f"planted-1{ACTIVE}").is_symlink()
    assert (folder / f"planted-2{CLAIMED}").is_symlink()
    (folder / ".replay.lock").unlink()
    (folder / ".replay.lock").symlink_to(tmp_path / "lock-through-link")
    with pytest.raises(AuditError, match="symbolic link"):
        spool.replay(apply)
    assert not (tmp_path / "lock-through-link").exists()


# --- streaming replay ---------------------------------------------------------------------


def test_many_files_merge_in_time_order_exactly_once(tmp_path: Path) -> None:
    """Six files whose timestamps interleave (and a torn line in one): every record once,
    in (ts, file, line) order, all files removed."""
    expected: list[tuple[int, str]] = []
    for f in range(6):
        lines = []
        for n in range(300):
            ts = n * 7 + (f * 3) % 7  # ties between files broken by file name
            lines.append(json.dumps({"ts": ts, "op": f"{f}-{n}"}))
            expected.append((ts, f"h{f}-{n}"))
        torn = '{"ts":5,"op":"torn' if f == 2 else ""
        (tmp_path / f"h{f}{ACTIVE}").write_text("\n".join(lines) + "\n" + torn)
    seen: list[str] = []
    result = Spool(tmp_path).replay(lambda r: seen.append(r["op"]))
    assert result is not None and (result.applied, result.dropped) == (1800, 1)
    assert seen == [op[1:] for _, op in sorted(expected)]
    assert files(tmp_path) == []


def test_kept_lines_survive_a_round_where_apply_raises_for_some(tmp_path: Path) -> None:
    """Every third record raises in the first round, then the database stops: each file is
    replaced by exactly its failed and unreached lines, in order, applied once later."""
    writers = [Spool(tmp_path) for _ in range(2)]
    for n in range(60):
        writers[n % 2].append({"op": "n", "args": {"n": n}})
    # both Spool objects share this pid's file: split it as two processes would have
    (own,) = files(tmp_path)
    raw = own.read_bytes().splitlines(keepends=True)
    (tmp_path / f"a{ACTIVE}").write_bytes(b"".join(raw[0::2]))
    (tmp_path / f"b{ACTIVE}").write_bytes(b"".join(raw[1::2]))
    own.unlink()
    applied: list[int] = []

    def first_round(record: dict[str, Any]) -> None:
        n = record["args"]["n"]
        if n == 45:
            raise StopReplay
        if n % 3 == 0:
            raise ValueError("parent not there yet")
        applied.append(n)

    first = Spool(tmp_path).replay(first_round)
    assert first is not None and first.stopped
    stays = [n for n in range(60) if n % 3 == 0 or n >= 45]
    assert (first.applied, first.kept) == (60 - len(stays), len(stays))
    rests = {p.name.split(".")[0]: p for p in files(tmp_path)}
    for name, parity in (("a", 0), ("b", 1)):
        kept = [json.loads(ln)["args"]["n"] for ln in rests[name].read_bytes().splitlines()]
        assert kept == [n for n in stays if n % 2 == parity]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    second = Spool(tmp_path).replay(lambda r: applied.append(r["args"]["n"]))
    assert second is not None and (second.applied, second.kept) == (len(stays), 0)
    assert sorted(applied) == list(range(60)) and files(tmp_path) == []


def test_oversized_records_are_refused_and_overlong_lines_dropped(tmp_path: Path) -> None:
    """append refuses a record over MAX_RECORD_BYTES; a file with such a line (damaged) has
    it dropped and counted, the lines around it replayed."""
    spool = Spool(tmp_path)
    with pytest.raises(AuditError, match="too large"):
        spool.append({"op": "big", "args": {"blob": "x" * MAX_RECORD_BYTES}})
    assert files(tmp_path) == []
    huge = b'{"ts":2,"op":"huge","blob":"' + b"y" * (MAX_RECORD_BYTES + 10) + b'"}\n'
    (tmp_path / f"h{ACTIVE}").write_bytes(b'{"ts":1,"op":"a"}\n' + huge + b'{"ts":3,"op":"b"}\n')
    seen: list[str] = []
    result = spool.replay(lambda r: seen.append(r["op"]))
    assert result is not None and (result.applied, result.dropped) == (2, 1)
    assert seen == ["a", "b"] and files(tmp_path) == []


def test_replay_memory_does_not_grow_with_the_spool(tmp_path: Path) -> None:
    """Replaying 16 MiB of spool in four files allocates under 4 MiB at its peak
    (tracemalloc; reading the files whole, as before, took over 100 MiB)."""
    record = {
        "op": "check_run",
        "args": {
            "id": 0,
            "check": "postgres_dead_tuples",
            "target": "app",
            "params": {"min_dead_ratio": 0.2, "tables": ["a", "b"]},
        },
    }
    for f in range(4):
        with open(tmp_path / f"h{f}{ACTIVE}", "wb") as fh:
            for n in range(4 * 1024 * 1024 // 170):
                fh.write(json.dumps({"ts": n * 4 + f, **record}).encode() + b"\n")
    count = 0

    def apply(r: dict[str, Any]) -> None:
        nonlocal count
        count += 1

    tracemalloc.start()
    try:
        result = Spool(tmp_path).replay(apply)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result is not None and result.applied == count > 90_000
    assert peak < 4 * 1024 * 1024
