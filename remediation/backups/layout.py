"""Names and places of backups: the stamp, folders, file patterns, the error they raise."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path

from remediation.errors import RemediationError

STAMP = "%Y%m%dT%H%M%SZ"
_STAMP_RE = r"(\d{8}T\d{6}Z)"
FILES_DIR = "files"
QUARANTINE = "quarantine"
"""A target folder's subfolder for dumps that failed verification (kept for the operator)."""
MANIFEST_FORMAT = 1
CHUNK = 1 << 20
# How long pg_dump (and our counting transaction) wait for a table lock before giving up:
# a dump queued behind an ALTER TABLE would otherwise block the application behind it.
LOCK_WAIT = "60s"
SCRATCH_PREFIX = "rem_verify_"


class BackupError(RemediationError):
    """A backup or verification step failed; ``step`` names it (checksum, restore ...)."""

    def __init__(self, message: str, step: str = "") -> None:
        super().__init__(message)
        self.step = step


# --- names and places ---------------------------------------------------------------------


def now() -> datetime:
    return datetime.now(UTC)


def stamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime(STAMP)


def parse_stamp(text: str) -> datetime:
    return datetime.strptime(text, STAMP).replace(tzinfo=UTC)


def _inside(root: str | Path, name: str) -> Path:
    if not name or name.startswith(".") or "/" in name or "\x00" in name:
        raise BackupError(f"{name!r} cannot name a folder inside the backup directory")
    return Path(os.path.abspath(root)) / name


def target_dir(root: str | Path, target: str) -> Path:
    """<backup dir>/<target>: target names are case-insensitive, as in the settings."""
    return _inside(root, target.lower())


def files_dir(root: str | Path) -> Path:
    return _inside(root, FILES_DIR)


def dump_name(target: str, when: datetime) -> str:
    return f"{target.lower()}-{stamp(when)}.dump"


def dump_pattern(target: str) -> re.Pattern[str]:
    """Dumps of one target (group 1: the timestamp)."""
    return re.compile(rf"^{re.escape(target.lower())}-{_STAMP_RE}\.dump$")


def ours_pattern(target: str) -> re.Pattern[str]:
    """Every file backup_database may write for a target: dump, manifest, partial."""
    return re.compile(rf"^\.?{re.escape(target.lower())}-{_STAMP_RE}\.dump(\.json|\.partial)?$")


ARCHIVE_RE = re.compile(rf"^files-{_STAMP_RE}\.tar\.gz$")
ARCHIVE_OURS_RE = re.compile(rf"^\.?files-{_STAMP_RE}\.tar\.gz(\.sha256|\.json)?(\.partial)?$")


def manifest_path(dump: Path) -> Path:
    return dump.with_name(dump.name + ".json")


def partial_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.partial")
