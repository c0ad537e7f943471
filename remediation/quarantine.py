"""Move evidence aside instead of deleting it: a private folder, a note saying why.

A file found bad (a dump that fails verification) is kept for the operator, out of reach
of retention: it is renamed into a 0700 folder beside it, never overwritten and never
followed through a symlink, with a `<name>.quarantine.json` note (reason, when, where it
came from). Nothing here deletes anything; the operator removes quarantined files.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from remediation.errors import RemediationError

NOTE_SUFFIX = ".quarantine.json"
"""The note written beside each quarantined file."""
REASON_CHARS = 2000


class QuarantineError(RemediationError):
    """A file could not be moved aside (the folder is unsafe, a name is taken)."""


@dataclass(frozen=True)
class Quarantined:
    """One quarantined file and its note."""

    path: Path
    reason: str
    at: datetime
    note: dict[str, Any]


def folder(parent: Path, name: str = "quarantine") -> Path:
    """The quarantine folder under parent, created 0700; QuarantineError when it is a
    symlink, not a folder, or open to group or others."""
    path = parent / name
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError as exc:
        raise QuarantineError(f"{path}: {exc.strerror or exc}") from exc
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise QuarantineError(f"{path} is not a folder (a symlink?): refusing to use it")
    if st.st_mode & 0o077:
        raise QuarantineError(f"{path} is open to group or others ({oct(st.st_mode & 0o777)})")
    return path


def move_aside(files: list[Path], into: Path, reason: str, **note: Any) -> list[Path]:
    """Rename files (the first is the subject; the others go with it, e.g. its manifest)
    into the folder `into`, and write the subject's note. Files that are not there are
    skipped; a name already taken in the folder, or a file that is not a regular file, is a
    QuarantineError before anything moved."""
    present = [f for f in files if _regular(f)]
    taken = [f.name for f in present if os.path.lexists(into / f.name)]
    if taken:
        raise QuarantineError(f"{into} already holds {taken[0]}: not overwriting it")
    moved = []
    for path in present:
        os.rename(path, into / path.name)
        moved.append(into / path.name)
    subject = files[0]
    record = {
        **note,
        "file": subject.name,
        "from": str(subject.parent),
        "reason": reason[:REASON_CHARS],
        "quarantined_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "moved": [p.name for p in moved],
    }
    _write_private(into / (subject.name + NOTE_SUFFIX), json.dumps(record, indent=2) + "\n")
    _fsync_dir(into)
    _fsync_dir(subject.parent)
    return moved


def listed(into: Path) -> list[Quarantined]:
    """Every quarantined file in the folder with its note, newest first (a missing folder
    holds none; a note that cannot be read is skipped)."""
    found = []
    try:
        entries = list(os.scandir(into))
    except FileNotFoundError:
        return []
    for entry in entries:
        if not entry.name.endswith(NOTE_SUFFIX) or not entry.is_file(follow_symlinks=False):
            continue
        try:
            with open(entry.path, encoding="utf-8") as handle:
                data = json.load(handle)
            at = datetime.fromisoformat(str(data["quarantined_at"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        name = entry.name.removesuffix(NOTE_SUFFIX)
        found.append(Quarantined(into / name, str(data.get("reason", "")), at, data))
    return sorted(found, key=lambda q: q.at, reverse=True)


def _regular(path: Path) -> bool:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(mode):
        raise QuarantineError(f"{path} is not a regular file: not moving it")
    return True


def _write_private(path: Path, text: str) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
