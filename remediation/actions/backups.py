"""backup_database, and what the backup actions share (lock, signing key, stale leftovers).

Runbook 000 "4. Database Maintenance" (`pg_dump` before major updates), runbook 001
"Monthly Operations 2. Backup Verification" (retention policy) and "Scheduled Maintenance:
Pre-Maintenance". Proving a dump restores is verify_backup (actions/verify_backup.py);
SQLite files and .env (runbook 003 "Backup and Recovery") are backup_files
(actions/backup_files.py). Where the files go and how many are kept:
REMEDIATION_BACKUP__* (see remediation/backups for the layout).
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg

from remediation import backups, resolve, signing
from remediation.backups import BackupError, Child
from remediation.clients import pg
from remediation.context import ActionContext, CheckContext, Resolved
from remediation.errors import ConfigError, Deferred, Refused
from remediation.findings import ActionResult, FollowUp
from remediation.params import ActionParams
from remediation.registry import action
from remediation.settings import BackupSettings

DUMP_TIMEOUT = timedelta(hours=2)
MAX_DELETIONS_PER_RUN = 20


class BackupDatabaseParams(ActionParams):
    """Which configured PostgreSQL target to dump."""


def stale_after(cfg: BackupSettings, limit: timedelta) -> float:
    """Leftovers older than this cannot belong to a run that is still going."""
    return max(limit.total_seconds(), 2.0 * cfg.timeout_seconds) + 3600


def busy(folder: Path) -> Deferred:
    """Raised when another backup job holds the folder's lock: not now, nothing spent."""
    return Deferred(f"another backup job holds {folder}/.lock")


def signing_key(ctx: CheckContext) -> bytes:
    """The manifest key; Refused naming REMEDIATION_SIGNING_KEY when it is not configured
    (a backup whose manifest cannot be authenticated is not worth taking)."""
    try:
        return signing.key_of(ctx.settings)
    except ConfigError as exc:
        raise Refused(str(exc)) from None


def resolve_database(ctx: CheckContext, params: Any) -> Resolved:
    """The configured PostgreSQL target as configured (its folder, lock and guards)."""
    signing_key(ctx)
    return resolve.postgres(ctx, params)


# --- backup_database ----------------------------------------------------------------------


@action(
    "backup_database",
    resolve=resolve_database,
    timeout=DUMP_TIMEOUT,
    cooldown=timedelta(minutes=10),
    max_per_hour=4,
)
def backup_database(ctx: ActionContext, params: BackupDatabaseParams) -> ActionResult:
    """pg_dump -Fc of the target into REMEDIATION_BACKUP__DIR/<target>/, then retention.

    Runbook 000 "4. Database Maintenance" (pg_dump before major updates), 001 "Scheduled
    Maintenance: Pre-Maintenance" (backup database) and "Monthly Operations 2. Backup
    Verification". The manifest next to the dump records its size, sha256, the server and
    pg_dump versions and the exact row count of every table, counted in the very snapshot
    pg_dump reads (so verify_backup can compare a restore with it). The password travels in
    PGPASSWORD, never on the command line. Retention keeps the newest backup of each of the
    last KEEP_DAILY days, KEEP_WEEKLY ISO weeks and KEEP_MONTHLY months, never the newest
    nor the newest verified one, and deletes only our own dump files. The manifest is
    signed (HMAC, REMEDIATION_SIGNING_KEY); one that does not match is never trusted. The
    new dump is handed straight to verify_backup (same incident, its own guards), so it is
    proven restorable minutes after it was taken. Cooldown 10 min: the freshness check, the
    folder lock and the hourly budget pace backups; after a dump is found rotten a new one
    may follow at once."""
    cfg, key = ctx.settings.backup, signing.key_of(ctx.settings)
    dsn = ctx.postgres_dsn(params.target)
    folder = backups.target_dir(cfg.dir, params.target)
    with backups.folder_lock(folder) as mine:
        if not mine:
            raise busy(folder)
        manifest = _dump(ctx, params.target, dsn, folder, key)
        policy = backups.Retention(
            cfg.keep_daily, cfg.keep_weekly, cfg.keep_monthly, MAX_DELETIONS_PER_RUN
        )
        retention = backups.apply_retention(
            folder, params.target, policy, key=key, stale_seconds=stale_after(cfg, DUMP_TIMEOUT)
        )
    ctx.log.info("backup written", file=manifest["file"], size=manifest["size"])
    verify = FollowUp(
        action="verify_backup", params={"target": params.target, "file": manifest["file"]}
    )
    return ActionResult(
        follow_up=[verify],
        summary=f"dumped {manifest['database']} to {manifest['file']} ({manifest['size']} bytes,"
        f" {len(manifest['tables'])} tables, {manifest['row_total']} rows);"
        f" retention deleted {len(retention['deleted'])}"
        + "".join(f"; {n}" for n in retention_note(retention)),
        detail={
            "path": str(folder / manifest["file"]),
            **{k: manifest[k] for k in ("file", "size", "sha256", "row_total", "duration_seconds")},
            "retention": retention,
        },
    )


