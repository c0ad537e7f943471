"""backup_files: configuration and SQLite files into a tar.gz (runbook 003 "Backup and
Recovery", runbook 001 "Scheduled Maintenance: Pre-Maintenance")."""

from __future__ import annotations

import io
import os
import sqlite3
import stat
import tarfile
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import IO, Any, cast

from remediation import backups, resolve, signing
from remediation.actions.backups import (
    DUMP_TIMEOUT,
    MAX_DELETIONS_PER_RUN,
    busy,
    retention_note,
    signing_key,
    stale_after,
)
from remediation.backups import BackupError
from remediation.context import ActionContext, CheckContext, Resolved
from remediation.errors import Refused
from remediation.findings import ActionResult
from remediation.params import ActionParams
from remediation.registry import action


class BackupFilesParams(ActionParams):
    """No options: what to archive is REMEDIATION_BACKUP__FILE_PATHS."""


def _something_to_archive(paths: list[str]) -> None:
    """Refused when REMEDIATION_BACKUP__FILE_PATHS is empty (nobody needs to hear: nothing
    is configured) or names only paths that do not exist (a configuration to fix)."""
    if not paths:
        raise Refused("nothing to archive: REMEDIATION_BACKUP__FILE_PATHS is empty", notice=False)
    if not any(os.path.lexists(os.path.abspath(raw)) for raw in paths):
        raise Refused(
            f"nothing to archive: none of the {len(paths)} REMEDIATION_BACKUP__FILE_PATHS"
            f" exist ({', '.join(paths[:3])}{' ...' if len(paths) > 3 else ''})"
        )


def resolve_files(ctx: CheckContext, params: BackupFilesParams) -> Resolved:
    """Target 'self' (this worker's own files, named by configuration); Refused when there
    is nothing to archive or no key to sign the manifest with."""
    target = resolve.self_target(params.target, "backup_files")
    _something_to_archive(ctx.settings.backup.file_paths)
    signing_key(ctx)
    return resolve.canonical(params, target=target)


@action(
    "backup_files",
    resolve=resolve_files,
    resource=lambda p: "files",
    timeout=timedelta(hours=1),
    cooldown=timedelta(hours=1),
    max_per_hour=2,
)
def backup_files(ctx: ActionContext, params: BackupFilesParams) -> ActionResult:
    """tar.gz of REMEDIATION_BACKUP__FILE_PATHS into REMEDIATION_BACKUP__DIR/files/.

    Runbook 003 "Backup and Recovery" (SQLite databases, .env) and runbook 001 "Scheduled
    Maintenance: Pre-Maintenance" (tar -czf config_backup.tar.gz config/). Folders whole;
    symlinks are stored as links and never followed; SQLite databases are copied with
    SQLite's online backup (a consistent copy while the application writes), so their
    -wal/-shm files are left out. A path that does not exist is reported, not fatal.
    Writes a .sha256 (sha256sum -c) and a signed manifest; keeps KEEP_FILE_ARCHIVES
    archives. Nothing configured, or none of the paths there: refused, not failed."""
    cfg, key = ctx.settings.backup, signing.key_of(ctx.settings)
    _something_to_archive(cfg.file_paths)
    folder = backups.files_dir(cfg.dir)
    with backups.folder_lock(folder) as mine:
        if not mine:
            raise busy(folder)
        created, clock = backups.now(), time.monotonic()
        final = folder / f"files-{backups.stamp(created)}.tar.gz"
        if final.exists():
            raise BackupError(f"{final.name} already exists (one archive per second)")
        partial = backups.partial_path(final)
        os.close(backups.private_file(partial))
        try:
            report = Archiver(folder, Path(os.path.realpath(cfg.dir))).write(
                partial, cfg.file_paths
            )
            if report.entries == 0:  # gone since the resolve step: nothing was changed
                partial.unlink()
                raise Refused(f"nothing archived: none of the {len(cfg.file_paths)} paths exist")
            manifest = _seal(final, partial, report, created, clock, key)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        retention = backups.apply_archive_retention(
            folder,
            cfg.keep_file_archives,
            max_deletions=MAX_DELETIONS_PER_RUN,
            stale_seconds=stale_after(cfg, DUMP_TIMEOUT),
        )
    notes = [f"missing: {', '.join(report.missing)}"] if report.missing else []
    notes += [f"{len(report.warnings)} warning(s)"] if report.warnings else []
    notes += retention_note(retention)
    ctx.log.info("file archive written", file=final.name, entries=report.entries)
    return ActionResult(
        summary=f"archived {report.files} files ({report.bytes} bytes) to {final.name}"
        + "".join(f"; {n}" for n in notes),
        detail={"path": str(final), **manifest, "retention": retention},
    )


def _seal(
    final: Path, partial: Path, report: Archive, created: Any, clock: float, key: bytes
) -> dict[str, Any]:
    """Checksum file and manifest first, then the archive is renamed into place."""
    backups.fsync_file(partial)
    digest = backups.sha256_file(partial)
    manifest: dict[str, Any] = {
        "format": backups.MANIFEST_FORMAT,
        "kind": "files",
        "file": final.name,
        "size": partial.stat().st_size,
        "sha256": digest,
        "created_at": created.isoformat(),
        "duration_seconds": round(time.monotonic() - clock, 3),
        **report.as_dict(),
    }
    sums = final.with_name(final.name + ".sha256")
    tmp = backups.partial_path(sums)
    tmp.write_text(f"{digest}  {final.name}\n")
    backups.fsync_file(tmp)
    os.replace(tmp, sums)
    manifest = backups.write_manifest(final.with_name(final.name + ".json"), manifest, key)
    os.replace(partial, final)
    backups.fsync_dir(final.parent)
    return manifest


