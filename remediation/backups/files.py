"""Backup files: locks, listing and retention, row counts, scratch databases."""

from __future__ import annotations

import contextlib
import os
import re
import stat
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from remediation.backups.layout import (
    ARCHIVE_OURS_RE,
    ARCHIVE_RE,
    SCRATCH_PREFIX,
    BackupError,
    dump_pattern,
    manifest_path,
    now,
    ours_pattern,
    parse_stamp,
)
from remediation.backups.manifest import read_manifest
from remediation.filelock import file_lock

_SCRATCH_RE = re.compile(r"^rem_verify_([0-9a-f]{8})[0-9a-f]{8}$")

# --- locks ------------------------------------------------------------------------------------


@contextlib.contextmanager
def folder_lock(directory: Path) -> Iterator[bool]:
    """An exclusive flock on <directory>/.lock, not waiting: yields False if another process
    holds it. Keeps a dump's retention from deleting a file a verification is reading."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    with file_lock(directory / ".lock") as held:
        yield held


def remove_ours(path: Path, pattern: re.Pattern[str], folder: Path) -> bool:
    """Delete path only if it is a regular file directly in folder whose name matches."""
    if path.parent != folder or not pattern.match(path.name):
        raise BackupError(f"refusing to delete {path}: not one of our backup files")
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


# --- listing and retention ----------------------------------------------------------------


@dataclass(frozen=True)
class Backup:
    """One dump on disk with its authenticated manifest (None, with ``error``, when it is
    missing, unreadable or not authenticated: then the dump counts as neither verified nor
    awaiting verification)."""

    path: Path
    taken_at: datetime
    manifest: dict[str, Any] | None
    error: str = ""

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def verification(self) -> dict[str, Any] | None:
        value = (self.manifest or {}).get("verification")
        return value if isinstance(value, dict) else None

    @property
    def status(self) -> str:
        """verified | failed | unverified | no_manifest."""
        if self.manifest is None:
            return "no_manifest"
        if self.verification is None:
            return "unverified"
        return "verified" if self.verification.get("ok") is True else "failed"

    def age_hours(self, at: datetime) -> float:
        return round((at - self.taken_at).total_seconds() / 3600, 2)


def dump_files(directory: Path, target: str) -> list[tuple[Path, datetime]]:
    """(path, taken at) of a target's dumps in its folder, newest first, without reading
    anything but the folder (regular files only). A missing folder means none."""
    pattern = dump_pattern(target)
    found = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        match = pattern.match(entry.name)
        if match and entry.is_file(follow_symlinks=False):
            found.append((Path(entry.path), parse_stamp(match.group(1))))
    return sorted(found, key=lambda found: found[1], reverse=True)


def list_backups(directory: Path, target: str, key: bytes) -> list[Backup]:
    """Dumps of a target in its folder with their manifests, checked with ``key``, newest
    first. A missing folder means none."""
    found = []
    for path, taken_at in dump_files(directory, target):
        try:
            manifest, error = read_manifest(manifest_path(path), key), ""
        except BackupError as exc:
            manifest, error = None, str(exc)
        found.append(Backup(path, taken_at, manifest, error))
    return found


@dataclass(frozen=True)
class Retention:
    """Grandfather-father-son: the newest backup of each of the last N days, ISO weeks and
    months that have one (as restic's --keep-daily/weekly/monthly: a pause in backups does
    not make old ones expire). Within a period a backup that failed verification, or whose
    manifest is not authenticated, is passed over for an older one that is verified or
    awaiting verification. The newest backup and the newest verified one (authenticated
    manifests only) are always kept."""

    daily: int
    weekly: int
    monthly: int
    max_deletions: int = 20


_PERIODS: tuple[Callable[[datetime], Any], ...] = (
    lambda t: t.date(),
    lambda t: t.isocalendar()[:2],
    lambda t: (t.year, t.month),
)


def plan_retention(backups: Sequence[Backup], policy: Retention) -> set[str]:
    """Names of the backups to keep."""
    ordered = sorted(backups, key=lambda b: b.taken_at, reverse=True)
    keep = {b.name for b in ordered[:1]}
    keep |= {b.name for b in [b for b in ordered if b.status == "verified"][:1]}
    for count, period in zip((policy.daily, policy.weekly, policy.monthly), _PERIODS, strict=True):
        buckets: dict[Any, list[Backup]] = {}
        for b in ordered:
            buckets.setdefault(period(b.taken_at), []).append(b)
        for members in list(buckets.values())[:count]:
            keep.add(min(members, key=lambda b: _RANK[b.status]).name)  # first of the best
    return keep


_RANK = {"verified": 0, "unverified": 0, "no_manifest": 1, "failed": 2}


def apply_retention(
    directory: Path, target: str, policy: Retention, *, key: bytes, stale_seconds: float
) -> dict[str, Any]:
    """Delete the dumps (and manifests) the policy does not keep, oldest first, at most
    policy.max_deletions per run; also leftovers of crashed runs older than stale_seconds.
    A file that cannot be deleted is reported in "errors": the new backup stays good."""
    backups = list_backups(directory, target, key)
    keep = plan_retention(backups, policy)
    doomed = [b for b in reversed(backups) if b.name not in keep]
    pattern = ours_pattern(target)
    errors: list[str] = []
    for b in doomed[: policy.max_deletions]:
        _delete([manifest_path(b.path)], pattern, directory, errors)
    deleted = _delete([b.path for b in doomed[: policy.max_deletions]], pattern, directory, errors)
    leftovers = _leftovers(directory, pattern, {b.name for b in backups}, stale_seconds)
    return {
        "kept": sorted(keep, reverse=True),
        "deleted": deleted,
        "deferred": [b.name for b in doomed[policy.max_deletions :]],
        "leftovers_removed": _delete(leftovers, pattern, directory, errors),
        "errors": errors,
    }


def apply_archive_retention(
    directory: Path, keep: int, *, max_deletions: int, stale_seconds: float
) -> dict[str, Any]:
    """The newest `keep` file archives stay; older ones go with their .sha256 and .json."""
    archives = sorted(e.name for e in os.scandir(directory) if ARCHIVE_RE.match(e.name))[::-1]
    doomed = archives[keep:][::-1][:max_deletions]
    errors: list[str] = []
    paths = [directory / (n + suffix) for n in doomed for suffix in (".sha256", ".json", "")]
    _delete(paths, ARCHIVE_OURS_RE, directory, errors)
    leftovers = _leftovers(directory, ARCHIVE_OURS_RE, set(archives), stale_seconds)
    _delete(leftovers, ARCHIVE_OURS_RE, directory, errors)
    return {"kept": archives[:keep], "deleted": doomed, "errors": errors}


def _delete(
    paths: Iterable[Path], pattern: re.Pattern[str], folder: Path, errors: list[str]
) -> list[str]:
    deleted = []
    for path in paths:
        try:
            if remove_ours(path, pattern, folder):
                deleted.append(path.name)
        except OSError as exc:
            errors.append(f"{path.name}: {exc.strerror or exc}")
    return deleted


def _leftovers(
    directory: Path, pattern: re.Pattern[str], finished: set[str], stale_seconds: float
) -> list[Path]:
    """Partials, and manifests or checksums without their file, of runs killed mid-way,
    once older than any run can last."""
    cutoff = now().timestamp() - stale_seconds
    found = []
    for entry in os.scandir(directory):
        if not pattern.match(entry.name) or not entry.is_file(follow_symlinks=False):
            continue
        base = entry.name.removesuffix(".json").removesuffix(".sha256")
        orphan = base != entry.name and base not in finished
        if (entry.name.endswith(".partial") or orphan) and entry.stat().st_mtime < cutoff:
            found.append(Path(entry.path))
    return found


# --- row counts ---------------------------------------------------------------------------

# Tables whose rows pg_dump writes: ordinary tables and partitions (not partitioned parents,
# views, foreign or temporary tables, nor tables that belong to an extension).
USER_TABLES_SQL = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND c.relpersistence <> 't'
  AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""


def user_tables(conn: psycopg.Connection) -> list[tuple[str, str]]:
    return [(str(s), str(n)) for s, n in conn.execute(USER_TABLES_SQL).fetchall()]


def count_rows(
    conn: psycopg.Connection, tables: Iterable[tuple[str, str]], batch: int = 100
) -> dict[tuple[str, str], int]:
    """Exact row counts (``count(*) FROM ONLY``: inheritance children count for themselves),
    a hundred tables per query, names always quoted."""
    tables = list(tables)
    counts: dict[tuple[str, str], int] = {}
    for start in range(0, len(tables), batch):
        chunk = tables[start : start + batch]
        query = sql.SQL(" UNION ALL ").join(
            sql.SQL("SELECT {}::int, count(*) FROM ONLY {}").format(
                sql.Literal(i), sql.Identifier(schema, name)
            )
            for i, (schema, name) in enumerate(chunk)
        )
        for i, rows in conn.execute(query).fetchall():
            counts[chunk[i]] = int(rows)
    return counts


def table_rows(counts: dict[tuple[str, str], int]) -> list[dict[str, Any]]:
    return [{"schema": s, "name": n, "rows": r} for (s, n), r in sorted(counts.items())]


# --- scratch databases --------------------------------------------------------------------


def scratch_name(at: datetime | None = None) -> str:
    """rem_verify_<8 hex of the epoch second><8 random hex>: its age is in its name, so a
    scratch database left by a killed worker is recognised and dropped later."""
    seconds = int((at or now()).timestamp())
    return f"{SCRATCH_PREFIX}{seconds:08x}{uuid.uuid4().hex[:8]}"


def scratch_created(name: str) -> datetime | None:
    match = _SCRATCH_RE.match(name)
    return datetime.fromtimestamp(int(match.group(1), 16), UTC) if match else None


def drop_database(conn: psycopg.Connection, name: str) -> None:
    """DROP DATABASE, ending its sessions (WITH (FORCE) from PostgreSQL 13)."""
    if conn.info.server_version >= 130000:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        return
    conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
    )
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def drop_stale_scratch(conn: psycopg.Connection, older_than_seconds: float) -> list[str]:
    """Drop rem_verify_* databases older than a verification can possibly run."""
    rows = conn.execute(
        "SELECT datname FROM pg_database WHERE datname LIKE %s", (SCRATCH_PREFIX + "%",)
    ).fetchall()
    dropped = []
    for (name,) in rows:
        created = scratch_created(str(name))
        if created and (now() - created).total_seconds() > older_than_seconds:
            drop_database(conn, str(name))
            dropped.append(str(name))
    return dropped


def create_scratch(conn: psycopg.Connection, name: str) -> None:
    """An empty database (template0) with the encoding and locale of the connected one."""
    row = conn.execute(
        "SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database"
        " WHERE datname = current_database()"
    ).fetchone()
    if row is None:
        raise BackupError("the connected database is not in pg_database", "scratch")
    text = "CREATE DATABASE {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}"
    if conn.info.server_version >= 150000:  # ICU sources: libc is enough to count rows
        text += " LOCALE_PROVIDER libc"
    args = [sql.Identifier(name), *(sql.Literal(str(v)) for v in row)]
    conn.execute(sql.SQL(text).format(*args))
