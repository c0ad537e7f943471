"""Incremental scan of log files for secrets, and masking a file in place (runbook 004).

Where the scan stands in each file lives in the state Redis, one hash per file identity
(device and inode), ``rem:logscan:<dev>:<ino>``: the offset and line number reached, and the
leaking lines found so far (up to MAX_KEPT, as byte ranges). Keyed by identity, not name:

* rotation (app.log renamed app.log.1, a new app.log) gives the new file a new inode, read
  from 0; the renamed file keeps its state, so a glob that also matches it never reads
  (nor reports) its content again;
* truncation (size below the offset) starts the file again at 0;
* only complete lines are read; a run reads at most a byte budget over all files, and says
  which files it left behind.

Leaking lines are re-read at every run: a file reports its leak until the secret is gone
from it, so verification after quarantine_log reads the very bytes that leaked (an
incremental offset alone would call any run after the first "clean").
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import stat
from dataclasses import dataclass, field
from typing import Any

import redis

from remediation.guards import keys
from remediation.security.log_patterns import PatternSet

KEY_PREFIX = keys.PREFIX + "logscan:"
LEAK_SEEN = KEY_PREFIX + "leak_seen"
"""Set while a leak was seen recently: the scrubbing flag is then required (log_scrubbing_off)."""
LEAK_SEEN_SECONDS = 7 * 86400
MAX_KEPT = 50
"""Leaking lines remembered (and re-read every run) per file."""
CHUNK = 4 << 20
LONG_LINE_LEAD = 256
"""Bytes before a secret kept in the window of a line longer than MAX_LINE_BYTES."""
EXAMINED_PER_FILE = 10
"""A glob yields at most MAX_FILES times this many names (a folder of a million files)."""
_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True)
class Leak:
    """One leaking line: its number, byte range (without the newline) and pattern names."""

    line: int
    start: int
    end: int
    patterns: tuple[str, ...]

    def as_json(self) -> list[Any]:
        return [self.line, self.start, self.end, list(self.patterns)]

    @classmethod
    def from_json(cls, raw: list[Any]) -> Leak:
        return cls(int(raw[0]), int(raw[1]), int(raw[2]), tuple(str(p) for p in raw[3]))


@dataclass
class FileScan:
    """What one run found in one file."""

    path: str
    ident: str = ""
    start: int = 0
    offset: int = 0
    line: int = 0  # lines before offset
    size: int = 0
    restarted: str = ""  # "", "new", "truncated"
    new: list[Leak] = field(default_factory=list)
    present: list[Leak] = field(default_factory=list)  # every known leak still in the file
    overflow: int = 0  # leaking lines found beyond MAX_KEPT (counted, not re-read)
    error: str = ""

    @property
    def behind(self) -> int:
        return max(self.size - self.offset, 0)


def state_key(dev: int, ino: int) -> str:
    return f"{KEY_PREFIX}{dev}:{ino}"


def matched_files(
    patterns: list[str], limit: int, skip_under: str = ""
) -> tuple[list[str], list[str]]:
    """(regular files the globs match, sorted, at most ``limit``; the symlinks and paths
    through a symlinked folder they match, which are never followed). Folders and the
    quarantine folder's content are left out without a word."""
    found: set[str] = set()
    skipped: list[str] = []
    real_skip = os.path.realpath(skip_under) if skip_under else ""
    for pattern in patterns:
        names = glob.iglob(pattern) if glob.has_magic(pattern) else iter([pattern])
        for path in itertools.islice(names, limit * EXAMINED_PER_FILE):
            path = os.path.normpath(path)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            inside = bool(real_skip) and os.path.commonpath([path, real_skip]) == real_skip
            if stat.S_ISDIR(st.st_mode) or inside:
                continue
            if not stat.S_ISREG(st.st_mode) or os.path.realpath(path) != path:
                skipped.append(path)
                continue
            found.add(path)
    return sorted(found)[:limit], skipped


def scan_lines(
    fd: int, pset: PatternSet, start: int, line: int, limit: int, max_line: int
) -> tuple[int, int, list[Leak]]:
    """Read complete lines from ``start`` (line number ``line`` before it), at most ``limit``
    bytes: (offset reached, lines counted, every leaking line). A line longer than
    ``max_line`` bytes is read in pieces; an incomplete last line waits for the next run.
    One buffer is read into again and again (no new 4 MiB object per block)."""
    pos, leaks = start, []
    buf = bytearray(min(max(CHUNK, max_line), max(limit, 0)))
    while pos - start < limit:
        want = min(len(buf), limit - (pos - start))
        got = os.preadv(fd, [memoryview(buf)[:want]], pos)
        cut = buf.rfind(b"\n", 0, got) + 1
        if cut == 0:
            if got < max_line:
                break  # an incomplete line (or a budget too small for it): next run
            cut = got
        leaks += _leaks(buf, cut, pset, pos, line, max_line)
        line += buf.count(b"\n", 0, cut)
        pos += cut
    return pos, line, leaks


