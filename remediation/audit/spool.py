"""A local append-only spool for audit rows while PostgreSQL does not answer.

One file per host and process (`<host>-<pid>.jsonl`), one JSON record per line, each line
written with a single write() under the file's flock and fsync'd before append() returns.
A replay round holds an exclusive flock on `.replay.lock`, claims every active file by
renaming it (under the file's flock, so a writer that raced the rename writes a new file
instead), applies the records ordered by (ts, file, line) and removes a claimed file only
once every record in it has been applied. A crash mid-round leaves the claimed files in
place: the next round applies them again, which the idempotent SQL makes harmless.

Replay streams: a k-way merge of one line reader per claimed file, so a round holds one
line per file in memory (and one open file per claimed file, two when it keeps lines),
whatever the spool's size. A line that must stay (its apply raised, or the round stopped
before it) is written to the file's rest (`.<name>.tmp`) as soon as it is decided; settling
replaces the claimed file with its fsync'd rest, or removes it when nothing is left. Torn
lines (a write cut by a crash, never acknowledged) and lines longer than MAX_RECORD_BYTES
are dropped and counted. Within a file, records are replayed in the order they were written.

The folder is private: created 0700, and refused (AuditError naming it and the reason) when
it is a symbolic link, writable by group or others, or owned by another user than this
process's effective uid; checked (one lstat) on every append and every replay round. Every
spool file is opened with O_NOFOLLOW and must be a regular file: a symbolic link planted
where a spool file goes makes the write fail and the file it points to is never opened.
Entries that are not regular files are never read, renamed or removed.
"""

from __future__ import annotations

import errno
import fcntl
import heapq
import json
import os
import re
import socket
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from remediation.errors import AuditError
from remediation.filelock import file_lock

ACTIVE = ".jsonl"
"""Suffix of a file a process is appending to."""
CLAIMED = ".replay"
"""Suffix of a file a replay round took over (left behind if that round crashed)."""
LOCK_NAME = ".replay.lock"
"""The lock file one replay round at a time holds exclusively."""
REST = ".tmp"
"""Suffix of a claimed file's rest while a round writes it (`.<claimed name>.tmp`)."""
MAX_RECORD_BYTES = 8 * 1024 * 1024
"""A record longer than this (as one JSON line) is refused by append and dropped by replay:
the store caps every value it writes far below it, so only a damaged file has one."""
_SKIP_CHUNK = 64 * 1024

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_NO_LINK = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK

# (ts, file index, line number, raw line, record): tuples order as the replay must
_Line = tuple[int, int, int, bytes, dict[str, Any]]


class StopReplay(Exception):
    """Raised by an apply callback when the database stopped answering: end the round."""


@dataclass
class ReplayResult:
    applied: int = 0
    kept: int = 0  # records that failed for another reason and stay for a later round
    stopped: bool = False  # the database stopped answering mid-round
    dropped: int = 0  # torn lines (a write cut by a crash; never acknowledged)


