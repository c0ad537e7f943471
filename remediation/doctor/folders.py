"""Folders the worker writes: they exist (or can be made), belong to the worker's user, are
not group/world writable, take a new file, and the backup folder has room for a dump.

Backup folder (REMEDIATION_BACKUP__DIR: backup_database, verify_backup, backup_files), audit
spool (REMEDIATION_AUDIT__SPOOL_DIR: the core), and the log quarantine
(REMEDIATION_SECRETS__QUARANTINE_DIR: quarantine_log, only when SECRETS__FILES is set).
Writing is tested with a temporary file, removed at once; nothing else is changed.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg

from remediation.clients import pg
from remediation.doctor import Result, fail, ok, unknown
from remediation.doctor.postgres import targets
from remediation.redact import bounded_text, redact_text
from remediation.settings import Settings

AREA = "folder"
GIB = 1 << 30
BACKUP_ACTIONS = ("backup_database", "verify_backup", "backup_files")


@dataclass(frozen=True)
class Folder:
    name: str  # the setting, e.g. backup_dir
    path: Path
    variable: str
    needed_by: tuple[str, ...]
    parents: bool  # the code creates missing parents too (mkdir -p)


def folders(settings: Settings) -> list[Folder]:
    out = [
        Folder("backup_dir", Path(settings.backup.dir), "BACKUP__DIR", BACKUP_ACTIONS, True),
        Folder("spool_dir", Path(settings.audit.spool_dir), "AUDIT__SPOOL_DIR", (), True),
    ]
    if settings.secrets.files:
        path = Path(settings.secrets.quarantine_dir)
        out.append(
            Folder("quarantine_dir", path, "SECRETS__QUARANTINE_DIR", ("quarantine_log",), False)
        )
    return out


def probe(settings: Settings) -> list[Result]:
    rows: list[Result] = []
    for folder in folders(settings):
        rows += probe_folder(folder)
        if folder.name == "backup_dir":
            rows.append(free_space(settings, folder))
    return rows


def _user() -> str:
    uid = os.geteuid()
    with contextlib.suppress(KeyError):
        return pwd.getpwuid(uid).pw_name
    return str(uid)


def _row(folder: Folder, what: str, detail: str, fix: str = "") -> Result:
    if fix:
        return fail(AREA, folder.name, what, detail, fix, needed_by=folder.needed_by)
    return ok(AREA, folder.name, what, detail, needed_by=folder.needed_by)


def _existing_ancestor(path: Path) -> Path:
    for parent in path.absolute().parents:
        if parent.exists():
            return parent
    return Path("/")


def probe_folder(folder: Folder) -> list[Result]:
    path, what = folder.path, f"{folder.path} usable"
    if not path.exists():
        return [_missing(folder)]
    if not path.is_dir():
        fix = f"point REMEDIATION_{folder.variable} at a folder, or move {path} away"
        return [_row(folder, what, f"{path} is not a folder", fix)]
    return [_safe(folder), _writable(folder)]


def _missing(folder: Folder) -> Result:
    path = folder.path
    what = f"{path} exists"
    parent = _existing_ancestor(path) if folder.parents else path.parent
    fix = f"mkdir -p -m 0700 {path} && chown {_user()} {path}"
    if not parent.is_dir():
        return _row(folder, what, f"neither {path} nor its parent {parent} exists", fix)
    if not os.access(parent, os.W_OK | os.X_OK):
        return _row(folder, what, f"missing, and {_user()} may not create it in {parent}", fix)
    return _row(folder, what, f"missing: created (0700) at first use in {parent}")


def _safe(folder: Folder) -> Result:
    path = folder.path
    st = path.stat()
    what = f"{path} owned by {_user()}, not group/world writable"
    if st.st_uid != os.geteuid():
        detail = f"owned by uid {st.st_uid}, the worker runs as {_user()}"
        return _row(folder, what, detail, f"chown {_user()} {path}")
    mode = stat.S_IMODE(st.st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        detail = f"mode {mode:04o}: others may replace what the worker writes"
        return _row(folder, what, detail, f"chmod 0700 {path}")
    return _row(folder, what, f"mode {mode:04o}")


def _writable(folder: Folder) -> Result:
    path = folder.path
    what = f"{path} writable"
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".doctor-"):
            pass
    except OSError as exc:
        detail = f"cannot create a file: {exc.strerror or exc}"
        return _row(
            folder, what, detail, f"chmod u+rwx {path} (as {_user()}), or chown {_user()} {path}"
        )
    return _row(folder, what, "a file was created and removed")


def database_bytes(settings: Settings) -> tuple[int, list[str]]:
    """Sum of pg_database_size over the databases backup_database may dump, and the targets
    whose size could not be read."""
    total, unread = 0, []
    for target in targets(settings):
        if not target.acts:
            continue
        try:
            with pg.connect(target.dsn, timeout=settings.postgres.connect_timeout_seconds) as conn:
                row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
            total += int(row[0]) if row else 0
        except psycopg.Error as exc:
            unread.append(f"{target.name} ({bounded_text(redact_text(str(exc).strip()), 120)})")
    return total, unread


def free_space(settings: Settings, folder: Folder) -> Result:
    margin = settings.doctor.free_space_margin
    what = f"free space for a dump of each database (size x {margin:g})"
    place = folder.path if folder.path.exists() else _existing_ancestor(folder.path)
    try:
        free = shutil.disk_usage(place).free
    except OSError as exc:
        return unknown(
            AREA,
            folder.name,
            what,
            f"cannot read {place}: {exc.strerror}",
            "make the folder readable",
            needed_by=folder.needed_by,
        )
    size, unread = database_bytes(settings)
    if unread:
        return unknown(
            AREA,
            folder.name,
            what,
            "cannot read the size of " + ", ".join(unread),
            "see the postgres rows",
            needed_by=folder.needed_by,
        )
    need = int(size * margin)
    detail = f"{free / GIB:.2f} GiB free on {place}, {need / GIB:.2f} GiB needed"
    if free >= need:
        return _row(folder, what, detail)
    mount = _mount_point(place)
    fix = (
        f"free {(need - free) / GIB:.2f} GiB on {mount} or set REMEDIATION_{folder.variable}"
        " to a folder on a larger disk"
    )
    return _row(folder, what, detail, fix)


def _mount_point(path: Path) -> Path:
    path = path.resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path
