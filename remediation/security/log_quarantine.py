"""Quarantine a leaking log file and mask its secrets in place (runbook 004: "rotate logs at
once", without losing the log the application keeps writing).

The original bytes are copied into the 0700 quarantine folder (mode 0600, a note beside them,
remediation.quarantine), fsynced, and only then is every secret in the live file overwritten
with '*' of the same length, line by line, in the same inode. Nothing is truncated and no
byte moves: the application keeps appending to the file it has open, lines it writes
meanwhile are never lost (they land after the masked ones and the next scan reads them),
and the scan state (offsets, leaking line ranges) stays true, so verification re-reads the
very bytes that leaked.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from remediation import quarantine
from remediation.security.log_patterns import PatternSet, mask
from remediation.security.log_scan import CHUNK, Leak, scan_lines

MAX_LINES_LISTED = 20
_OPEN = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class TooBig(Exception):
    """The file is larger than the configured quarantine bound."""


@dataclass
class Masked:
    """What quarantine_and_mask did (line numbers and pattern names, never a secret)."""

    path: str
    size: int = 0
    copy: str = ""
    sha256: str = ""
    lines: list[int] = field(default_factory=list)
    masked_lines: int = 0
    patterns: dict[str, int] = field(default_factory=dict)
    changed_meanwhile: int = 0  # leaking lines that changed under us: left for the next run


def quarantine_and_mask(
    path: str, pset: PatternSet, into_dir: str, max_bytes: int, max_line: int, reason: str
) -> Masked:
    """Copy the file into the quarantine folder, then mask its secrets in place.

    TooBig when it is larger than max_bytes; OSError / QuarantineError when the file or the
    folder is unsafe (a symlink, not a regular file)."""
    fd = os.open(path, _OPEN)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise quarantine.QuarantineError(f"{path} is not a regular file")
        named = os.stat(path, follow_symlinks=False)
        if (named.st_dev, named.st_ino) != (st.st_dev, st.st_ino) or os.path.realpath(path) != path:
            raise quarantine.QuarantineError(f"{path} changed or became a link: not touched")
        if st.st_size > max_bytes:
            raise TooBig(f"{path} is {st.st_size} bytes, over the bound of {max_bytes}")
        done = Masked(path, size=st.st_size)
        first: list[int] = []
        count = _pieces(fd, pset, st.st_size, max_line, lambda k: first.append(k.line))
        if not count:
            return done
        folder = Path(into_dir)
        into = quarantine.folder(folder.parent, folder.name)
        staged = _copy(fd, st, quarantine.folder(into, ".staging"), done)
        note = {
            "inode": st.st_ino,
            "bytes": st.st_size,
            "sha256": done.sha256,
            "lines": first[:MAX_LINES_LISTED],
            "leaking_lines": count,
        }
        moved = quarantine.move_aside([staged], into, reason, source=path, **note)
        done.copy = str(moved[0])  # the original is safe: only now is anything changed
        _pieces(fd, pset, st.st_size, max_line, lambda k: _mask(fd, pset, k, done))
        os.fsync(fd)
    finally:
        os.close(fd)
    return done


def _copy(fd: int, st: os.stat_result, staging: Path, done: Masked) -> Path:
    """The first st_size bytes of the file into a new 0600 file in staging, fsynced."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target = staging / f"{Path(done.path).name}.{stamp}.{st.st_ino}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    out = os.open(target, flags, 0o600)
    digest = hashlib.sha256()
    try:
        pos = 0
        while pos < st.st_size:
            block = os.pread(fd, min(CHUNK, st.st_size - pos), pos)
            if not block:
                break
            digest.update(block)
            _write_all(out, block)
            pos += len(block)
        os.fsync(out)
    finally:
        os.close(out)
    done.sha256 = digest.hexdigest()
    return target


def _pieces(
    fd: int, pset: PatternSet, size: int, max_line: int, each: Callable[[Leak], object]
) -> int:
    """Every leaking line of the first size bytes, handed to ``each`` a piece at a time
    (memory stays bounded however many lines leak); how many there were."""
    pos, line, count, piece = 0, 0, 0, max(CHUNK, max_line)
    while pos < size:
        end, line, leaks = scan_lines(fd, pset, pos, line, min(piece, size - pos), max_line)
        for leak in leaks:
            each(leak)
        count += len(leaks)
        if end == pos:
            break  # an incomplete last line: the next scan reports it once complete
        pos = end
    return count


def _mask(fd: int, pset: PatternSet, leak: Leak, done: Masked) -> None:
    """Overwrite each secret of the line with '*' of its length; a line no longer as it
    was is left (the next scan reads it again)."""
    line = os.pread(fd, leak.end - leak.start, leak.start)
    spans = pset.secrets(line)
    if not spans or len(line) != leak.end - leak.start:
        done.changed_meanwhile += 1
        return
    os.pwrite(fd, mask(line, spans), leak.start)
    done.masked_lines += 1
    if len(done.lines) < MAX_LINES_LISTED:
        done.lines.append(leak.line)
    for name, _, _ in spans:
        done.patterns[name] = done.patterns.get(name, 0) + 1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