SQLITE_MAGIC = b"SQLite format 3\x00"
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


@dataclass
class Archive:
    """What went into an archive."""

    paths: list[dict[str, Any]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    entries: int = 0
    files: int = 0
    bytes: int = 0
    sqlite_snapshots: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "count": self.entries}


class _Exact(io.RawIOBase):
    """Reads exactly `size` bytes: a file that shrank while archived is padded with zeros
    (and reported) instead of corrupting the tar stream; growth after the stat is cut."""

    def __init__(self, f: IO[bytes], size: int) -> None:
        self.f, self.left, self.short = f, size, False

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.f.read(n)
        if len(data) < n:
            self.short, data = True, data + b"\0" * (n - len(data))
        self.left -= n
        return data


@dataclass
class Archiver:
    """Walks the configured paths without following symlinks and writes one tar.gz."""

    folder: Path
    backup_root: Path
    report: Archive = field(default_factory=Archive)
    _snapshotted: set[str] = field(default_factory=set)

    def write(self, dest: Path, paths: list[str]) -> Archive:
        with tarfile.open(dest, "w:gz", compresslevel=6, format=tarfile.PAX_FORMAT) as tar:
            for raw in paths:
                root = os.path.abspath(raw)
                try:
                    top = os.lstat(root)
                except FileNotFoundError:
                    self.report.missing.append(raw)
                    continue
                except OSError as exc:
                    self.report.warnings.append(f"{root}: {exc.strerror}")
                    continue
                summary = {"path": root, "type": _kind(top.st_mode), "files": 0, "bytes": 0}
                if stat.S_ISLNK(top.st_mode):
                    self.report.warnings.append(f"{root} is a symlink: stored as a link")
                self.report.paths.append(summary)
                for path in self._walk(root):
                    self._add(tar, path, summary)
        return self.report

    def _walk(self, root: str) -> Any:
        stack = [root]
        while stack:
            path = stack.pop()
            yield path
            try:
                if not stat.S_ISDIR(os.lstat(path).st_mode):
                    continue
                if Path(os.path.realpath(path)).is_relative_to(self.backup_root):
                    continue  # never archive the backups into themselves
                children = sorted(os.listdir(path), reverse=True)
            except OSError as exc:
                self.report.warnings.append(f"{path}: {exc.strerror}")
                continue
            stack.extend(os.path.join(path, c) for c in children)

    def _add(self, tar: tarfile.TarFile, path: str, summary: dict[str, Any]) -> None:
        arcname = path.lstrip("/")
        if path.endswith(SQLITE_COMPANIONS) and path.rsplit("-", 1)[0] in self._snapshotted:
            return
        try:
            mode = os.lstat(path).st_mode
            if stat.S_ISSOCK(mode):
                self.report.warnings.append(f"{path}: socket skipped")
                return
            if stat.S_ISREG(mode):
                self._add_file(tar, path, arcname, summary)
                return
            tar.addfile(tar.gettarinfo(path, arcname))  # directory, symlink, fifo, device
            self.report.entries += 1
        except OSError as exc:
            self.report.warnings.append(f"{path}: {exc.strerror or exc}")

    def _add_file(
        self, tar: tarfile.TarFile, path: str, arcname: str, summary: dict[str, Any]
    ) -> None:
        # O_NOFOLLOW: a file swapped for a symlink since the walk is not followed either
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            info = tar.gettarinfo(arcname=arcname, fileobj=f)
            if info.type == tarfile.LNKTYPE or not info.isreg():
                tar.addfile(info)  # a second name of a file already archived
            elif f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC and self._add_sqlite(tar, path, info):
                pass
            else:
                f.seek(0)
                exact = _Exact(f, info.size)
                tar.addfile(info, cast(IO[bytes], exact))
                if exact.short:
                    self.report.warnings.append(f"{path}: shrank while archived (zero-padded)")
        self.report.entries += 1
        self.report.files += 1
        self.report.bytes += info.size
        summary["files"] += 1
        summary["bytes"] += info.size

    def _add_sqlite(self, tar: tarfile.TarFile, path: str, info: tarfile.TarInfo) -> bool:
        """A consistent copy through SQLite's online backup API; False to copy bytes."""
        fd, tmp = tempfile.mkstemp(prefix=".sqlite-", dir=self.folder)
        os.close(fd)
        try:
            uri = f"file:{urllib.parse.quote(path)}?mode=ro"
            src = sqlite3.connect(uri, uri=True, timeout=30)
            try:
                dst = sqlite3.connect(tmp)
                try:
                    src.backup(dst)
                finally:
                    dst.close()
            finally:
                src.close()
            info.size = os.path.getsize(tmp)
            with open(tmp, "rb") as snap:
                tar.addfile(info, snap)
        except sqlite3.Error as exc:
            self.report.warnings.append(f"{path}: SQLite backup failed ({exc}); copied as is")
            return False
        finally:
            os.unlink(tmp)
        self._snapshotted.add(path)
        self.report.sqlite_snapshots.append(path)
        return True


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symlink"
    return "directory" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "other"