class Spool:
    """The spool directory of one audit database."""

    def __init__(self, directory: str | os.PathLike[str], max_mb: int = 512) -> None:
        if max_mb < 1:
            raise ValueError("max_mb must be at least 1")
        self.dir = Path(directory)
        self.max_bytes = max_mb * 1024 * 1024
        self._last_ts = 0

    def _checked_dir(self) -> None:
        """Create the folder 0700 if missing; AuditError if it is not private to this uid."""
        try:
            st = os.lstat(self.dir)
        except FileNotFoundError:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = os.lstat(self.dir)
        problem = _unsafe_dir(st)
        if problem:
            raise AuditError(f"audit spool folder {self.dir} refused: {problem}")

    # --- writing --------------------------------------------------------------------------

    def own_path(self) -> Path:
        host = _SAFE.sub("_", socket.gethostname())[:64] or "host"
        return self.dir / f"{host}-{os.getpid()}{ACTIVE}"

    def next_ts(self) -> int:
        """Nanoseconds, strictly increasing within this process even if the clock goes back."""
        self._last_ts = max(time.time_ns(), self._last_ts + 1)
        return self._last_ts

    def append(self, record: dict[str, Any]) -> None:
        """Append one record durably; AuditError if the spool is full or cannot be written."""
        line = json.dumps({"ts": self.next_ts(), **record}, separators=(",", ":")) + "\n"
        data = line.encode()
        if len(data) - 1 > MAX_RECORD_BYTES:
            raise AuditError(
                f"audit record too large to spool: {len(data) - 1} bytes (limit {MAX_RECORD_BYTES})"
            )
        try:
            self._checked_dir()
            used = self.size()
            if used + len(data) > self.max_bytes:
                raise AuditError(
                    f"audit spool full: {used} bytes in {self.dir} (limit {self.max_bytes})"
                )
            self._append_bytes(data)
        except OSError as exc:
            raise AuditError(f"audit spool not writable: {type(exc).__name__}") from exc

    def _append_bytes(self, data: bytes) -> None:
        path = self.own_path()
        for _ in range(5):
            created = not os.path.lexists(path)
            fd = _open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if not _same_file(fd, path):  # a replay round renamed it under us: start anew
                    continue
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                _fsync_dir(self.dir)
            return
        raise AuditError(f"audit spool file kept moving: {path}")

    def size(self) -> int:
        total = 0
        for path in self._files((ACTIVE, CLAIMED)):
            try:
                total += path.lstat().st_size
            except FileNotFoundError:  # claimed or removed by a replay round meanwhile
                continue
        return total

    def pending(self) -> bool:
        """True when any record waits (one directory listing; no file is read)."""
        return any(True for _ in self._files((ACTIVE, CLAIMED)))

    def _files(self, suffixes: tuple[str, ...]) -> Iterator[Path]:
        """Regular files with one of these suffixes (never a symbolic link or a dot-file)."""
        try:
            entries = list(os.scandir(self.dir))
        except FileNotFoundError:
            return
        for entry in entries:
            if not entry.name.endswith(suffixes) or entry.name.startswith("."):
                continue
            try:
                regular = entry.is_file(follow_symlinks=False)
            except OSError:
                continue
            if regular:
                yield Path(entry.path)

    # --- replay ---------------------------------------------------------------------------

    @contextmanager
    def locked(self, wait: float = 0.0) -> Iterator[bool]:
        """Hold the replay lock (True) or say it stayed busy for `wait` seconds (False)."""
        self._checked_dir()
        path = self.dir / LOCK_NAME
        os.close(_open(path, os.O_RDWR | os.O_CREAT))  # file_lock follows links: not here
        with file_lock(path, wait) as held:
            yield held

    def replay(
        self, apply: Callable[[dict[str, Any]], None], *, wait: float = 0.0
    ) -> ReplayResult | None:
        """Apply every spooled record in order; None if another round held the lock."""
        try:
            with self.locked(wait) as held:
                if not held:
                    return None
                self._claim()
                return self._apply_claimed(apply)
        except OSError as exc:
            raise AuditError(f"audit spool replay failed in {self.dir}: {exc}") from exc

    def _claim(self) -> None:
        for path in list(self._files((ACTIVE,))):
            try:
                fd = _open(path, os.O_RDONLY)
            except (FileNotFoundError, AuditError):  # gone, or replaced by a link: not ours
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if _same_file(fd, path):
                    os.rename(path, path.with_name(f"{path.name}.{time.time_ns()}{CLAIMED}"))
            finally:
                os.close(fd)
        for entry in os.scandir(self.dir):  # rests of a round that crashed: never applied
            stale = entry.name.startswith(".") and entry.name.endswith(CLAIMED + REST)
            if stale and not entry.is_dir(follow_symlinks=False):
                os.unlink(entry.path)
        _fsync_dir(self.dir)

    def _apply_claimed(self, apply: Callable[[dict[str, Any]], None]) -> ReplayResult:
        result = ReplayResult()
        with ExitStack() as stack:
            files = [stack.enter_context(_Claimed(p)) for p in sorted(self._files((CLAIMED,)))]
            merged = heapq.merge(*(f.lines(i, result) for i, f in enumerate(files)))
            for _, index, _, raw, record in merged:
                if not result.stopped and _applied(apply, record, result):
                    result.applied += 1
                else:
                    result.kept += 1
                    files[index].keep(raw)
            for f in files:
                f.settle()
        _fsync_dir(self.dir)
        return result


