"""Backups: dump a database, prove the dump restores, archive configuration and SQLite files.

Runbook 000 "4. Database Maintenance" (`pg_dump` before major updates), runbook 001
"Monthly Operations 2. Backup Verification" (test restoration, validate integrity, retention
policy) and "Scheduled Maintenance: Pre-Maintenance", runbook 003 "Backup and Recovery"
(SQLite files and .env). Where the files go and how many are kept:
REMEDIATION_BACKUP__* (see remediation/backups.py for the layout).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
from pydantic import Field, model_validator

from remediation import backups, quarantine, resolve, signing
from remediation.backups import BackupError, Child
from remediation.clients import pg
from remediation.context import ActionContext, CheckContext, Resolved
from remediation.errors import ConfigError, Deferred, Refused
from remediation.findings import ActionResult, FollowUp
from remediation.params import ActionParams
from remediation.registry import action
from remediation.settings import BackupSettings

DUMP_TIMEOUT = timedelta(hours=2)
VERIFY_TIMEOUT = timedelta(hours=3)
MAX_DELETIONS_PER_RUN = 20
STEPS = ("checksum", "full_read", "restore", "row_counts")


class BackupDatabaseParams(ActionParams):
    """Which configured PostgreSQL target to dump."""


class VerifyBackupParams(ActionParams):
    file: str | None = Field(
        None,
        max_length=200,
        description="a dump of this target, e.g. app-20261124T030000Z.dump; default the newest",
    )
    jobs: int = Field(1, ge=1, le=8, description="pg_restore --jobs for the scratch restore")

    @model_validator(mode="after")
    def _file_of_this_target(self) -> VerifyBackupParams:
        if self.file is not None and not backups.dump_pattern(self.target).match(self.file):
            raise ValueError(
                f"file must be a dump name of target {self.target!r}"
                f" ({self.target.lower()}-YYYYmmddTHHMMSSZ.dump), without folders"
            )
        return self


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


def resolve_verify(ctx: CheckContext, params: VerifyBackupParams) -> Resolved:
    """The configured target, and the dump to verify among its backups (default the newest,
    named in the canonical params); Refused when there is none or the named one is not
    there. Reads the folder only."""
    target = resolve_database(ctx, params).params.target
    folder = backups.target_dir(ctx.settings.backup.dir, target)
    names = [path.name for path, _ in backups.dump_files(folder, target)]
    if not names:
        raise Refused(f"no backups of {target!r} in {folder}")
    if params.file is not None and params.file not in names:
        raise Refused(f"{params.file} is not among the backups of {target!r} in {folder}")
    file = params.file or names[0]
    return resolve.canonical(params, {"dir": str(folder)}, target=target, file=file)


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
        argv = [
            tool, "--format=custom", "--no-password", f"--snapshot={snapshot}",
            f"--lock-wait-timeout={backups.LOCK_WAIT}", f"--file={out}", client.arg(),
        ]  # fmt: skip
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


# --- verify_backup ------------------------------------------------------------------------


def _dump_resource(params: VerifyBackupParams) -> str:
    """Per dump: verifying one dump by hand is not held up by another's cooldown."""
    return f"{params.target}/{params.file}"


@action(
    "verify_backup",
    resolve=resolve_verify,
    resource=_dump_resource,
    timeout=VERIFY_TIMEOUT,
    cooldown=timedelta(minutes=10),
    max_per_hour=12,
)
def verify_backup(ctx: ActionContext, params: VerifyBackupParams) -> ActionResult:
    """Prove a dump restores: manifest, checksum, full read, restore into a scratch database,
    row counts.

    Runbook 001 "Monthly Operations 2. Backup Verification" (test backup restoration,
    validate backup integrity). Default: the newest dump of the target; a target without
    dumps, or a file that is not among them, is refused. Steps: (0) the manifest is
    authenticated (its HMAC matches REMEDIATION_SIGNING_KEY); (1) the dump, opened once, has
    the manifest's size and sha256, before any tool reads it; (2) `pg_restore -f /dev/null`
    reads every byte (`--list` would pass a truncated dump); (3) `pg_restore --no-owner
    --no-privileges` into a scratch database rem_verify_<hex> created on the target's server
    (its role needs CREATEDB); (4) every table's row count equals the manifest's. (2) and
    (3) run at once, on the very file (1) checked: a file swapped in meanwhile is never
    read. The scratch database is dropped whatever happens. The result is written into the
    manifest (signed again); a failed step fails the action, which notifies, and the dump
    with its manifest is moved aside into <target>/quarantine/ with a note saying why
    (kept out of retention for the operator to inspect and remove). Guards are per dump, so
    a by-hand verification of one dump is not held up by the cooldown of another's."""
    cfg, key = ctx.settings.backup, signing.key_of(ctx.settings)
    dsn = ctx.postgres_dsn(params.target)
    folder = backups.target_dir(cfg.dir, params.target)
    with backups.folder_lock(folder) as mine:
        if not mine:
            raise busy(folder)
        backup = _pick(folder, params, key)
        if backup.manifest is None:  # never re-signed: that would launder it
            result: dict[str, Any] = {
                "ok": False,
                "failed_step": "manifest",
                "message": backup.error,
            }
        else:
            verdict = Verification(backup, dsn, cfg, ctx.settings.postgres.connect_timeout_seconds)
            result = verdict.run(params.jobs)
            backups.write_manifest(
                backups.manifest_path(backup.path),
                {**backup.manifest, "verification": result},
                key,
            )
        if not result["ok"]:
            result["quarantined"] = _quarantine(folder, backup, result)
    if result["ok"]:
        ctx.log.info("backup verified", file=backup.name, total_s=result["timings"]["total"])
        summary = f"{backup.name} verified: restored {result['tables']} tables, row counts match"
    else:
        ctx.log.error("backup verification failed", file=backup.name, step=result["failed_step"])
        summary = (
            f"{backup.name}: {result['failed_step']} step failed: {result['message']};"
            f" moved to {result['quarantined']}"
        )
    return ActionResult(
        ok=result["ok"], changed=True, summary=summary, detail={"file": backup.name, **result}
    )


