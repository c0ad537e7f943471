"""Read a growing log file incrementally: what was appended since the last run, whole lines
only, at most a bounded number of bytes per run.

Where a run stopped (device, inode, offset) is kept by the caller (the state Redis). A
file replaced under its name (rotation) is finished first when its old self is still found
beside it as ``NAME.1`` (logrotate's default), then the new file is read from its start; a
file cut shorter than the offset (copytruncate) is read again from its start. A log seen
for the first time is read from its last ``max_bytes`` only: older lines are history.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import redis


@dataclass(frozen=True)
class Position:
    dev: int
    ino: int
    offset: int

    @classmethod
    def from_hash(cls, raw: dict[Any, Any]) -> Position | None:
        try:
            values = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}
            return cls(values["dev"], values["ino"], values["offset"])
        except (KeyError, ValueError):
            return None


@dataclass
class Chunk:
    """Whole lines read in one run and where the next run starts."""

    data: bytes = b""
    position: Position | None = None
    rotated: bool = False
    truncated: bool = False
    overlong: int = 0  # line fragments longer than max_line skipped
    behind_bytes: int = 0  # left for the next run
    notes: list[str] = field(default_factory=list)


def load(r: redis.Redis, key: str) -> Position | None:
    return Position.from_hash(r.hgetall(key))


def save(r: redis.Redis, key: str, pos: Position) -> None:
    r.hset(key, mapping={"dev": pos.dev, "ino": pos.ino, "offset": pos.offset})


def _whole_lines(data: bytes, max_line: int) -> tuple[bytes, int, int]:
    """(complete lines, bytes consumed, overlong fragments skipped)."""
    cut = data.rfind(b"\n")
    if cut >= 0:
        return data[: cut + 1], cut + 1, 0
    if len(data) >= max_line:  # no line end in sight: skip the fragment
        return b"", len(data), 1
    return b"", 0, 0


def _read_from(fh: Any, offset: int, budget: int, max_line: int) -> tuple[bytes, int, int]:
    fh.seek(offset)
    data = fh.read(budget)
    lines, used, overlong = _whole_lines(data, max_line)
    return lines, offset + used, overlong


def _finish_rotated(path: str, old: Position, budget: int, max_line: int, out: Chunk) -> int:
    """The rest of the rotated file (NAME.1 with the old inode); returns bytes used."""
    try:
        with open(path + ".1", "rb") as fh:
            st = os.fstat(fh.fileno())
            if (st.st_dev, st.st_ino) != (old.dev, old.ino) or st.st_size <= old.offset:
                return 0
            data, end, overlong = _read_from(fh, old.offset, budget, max_line)
    except OSError:
        return 0
    out.data, out.overlong = data, overlong
    out.notes.append(f"finished the rotated file {path}.1 ({end - old.offset} bytes)")
    return end - old.offset


def read_new(path: str, last: Position | None, max_bytes: int, max_line: int) -> Chunk:
    """What was appended to ``path`` since ``last``. OSError when the file cannot be read."""
    out = Chunk()
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        start, budget = 0, max_bytes
        if last is None:
            start = max(0, st.st_size - max_bytes)
            if start:  # begin at a line start
                fh.seek(start - 1)
                skip = fh.read(max_line + 1).find(b"\n")
                start = start + skip if skip >= 0 else st.st_size
        elif (last.dev, last.ino) != (st.st_dev, st.st_ino):
            out.rotated = True
            budget -= _finish_rotated(path, last, max_bytes, max_line, out)
        elif st.st_size < last.offset:
            out.truncated = True
        else:
            start = last.offset
        data, end, overlong = _read_from(fh, start, max(budget, 0), max_line)
        out.data += data
        out.overlong += overlong
        out.position = Position(st.st_dev, st.st_ino, end)
        out.behind_bytes = max(0, st.st_size - end)
    return out