def _applied(
    apply: Callable[[dict[str, Any]], None], record: dict[str, Any], result: ReplayResult
) -> bool:
    """Apply one record: False when it must stay (apply raised; StopReplay ends the round)."""
    try:
        apply(record)
    except StopReplay:
        result.stopped = True
        return False
    except Exception:  # kept for a later round (e.g. its parent is not there yet)
        return False
    return True


class _Claimed:
    """One claimed file while a round replays it: its lines, and the rest that stays."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}{REST}")
        self.reader: IO[bytes] | None = None
        self.rest: IO[bytes] | None = None

    def __enter__(self) -> _Claimed:
        self.reader = os.fdopen(_open(self.path, os.O_RDONLY), "rb")
        return self

    def __exit__(self, *exc: object) -> None:
        for fh in (self.reader, self.rest):
            if fh is not None:
                fh.close()

    def lines(self, index: int, result: ReplayResult) -> Iterator[_Line]:
        """Parsed lines in file order; torn or overlong ones counted in result.dropped."""
        assert self.reader is not None
        for number, raw in enumerate(_raw_lines(self.reader)):
            record = _parse(raw)
            if record is None:
                result.dropped += 1
                continue
            yield (int(record["ts"]), index, number, raw, record)

    def keep(self, raw: bytes) -> None:
        if self.rest is None:
            self.tmp.unlink(missing_ok=True)
            self.rest = os.fdopen(_open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "wb")
        self.rest.write(raw if raw.endswith(b"\n") else raw + b"\n")

    def settle(self) -> None:
        """Remove the file when all of it was applied; otherwise replace it by its rest."""
        if self.rest is None:
            self.path.unlink(missing_ok=True)
            return
        self.rest.flush()
        os.fsync(self.rest.fileno())
        self.rest.close()
        self.rest = None
        os.replace(self.tmp, self.path)


def _raw_lines(reader: IO[bytes]) -> Iterator[bytes]:
    """Each line of reader; a line past MAX_RECORD_BYTES is skipped in chunks (yielded as
    b'' so it is counted and keeps its line number)."""
    while True:
        raw = reader.readline(MAX_RECORD_BYTES + 1)
        if not raw:
            return
        if len(raw) > MAX_RECORD_BYTES and not raw.endswith(b"\n"):
            while (chunk := reader.readline(_SKIP_CHUNK)) and not chunk.endswith(b"\n"):
                pass
            raw = b""
        yield raw


def _parse(raw: bytes) -> dict[str, Any] | None:
    """The record of one line, or None for a torn or damaged line."""
    try:
        record = json.loads(raw)
        int(record["ts"])
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError):
        return None
    return record if isinstance(record, dict) else None


def _unsafe_dir(st: os.stat_result) -> str | None:
    """Why a folder with this lstat may not hold the spool, or None."""
    if stat.S_ISLNK(st.st_mode):
        return "it is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a directory"
    if st.st_uid != os.geteuid():
        return f"owned by uid {st.st_uid}, not by this process's uid {os.geteuid()}"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def _open(path: Path, flags: int) -> int:
    """os.open that never follows a symbolic link, never blocks on a FIFO and only returns a
    regular file (AuditError naming the path otherwise)."""
    try:
        fd = os.open(path, flags | _NO_LINK, 0o600)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise AuditError(f"audit spool file {path} refused: it is a symbolic link") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise AuditError(f"audit spool file {path} refused: not a regular file")
    os.set_blocking(fd, True)
    return fd


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.lstat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems refuse fsync on a directory
        if exc.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)