def _dump(ctx: ActionContext, target: str, dsn: str, folder: Path, key: bytes) -> dict[str, Any]:
    started, clock = backups.now(), time.monotonic()
    final = folder / backups.dump_name(target, started)
    if final.exists():
        raise BackupError(f"{final.name} already exists (one backup per target per second)")
    partial = backups.partial_path(final)
    tool = backups.find_tool("pg_dump")
    client = backups.libpq(dsn, connect_timeout=ctx.settings.postgres.connect_timeout_seconds)
    os.close(backups.private_file(partial))
    try:
        snap = _dump_in_snapshot(ctx, dsn, tool, client, partial)
        backups.fsync_file(partial)
        manifest: dict[str, Any] = {
            "format": backups.MANIFEST_FORMAT,
            "kind": "postgres",
            "target": target.lower(),
            "file": final.name,
            "size": partial.stat().st_size,
            "sha256": backups.sha256_file(partial),
            "pg_dump_version": backups.tool_version(tool),
            "started_at": started.isoformat(),
            "finished_at": backups.now().isoformat(),
            "duration_seconds": round(time.monotonic() - clock, 3),
            "verification": None,
            **snap,
        }
        manifest = backups.write_manifest(backups.manifest_path(final), manifest, key)
        os.replace(partial, final)
        backups.fsync_dir(folder)
    except BaseException:
        partial.unlink(missing_ok=True)
        if not final.exists():
            backups.manifest_path(final).unlink(missing_ok=True)
        raise
    return manifest


def _dump_in_snapshot(
    ctx: ActionContext, dsn: str, tool: str, client: backups.Libpq, out: Path
) -> dict[str, Any]:
    """Export a snapshot, run pg_dump --snapshot on it and count rows in it meanwhile."""
    cfg = ctx.settings.backup
    conn = pg.connect(
        dsn,
        autocommit=False,
        timeout=ctx.settings.postgres.connect_timeout_seconds,
        statement_timeout_ms=cfg.timeout_seconds * 1000,
    )
    try:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        # Idle in transaction while pg_dump runs: the server must not end us meanwhile.
        conn.execute("SET LOCAL idle_in_transaction_session_timeout = 0")
        conn.execute("SET LOCAL row_security = off")  # as pg_dump: all rows or an error
        conn.execute("SELECT set_config('lock_timeout', %s, true)", (backups.LOCK_WAIT,))
        row = conn.execute(
            "SELECT pg_export_snapshot(), current_database(), current_setting('server_version'),"
            " current_setting('server_version_num')::int"
        ).fetchone()
        if row is None:
            raise BackupError("could not export a snapshot", "dump")
        snapshot, database, server_version, server_version_num = row
        options = ["--format=custom", "--no-password", f"--snapshot={snapshot}"]
        options += [f"--lock-wait-timeout={backups.LOCK_WAIT}", f"--file={out}"]
        argv = [tool, *options, client.arg()]
        deadline = time.monotonic() + cfg.timeout_seconds
        with client.environment() as env, Child("dump", argv, env) as child:
            counts = backups.count_rows(conn, backups.user_tables(conn))
            child.wait(max(deadline - time.monotonic(), 1))
    finally:
        conn.close()  # ends the read-only transaction; pg_dump imported the snapshot long ago
    return {
        "database": database,
        "server_version": server_version,
        "server_version_num": server_version_num,
        "snapshot": snapshot,
        "tables": backups.table_rows(counts),
        "row_total": sum(counts.values()),
    }


def retention_note(retention: dict[str, Any]) -> list[str]:
    """A line for the summary when retention could not delete everything it meant to."""
    errors = retention["errors"]
    return [f"retention could not delete {len(errors)}: {errors[0]}"] if errors else []
