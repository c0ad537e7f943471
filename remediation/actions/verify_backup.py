"""verify_backup: prove a dump restores (manifest, checksum, full read, scratch restore, rows).

Runbook 001 "Monthly Operations 2. Backup Verification" (test restoration, validate
integrity). The dumps come from backup_database (remediation/actions/backups.py, which also
holds the helpers both actions share); the layout on disk is remediation/backups.
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
from remediation.actions.backups import busy, resolve_database, stale_after
from remediation.backups import BackupError, Child
from remediation.clients import pg
from remediation.context import ActionContext, CheckContext, Resolved
from remediation.errors import Refused
from remediation.findings import ActionResult
from remediation.params import ActionParams
from remediation.registry import action
from remediation.settings import BackupSettings

VERIFY_TIMEOUT = timedelta(hours=3)
STEPS = ("checksum", "full_read", "restore", "row_counts")


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
            "ok": False,
            "failed_step": None,
            "message": "",
            "mismatches": [],
            "scratch_database": None,
            "tables": 0,
            "timings": self.timings,
            "pg_restore_version": backups.tool_version(backups.find_tool("pg_restore")),
        }
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
        restore = ["--no-owner", "--no-privileges", "--exit-on-error", "--no-password"]
        restore_argv = [tool, *restore, f"--jobs={jobs}", client.arg(), dump]
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