def _quarantine(folder: Path, backup: backups.Backup, result: dict[str, Any]) -> str:
    """Move a dump that failed verification, and its manifest, into <target>/quarantine/
    with a note saying why: evidence for the operator, out of retention's reach."""
    into = quarantine.folder(folder, backups.QUARANTINE)
    quarantine.move_aside(
        [backup.path, backups.manifest_path(backup.path)],
        into,
        f"{result['failed_step']} step failed: {result['message']}",
        failed_step=result["failed_step"],
        taken_at=backup.taken_at.isoformat(),
    )
    return str(into)


def _pick(folder: Path, params: VerifyBackupParams, key: bytes) -> backups.Backup:
    """The dump the resolve step named (the newest when called directly); Refused when it
    went away since (retention), before anything was changed."""
    found = backups.list_backups(folder, params.target, key)
    if not found:
        raise Refused(f"no backups of {params.target!r} in {folder}")
    for backup in found:
        if backup.name == (params.file or found[0].name):
            return backup
    raise Refused(f"{params.file} is no longer in {folder}")


@dataclass
class Verification:
    """One verification run of one dump; run() returns what goes into the manifest."""

    backup: backups.Backup
    dsn: str
    cfg: BackupSettings
    connect_timeout: int
    timings: dict[str, float] = field(default_factory=dict)

    def run(self, jobs: int) -> dict[str, Any]:
        """Checksum first; only a dump that matches its manifest reaches a scratch database.
        A problem creating the scratch database is not the dump's: raised, not recorded."""
        clock = time.monotonic()
        result: dict[str, Any] = {
            "ok": False, "failed_step": None, "message": "", "mismatches": [],
            "scratch_database": None, "tables": 0, "timings": self.timings,
            "pg_restore_version": backups.tool_version(backups.find_tool("pg_restore")),
        }  # fmt: skip
        try:
            with backups.open_dump(self.backup.path) as fd:
                self._checksum(fd)
                scratch = result["scratch_database"] = self._create_scratch()
                try:
                    self._read_and_restore(fd, scratch, jobs)
                    result["tables"] = self._compare_rows(scratch, result["mismatches"])
                finally:
                    self._drop(scratch, result)
            result["ok"] = True
        except BackupError as exc:
            if exc.step == "scratch":
                raise
            result["failed_step"], result["message"] = exc.step or "restore", str(exc)
        finally:
            self.timings["total"] = round(time.monotonic() - clock, 3)
            result["verified_at"] = backups.now().isoformat()
        return result

    def _admin(self) -> psycopg.Connection:
        return pg.connect(self.dsn, timeout=self.connect_timeout)

    def _create_scratch(self) -> str:
        clock, scratch = time.monotonic(), backups.scratch_name()
        try:
            with self._admin() as admin:
                backups.drop_stale_scratch(admin, stale_after(self.cfg, VERIFY_TIMEOUT))
                backups.create_scratch(admin, scratch)
        except psycopg.Error as exc:
            raise BackupError(
                f"cannot create scratch database {scratch} on the target's server (its role"
                f" needs CREATEDB): {exc}",
                "scratch",
            ) from exc
        self.timings["scratch"] = round(time.monotonic() - clock, 3)
        return scratch

    def _drop(self, scratch: str, result: dict[str, Any]) -> None:
        clock = time.monotonic()
        try:
            with self._admin() as admin:
                backups.drop_database(admin, scratch)
        except psycopg.Error as exc:  # the next verification drops it once it is stale
            result["drop_error"] = f"could not drop {scratch}: {exc}"
        self.timings["drop"] = round(time.monotonic() - clock, 3)

    def _timed(self, step: str, fn: Any) -> Any:
        def run() -> None:
            clock = time.monotonic()
            try:
                fn()
            finally:
                self.timings[step] = round(time.monotonic() - clock, 3)

        return run

    def _checksum(self, fd: int) -> None:
        """The open dump's size and sha256 against the authenticated manifest."""
        manifest, clock = self.backup.manifest or {}, time.monotonic()
        try:
            size, expected = os.fstat(fd).st_size, str(manifest.get("sha256", ""))
            if size != manifest.get("size"):
                raise BackupError(
                    f"size {size} bytes does not match the manifest's {manifest.get('size')}:"
                    " the file changed after the dump",
                    "checksum",
                )
            actual = backups.sha256_fd(fd)
            if actual != expected:
                raise BackupError(
                    f"sha256 {actual} does not match the manifest's {expected or '(none)'}:"
                    " the file changed after the dump",
                    "checksum",
                )
        finally:
            self.timings["checksum"] = round(time.monotonic() - clock, 3)

    def _read_and_restore(self, fd: int, scratch: str, jobs: int) -> None:
        """Full read and restore side by side, both reading the open file the checksum read
        (/dev/fd/N); on a failure the restore is stopped and the first failed step in STEPS
        order is reported."""
        dump, tool = f"/dev/fd/{fd}", backups.find_tool("pg_restore")
        client = backups.libpq(self.dsn, connect_timeout=self.connect_timeout, dbname=scratch)
        # a throwaway database needs no durable commits
        options = (client.env.get("PGOPTIONS", "") + " -c synchronous_commit=off").strip()
        restore_argv = [
            tool, "--no-owner", "--no-privileges", "--exit-on-error", "--no-password",
            f"--jobs={jobs}", client.arg(), dump,
        ]  # fmt: skip
        read_argv = [tool, f"--file={os.devnull}", dump]
        offline = backups.child_env(connects=False)  # reads a file: no libpq variables
        limit = float(self.cfg.timeout_seconds)
        with (
            client.environment(PGOPTIONS=options) as env,
            Child("full_read", read_argv, offline, nice=10, pass_fds=[fd]) as reader,
            Child("restore", restore_argv, env, pass_fds=[fd]) as restorer,
            ThreadPoolExecutor(2, thread_name_prefix="verify") as pool,
        ):
            futures: dict[str, Future[None]] = {
                "full_read": pool.submit(self._timed("full_read", lambda: reader.wait(limit))),
                "restore": pool.submit(self._timed("restore", lambda: restorer.wait(limit))),
            }
            try:
                done, _ = wait(futures.values(), return_when=FIRST_EXCEPTION)
                if any(f.exception() for f in done):
                    restorer.kill()
                wait(futures.values())
            finally:  # also on a soft time limit: stop everything before the pool waits
                restorer.kill()
                reader.kill()
        for step in STEPS[1:3]:
            exc = futures[step].exception()
            if exc is not None:
                raise exc if isinstance(exc, BackupError) else BackupError(str(exc), step)

    def _compare_rows(self, scratch: str, mismatches: list[dict[str, Any]]) -> int:
        clock = time.monotonic()
        expected = {
            (t["schema"], t["name"]): t["rows"]
            for t in (self.backup.manifest or {}).get("tables", [])
        }
        with pg.connect(
            backups.with_dbname(self.dsn, scratch),
            timeout=self.connect_timeout,
            statement_timeout_ms=self.cfg.timeout_seconds * 1000,
        ) as conn:
            conn.execute("SET row_security = off")
            restored = backups.count_rows(conn, backups.user_tables(conn))
        self.timings["row_counts"] = round(time.monotonic() - clock, 3)
        for schema, name in sorted(set(expected) | set(restored)):
            want, got = expected.get((schema, name)), restored.get((schema, name))
            if want != got:
                mismatches.append(
                    {"schema": schema, "name": name, "expected": want, "restored": got}
                )
        if mismatches:
            first = mismatches[0]
            raise BackupError(
                f"{len(mismatches)} table(s) differ from the manifest, first"
                f" {first['schema']}.{first['name']}: {first['expected']} rows at dump time,"
                f" {first['restored']} restored",
                "row_counts",
            )
        return len(restored)


def retention_note(retention: dict[str, Any]) -> list[str]:
    """A line for the summary when retention could not delete everything it meant to."""
    errors = retention["errors"]
    return [f"retention could not delete {len(errors)}: {errors[0]}"] if errors else []