def _leaks(
    buf: bytearray, cut: int, pset: PatternSet, base: int, line: int, max_line: int
) -> list[Leak]:
    """The leaking lines among the complete lines buf[:cut]: one pass of the alternation
    finds them, the patterns are run one by one on those lines only. Of a line longer than
    max_line, a window of at most max_line bytes around each secret is what is kept (and
    re-read every run), so a run re-reads at most MAX_KEPT * max_line bytes."""
    found, line_end, counted, count = [], -1, 0, 0
    for m in pset.combined.finditer(buf, 0, cut):
        s = m.start()
        if s < line_end:
            continue  # a second secret in a line (or window) already taken
        ls = buf.rfind(b"\n", 0, s) + 1
        le = buf.find(b"\n", s, cut)
        le = cut if le < 0 else le
        if le - ls > max_line:
            ls = max(ls, s - LONG_LINE_LEAD)
            le = min(le, ls + max_line)
        count += buf.count(b"\n", counted, ls)
        counted = ls
        names = pset.names(bytes(buf[ls:le]))
        if names:
            found.append(Leak(line + count + 1, base + ls, base + le, tuple(names)))
        line_end = le
    return found


def _still(fd: int, pset: PatternSet, leaks: list[Leak]) -> list[Leak]:
    """The known leaks whose bytes still hold a secret."""
    return [k for k in leaks if pset.secrets(os.pread(fd, k.end - k.start, k.start))]


def scan_file(
    state: redis.Redis, pset: PatternSet, path: str, budget: int, max_line: int, ttl: int
) -> FileScan:
    """Scan one file from where the last run stopped and record how far it got."""
    result = FileScan(path)
    try:
        fd = os.open(path, _OPEN)
    except OSError as exc:
        result.error = f"{type(exc).__name__}: {exc.strerror or exc}"
        return result
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            result.error = "not a regular file"
            return result
        key = state_key(st.st_dev, st.st_ino)
        result.ident, result.size = f"{st.st_dev}:{st.st_ino}", st.st_size
        with state.pipeline() as pipe:
            pipe.watch(key)  # type: ignore[no-untyped-call]
            saved = {_text(k): _text(v) for k, v in pipe.hgetall(key).items()}
            _scan_from(fd, pset, result, saved, budget, max_line)
            pipe.multi()
            _save(pipe, key, result, ttl)
            try:
                pipe.execute()
            except redis.WatchError:
                pass  # another run moved on meanwhile; its record stands
    finally:
        os.close(fd)
    return result


def _scan_from(
    fd: int, pset: PatternSet, result: FileScan, saved: dict[str, str], budget: int, max_line: int
) -> None:
    offset, line = int(saved.get("offset", 0)), int(saved.get("line", 0))
    kept = [Leak.from_json(x) for x in json.loads(saved.get("leaks", "[]"))]
    overflow = int(saved.get("overflow", 0))
    if not saved:
        result.restarted = "new"
    elif result.size < offset:
        result.restarted, offset, line, kept, overflow = "truncated", 0, 0, [], 0
    result.start = offset
    present = _still(fd, pset, kept)
    if not present:
        overflow = 0  # redacted: the leaks beyond the kept ones went with them
    result.offset, result.line, new = scan_lines(fd, pset, offset, line, budget, max_line)
    result.new = new
    room = MAX_KEPT - len(present)
    result.present = present + new[: max(room, 0)]
    result.overflow = overflow + max(len(new) - max(room, 0), 0)


def _save(pipe: Any, key: str, result: FileScan, ttl: int) -> None:
    pipe.hset(
        key,
        mapping={
            "offset": result.offset,
            "line": result.line,
            "path": result.path,
            "leaks": json.dumps([k.as_json() for k in result.present]),
            "overflow": result.overflow,
        },
    )
    pipe.expire(key, ttl)
    if result.new:
        pipe.set(LEAK_SEEN, "1", ex=LEAK_SEEN_SECONDS)


def forget(state: redis.Redis, path: str) -> None:
    """Drop the scan state of the file at path (scanned again from 0)."""
    st = os.stat(path, follow_symlinks=False)
    state.delete(state_key(st.st_dev, st.st_ino))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def status(state: redis.Redis, paths: list[str]) -> list[dict[str, Any]]:
    """Where the scan stands in each file (read-only): size, offset reached, bytes behind,
    leaking lines remembered. Never a line of the file."""
    rows: list[dict[str, Any]] = []
    for path in paths:
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError as exc:
            rows.append({"file": path, "error": exc.strerror or str(exc)})
            continue
        saved = {
            _text(k): _text(v) for k, v in state.hgetall(state_key(st.st_dev, st.st_ino)).items()
        }
        offset = int(saved.get("offset", 0))
        leaks = json.loads(saved.get("leaks", "[]"))
        rows.append(
            {
                "file": path,
                "inode": st.st_ino,
                "size": st.st_size,
                "offset": offset if saved else None,
                "behind": max(st.st_size - offset, 0),
                "leaking_lines": len(leaks) + int(saved.get("overflow", 0)),
                "lines": [int(k[0]) for k in leaks[:10]],
            }
        )
    return rows
