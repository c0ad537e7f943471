"""A local append-only spool for audit rows while PostgreSQL does not answer.

One file per host and process (`<host>-<pid>.jsonl`), one JSON record per line, each line
written with a single write() under the file's flock and fsync'd before append() returns.
A replay round holds an exclusive flock on `.replay.lock`, claims every active file by
renaming it (under the file's flock, so a writer that raced the rename writes a new file
instead), applies the records ordered by (ts, file, line) and removes a claimed file only
once every record in it has been applied. A crash mid-round leaves the claimed files in
place: the next round applies them again, which the idempotent SQL makes harmless.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from remediation.errors import AuditError
from remediation.filelock import file_lock

ACTIVE = ".jsonl"
"""Suffix of a file a process is appending to."""
CLAIMED = ".replay"
"""Suffix of a file a replay round took over (left behind if that round crashed)."""
LOCK_NAME = ".replay.lock"
"""The lock file one replay round at a time holds exclusively."""

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class StopReplay(Exception):
    """Raised by an apply callback when the database stopped answering: end the round."""


@dataclass
class ReplayResult:
    applied: int = 0
    kept: int = 0  # records that failed for another reason and stay for a later round
    stopped: bool = False  # the database stopped answering mid-round
    dropped: int = 0  # torn lines (a write cut by a crash; never acknowledged)


@dataclass
class _Line:
    ts: int
    file: str
    number: int
    raw: bytes
    record: dict[str, Any]


class Spool:
    """The spool directory of one audit database."""

    def __init__(self, directory: str | os.PathLike[str], max_mb: int = 512) -> None:
        if max_mb < 1:
            raise ValueError("max_mb must be at least 1")
        self.dir = Path(directory)
        self.max_bytes = max_mb * 1024 * 1024
        self._last_ts = 0

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
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
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
            created = not path.exists()
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
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
                total += path.stat().st_size
            except FileNotFoundError:  # claimed or removed by a replay round meanwhile
                continue
        return total

    def pending(self) -> bool:
        """True when any record waits (one directory listing; no file is read)."""
        return any(True for _ in self._files((ACTIVE, CLAIMED)))

    def _files(self, suffixes: tuple[str, ...]) -> Iterator[Path]:
        try:
            entries = list(os.scandir(self.dir))
        except FileNotFoundError:
            return
        for entry in entries:
            if entry.name.endswith(suffixes) and not entry.name.startswith("."):
                yield Path(entry.path)

    # --- replay ---------------------------------------------------------------------------

    @contextmanager
    def locked(self, wait: float = 0.0) -> Iterator[bool]:
        """Hold the replay lock (True) or say it stayed busy for `wait` seconds (False)."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with file_lock(self.dir / LOCK_NAME, wait) as held:
            yield held

    def replay(
        self, apply: Callable[[dict[str, Any]], None], *, wait: float = 0.0
    ) -> ReplayResult | None:
        """Apply every spooled record in order; None if another round held the lock."""
        with self.locked(wait) as held:
            if not held:
                return None
            self._claim()
            return self._apply_claimed(apply)

    def _claim(self) -> None:
        for path in list(self._files((ACTIVE,))):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if _same_file(fd, path):
                    os.rename(path, path.with_name(f"{path.name}.{time.time_ns()}{CLAIMED}"))
            finally:
                os.close(fd)
        _fsync_dir(self.dir)

    def _apply_claimed(self, apply: Callable[[dict[str, Any]], None]) -> ReplayResult:
        result = ReplayResult()
        files = sorted(self._files((CLAIMED,)))
        lines: list[_Line] = []
        for path in files:
            lines.extend(self._read(path, result))
        lines.sort(key=lambda ln: (ln.ts, ln.file, ln.number))
        done: set[tuple[str, int]] = set()
        for line in lines:
            try:
                apply(line.record)
            except StopReplay:
                result.stopped = True
                break
            except Exception:  # kept for a later round (e.g. its parent is not there yet)
                result.kept += 1
                continue
            done.add((line.file, line.number))
            result.applied += 1
        result.kept += len(lines) - result.applied - result.kept
        for path in files:
            rest = [
                ln.raw for ln in lines if ln.file == path.name and (ln.file, ln.number) not in done
            ]
            self._settle(path, rest)
        return result

    def _read(self, path: Path, result: ReplayResult) -> list[_Line]:
        out = []
        for number, raw in enumerate(path.read_bytes().splitlines(keepends=True)):
            try:
                record = json.loads(raw)
                ts = int(record["ts"])
            except (ValueError, KeyError, TypeError):
                result.dropped += 1
                continue
            out.append(_Line(ts, path.name, number, raw, record))
        return out

    def _settle(self, path: Path, rest: list[bytes]) -> None:
        """Remove a claimed file whose records are all applied; otherwise keep only the rest."""
        if not rest:
            path.unlink(missing_ok=True)
        else:
            tmp = path.with_name(f".{path.name}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                _write_all(fd, b"".join(rest))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        _fsync_dir(self.dir)


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), path.stat()
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems refuse fsync on a directory
        if exc.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)
