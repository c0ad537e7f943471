"""backup_database, verify_backup and backup_files against a real PostgreSQL and real files."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import tarfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydantic import ValidationError

from remediation import backups, quarantine
from remediation.actions.backup_files import BackupFilesParams, backup_files, resolve_files
from remediation.actions.backups import BackupDatabaseParams, backup_database, resolve_database
from remediation.actions.verify_backup import VerifyBackupParams, resolve_verify, verify_backup
from remediation.context import ActionContext, CheckContext
from remediation.errors import Refused
from remediation.logging import get_logger
from remediation.runner import Runner
from tests.support.backups import KEY, fill, write_backup
from tests.support.runner import Recorder

HOSTILE = ["Price History", 'x"; drop table y; --']


def ctx_for(settings_env: Any, target_db: str, tmp_path: Path, **extra: str) -> ActionContext:
    s = settings_env(
        REMEDIATION_POSTGRES_TARGETS__APP=target_db,
        REMEDIATION_BACKUP__DIR=str(tmp_path / "backups"),
        **extra,
    )
    return ActionContext(s, get_logger())


def scratch_databases(pg_admin: str) -> set[str]:
    with psycopg.connect(pg_admin) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'rem_verify_%'")
        return {r[0] for r in rows.fetchall()}


def quarantined(dump: Path) -> Path:
    """Where a dump that failed verification is kept: <target folder>/quarantine/<name>."""
    return dump.parent / backups.QUARANTINE / dump.name


def manifest_of(path: Path) -> dict[str, Any]:
    return json.loads(backups.manifest_path(path).read_text())


def rewrite_manifest(dump: Path, **changes: Any) -> None:
    """Change a manifest and sign it again, as someone holding the key would."""
    backups.write_manifest(backups.manifest_path(dump), {**manifest_of(dump), **changes}, KEY)


def tamper_manifest(dump: Path, **changes: Any) -> None:
    """Change a manifest without signing it again (its old hmac stays)."""
    backups.write_json(backups.manifest_path(dump), {**manifest_of(dump), **changes})


def flip_byte(dump: Path) -> None:
    with open(dump, "r+b") as f:
        f.seek(dump.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


def _state(pid: int) -> str:
    """R, S, T (stopped), Z ... from /proc/<pid>/stat."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


class Spawned:
    """Records every backup tool started (argv, env given, /proc/<pid>/environ read at once)
    and every scratch database created, then lets them happen for real."""

    def __init__(self, patch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[list[str], dict[str, str], dict[str, str]]] = []
        self.scratch: list[str] = []
        self._spawn, self._create = backups.spawn, backups.create_scratch
        patch.setattr(backups, "spawn", self.spawn)
        patch.setattr(backups, "create_scratch", self.create)

    def spawn(self, argv: list[str], env: dict[str, str], stderr: Any, pass_fds: Any = ()) -> Any:
        proc = self._spawn(argv, env, stderr, pass_fds)
        # Stopped before its first instruction (a signal sent during exec waits for exec to
        # finish), so /proc shows the environment the tool really started with.
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            deadline = time.monotonic() + 10
            while _state(proc.pid) != "T" and time.monotonic() < deadline:
                time.sleep(0.001)
            raw = Path(f"/proc/{proc.pid}/environ").read_bytes()
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        seen = dict(item.split("=", 1) for item in raw.decode().split("\0") if item)
        self.calls.append((argv, env, seen))
        return proc

    def create(self, conn: Any, name: str) -> None:
        self.scratch.append(name)
        self._create(conn, name)

    def tools(self) -> list[str]:
        return [Path(argv[0]).name for argv, _, _ in self.calls]


def made(result: Any) -> Path:
    assert result.ok, result.summary
    return Path(result.detail["path"])


def test_good_dump_with_hostile_names_is_dumped_counted_and_verified(
    settings_env: Any, target_db: str, tmp_path: Path, pg_admin: str
) -> None:
    """Tables named `Price History` and `x"; drop table y; --` are dumped, counted, restored
    and verified; `y` survives and the scratch database is gone afterwards."""
    ctx = ctx_for(settings_env, target_db, tmp_path)
    fill(target_db, {HOSTILE[0]: 300, HOSTILE[1]: 200, "y": 10})
    before = scratch_databases(pg_admin)
    dump = made(backup_database(ctx, BackupDatabaseParams(target="app")))
    manifest = manifest_of(dump)
    assert {(t["name"], t["rows"]) for t in manifest["tables"]} == {
        (HOSTILE[0], 300),
        (HOSTILE[1], 200),
        ("y", 10),
    }
    assert (
        manifest["sha256"] == backups.sha256_file(dump) and manifest["size"] == dump.stat().st_size
    )
    assert backups.read_manifest(backups.manifest_path(dump), KEY)["sha256"] == manifest["sha256"]
    assert manifest["database"] == target_db.rsplit("/", 1)[1]
    assert manifest["pg_dump_version"].startswith("pg_dump (PostgreSQL)")
    assert oct(dump.stat().st_mode & 0o777) == "0o600"
    result = verify_backup(ctx, VerifyBackupParams(target="app"))
    assert (result.ok, result.detail["failed_step"], result.detail["tables"]) == (True, None, 3)
    assert manifest_of(dump)["verification"]["ok"] is True
    assert scratch_databases(pg_admin) == before
    with psycopg.connect(target_db) as conn:
        assert conn.execute("SELECT count(*) FROM y").fetchone() == (10,)


def test_dump_counts_rows_in_the_snapshot_pg_dump_reads(
    settings_env: Any, target_db: str, tmp_path: Path
) -> None:
    """Rows committed while the dump runs are in neither the dump nor the manifest's counts."""
    ctx = ctx_for(settings_env, target_db, tmp_path)
    fill(target_db, {"t": 100})
    spawned = backups.spawn

    def insert_then_spawn(argv: list[str], env: dict[str, str], stderr: Any, fds: Any = ()) -> Any:
        with psycopg.connect(target_db, autocommit=True) as conn:  # after the snapshot
            conn.execute("INSERT INTO t SELECT g, 'late' FROM generate_series(101, 150) g")
        return spawned(argv, env, stderr, fds)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(backups, "spawn", insert_then_spawn)
        dump = made(backup_database(ctx, BackupDatabaseParams(target="app")))
    assert manifest_of(dump)["tables"] == [{"schema": "public", "name": "t", "rows": 100}]
    assert verify_backup(ctx, VerifyBackupParams(target="app")).ok  # the dump holds 100 too


def test_truncated_dump_is_caught_by_the_full_read(
    settings_env: Any, target_db: str, tmp_path: Path, pg_admin: str
) -> None:
    """A dump cut to 90 % (its checksum rewritten to match) fails at the full read step."""
    ctx = ctx_for(settings_env, target_db, tmp_path)
    fill(target_db, {"a": 2000, "b": 2000})
    before = scratch_databases(pg_admin)
    dump = made(backup_database(ctx, BackupDatabaseParams(target="app")))
    os.truncate(dump, int(dump.stat().st_size * 0.9))
    rewrite_manifest(dump, sha256=backups.sha256_file(dump), size=dump.stat().st_size)
    result = verify_backup(ctx, VerifyBackupParams(target="app", file=dump.name))
    assert (result.ok, result.detail["failed_step"]) == (False, "full_read")
    assert "full_read step failed" in result.summary
    assert not dump.exists() and quarantined(dump).exists()  # moved aside, kept
    verification = manifest_of(quarantined(dump))["verification"]
    assert (verification["ok"], verification["failed_step"]) == (False, "full_read")
    (note,) = quarantine.listed(quarantined(dump).parent)
    assert note.path == quarantined(dump) and note.reason.startswith("full_read step failed")
    assert scratch_databases(pg_admin) == before


def test_dump_that_does_not_restore_is_caught_by_the_restore(
    settings_env: Any, target_db: str, tmp_path: Path, pg_admin: str
) -> None:
    """A dump that reads fine but cannot be restored (a CHECK querying a table restored
    later) fails at the restore step."""
    ctx = ctx_for(settings_env, target_db, tmp_path)
    with psycopg.connect(target_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE b_ref (v int); INSERT INTO b_ref VALUES (1)")
        conn.execute(
            "CREATE FUNCTION known(int) RETURNS bool LANGUAGE sql"
            " AS 'SELECT EXISTS (SELECT 1 FROM public.b_ref WHERE v = $1)'"
        )
        conn.execute(
            "CREATE TABLE a_main (v int CHECK (public.known(v))); INSERT INTO a_main VALUES (1)"
        )
    before = scratch_databases(pg_admin)
    made(backup_database(ctx, BackupDatabaseParams(target="app")))
    result = verify_backup(ctx, VerifyBackupParams(target="app"))
    assert (result.ok, result.detail["failed_step"]) == (False, "restore")
    assert "a_main_v_check" in result.detail["message"]
    assert scratch_databases(pg_admin) == before


def test_changed_byte_fails_at_the_checksum_before_anything_is_restored(
    settings_env: Any, target_db: str, tmp_path: Path, pg_admin: str, monkeypatch: Any
) -> None:
    """One flipped byte with the manifest left alone fails at the checksum step: no tool is
    started and no rem_verify_ database is created; the failure is recorded, signed."""
    ctx = ctx_for(settings_env, target_db, tmp_path)
    fill(target_db, {"a": 500})
    dump = made(backup_database(ctx, BackupDatabaseParams(target="app")))
    flip_byte(dump)
    before = scratch_databases(pg_admin)
    spawned = Spawned(monkeypatch)
    result = verify_backup(ctx, VerifyBackupParams(target="app"))
    assert (result.ok, result.detail["failed_step"]) == (False, "checksum")
    assert "does not match the manifest" in result.detail["message"]
    assert (spawned.calls, spawned.scratch, result.detail["scratch_database"]) == ([], [], None)
    assert scratch_databases(pg_admin) == before
    recorded = backups.read_manifest(backups.manifest_path(quarantined(dump)), KEY)["verification"]
    assert (recorded["ok"], recorded["failed_step"]) == (False, "checksum")


def other_key(dump: Path) -> None:
    backups.write_manifest(backups.manifest_path(dump), manifest_of(dump), b"k" * 32)


def no_mac(dump: Path) -> None:
    backups.write_json(
        backups.manifest_path(dump), {k: v for k, v in manifest_of(dump).items() if k != "hmac"}
    )


def edited_checksum(dump: Path) -> None:
    flip_byte(dump)
    tamper_manifest(dump, sha256=backups.sha256_file(dump))


def edited_rows(dump: Path) -> None:
    tables = manifest_of(dump)["tables"]
    tamper_manifest(dump, tables=[{**t, "rows": t["rows"] + 1} for t in tables])


@pytest.mark.parametrize(
    ("tamper", "why"),
    [
        (edited_checksum, "does not match"),
        (edited_rows, "does not match"),
        (other_key, "another REMEDIATION_SIGNING_KEY"),
        (no_mac, "written without REMEDIATION_SIGNING_KEY"),
    ],
)
def test_manifest_that_is_not_authenticated_fails_at_the_manifest_step(
    settings_env: Any, target_db: str, tmp_path: Path, monkeypatch: Any, tamper: Any, why: str
) -> None:
    """A manifest whose sha256 or row counts were edited without signing it again, one
    signed with another key and one with no mac fail at "manifest": nothing is restored and
    the manifest is left as it was (never signed again)."""
    ctx = ctx_for(settings_env, target_db, tmp_path)
    fill(target_db, {"a": 50})
    dump = made(backup_database(ctx, BackupDatabaseParams(target="app")))
    tamper(dump)
    text = backups.manifest_path(dump).read_text()
    spawned = Spawned(monkeypatch)
    result = verify_backup(ctx, VerifyBackupParams(target="app"))
    assert (result.ok, result.detail["failed_step"]) == (False, "manifest")
    assert "is not authenticated" in result.summary and why in result.summary
    assert (spawned.calls, spawned.scratch) == ([], [])
    assert backups.manifest_path(quarantined(dump)).read_text() == text  # never signed again


def test_dump_swapped_after_the_checksum_is_never_read(
    settings_env: Any, target_db: str, tmp_path: Path, monkeypatch: Any
) -> None:
    """Another dump renamed over the checked one before the restore starts is never read:
    the tools read the open file the checksum read (/dev/fd/N), and the verification of the
    original passes; a symlink in a dump's place is not opened, a FIFO not waited on."""
    ctx = ctx_for(settings_env, target_db, tmp_path)
    fill(target_db, {"t": 100})
    dump = made(backup_database(ctx, BackupDatabaseParams(target="app")))
    with psycopg.connect(target_db, autocommit=True) as conn:
        conn.execute("DELETE FROM t WHERE id > 40")
    other = tmp_path / "other.dump"
    pg_dump = [backups.find_tool("pg_dump"), "-Fc", f"--file={other}", f"--dbname={target_db}"]
    subprocess.run(pg_dump, check=True)
    spawned = Spawned(monkeypatch)
    real_create = spawned._create

    def swap_then_create(conn: Any, name: str) -> None:  # after the checksum, before restore
        os.replace(other, dump)
        real_create(conn, name)

    spawned._create = swap_then_create
    result = verify_backup(ctx, VerifyBackupParams(target="app"))
    assert result.ok, result.summary
    assert not other.exists() and backups.sha256_file(dump) != manifest_of(dump)["sha256"]
    assert spawned.tools() == ["pg_restore", "pg_restore"]
    assert all(argv[-1].startswith("/dev/fd/") for argv, _, _ in spawned.calls)
    link = tmp_path / "link.dump"
    link.symlink_to(dump)
    with pytest.raises(backups.BackupError, match=r"cannot open link\.dump"):
        backups.sha256_file(link)
    os.mkfifo(fifo := tmp_path / "fifo.dump")
    with pytest.raises(backups.BackupError, match=r"fifo\.dump is not a regular file"):
        backups.sha256_file(fifo)  # opened without blocking, then refused


def test_other_rows_are_caught_by_the_row_count_comparison(
    settings_env: Any, target_db: str, tmp_path: Path, pg_admin: str
) -> None:
    """A valid dump with one table's rows changed, checksum rewritten, fails at row_counts."""
    ctx = ctx_for(settings_env, target_db, tmp_path)
    fill(target_db, {"kept": 100, "changed": 100})
    before = scratch_databases(pg_admin)
    dump = made(backup_database(ctx, BackupDatabaseParams(target="app")))
    with psycopg.connect(target_db, autocommit=True) as conn:
        conn.execute("DELETE FROM changed WHERE id > 60")
    other = tmp_path / "other.dump"
    subprocess.run(
        [backups.find_tool("pg_dump"), "-Fc", f"--file={other}", f"--dbname={target_db}"],
        check=True,
    )
    os.replace(other, dump)
    rewrite_manifest(dump, sha256=backups.sha256_file(dump), size=dump.stat().st_size)
    result = verify_backup(ctx, VerifyBackupParams(target="app"))
    assert (result.ok, result.detail["failed_step"]) == (False, "row_counts")
    assert result.detail["mismatches"] == [
        {"schema": "public", "name": "changed", "expected": 100, "restored": 60}
    ]
    verification = manifest_of(quarantined(dump))["verification"]
    assert verification["mismatches"] == result.detail["mismatches"]
    assert scratch_databases(pg_admin) == before


BASE_ENV = {"PATH", "LC_ALL", "LANG", "HOME", "TMPDIR"}


def test_children_get_the_password_in_an_environment_built_from_scratch(
    settings_env: Any, target_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pg_dump and pg_restore, read from /proc/<pid>/environ, hold PATH, a locale, HOME,
    PGPASSWORD (the two that connect) and the worker's libpq TLS mode, nothing else: a
    canary and a REMEDIATION_* secret in os.environ reach none of them; no argv, manifest or
    result holds the password."""
    password = "s3cret-Pw"
    with_password = target_db.replace("postgres@", f"postgres:{password}@")
    ctx = ctx_for(settings_env, with_password, tmp_path)
    fill(target_db, {"t": 10})
    monkeypatch.setenv("CANARY_7f3a", "must-not-leak")
    monkeypatch.setenv("REMEDIATION_CANARY_SECRET", "remediation-secret-must-not-leak")
    monkeypatch.setenv("PGSSLMODE", "disable")
    spawned = Spawned(monkeypatch)
    result = backup_database(ctx, BackupDatabaseParams(target="app"))
    verified = verify_backup(ctx, VerifyBackupParams(target="app"))
    assert result.ok and verified.ok, (result.summary, verified.summary)
    assert sorted(spawned.tools()) == ["pg_dump", "pg_restore", "pg_restore"]
    for argv, given, seen in spawned.calls:
        assert seen == given, "the child's environment is exactly the one built for it"
        connects = any(a.startswith("--dbname=") for a in argv)
        allowed = BASE_ENV | ({"PGPASSWORD", "PGSSLMODE", "PGOPTIONS"} if connects else set())
        assert set(seen) <= allowed and {"PATH", "LC_ALL"} <= set(seen), (argv[0], seen)
        assert seen.get("PGPASSWORD") == (password if connects else None)
        assert seen.get("PGSSLMODE") == ("disable" if connects else None)
        assert "must-not-leak" not in repr(seen) and all(password not in a for a in argv)
    stored = backups.manifest_path(made(result)).read_text()
    assert password not in stored and password not in result.model_dump_json()
    assert password not in verified.model_dump_json() and with_password not in stored


def test_sslpassword_goes_to_a_private_service_file_not_argv(
    target_db: str, tmp_path: Path
) -> None:
    """A DSN's sslpassword (libpq has no variable for it) is kept off the command line: a
    real pg_dump connects with it in a 0600 service file that is gone afterwards."""
    dsn = target_db + "?sslmode=disable&sslpassword=Key-Pass-9"
    client = backups.libpq(dsn, connect_timeout=5)
    assert "Key-Pass-9" not in client.arg() and "Key-Pass-9" not in repr(client)
    assert "Key-Pass-9" not in repr(client.env)
    out = tmp_path / "schema.sql"
    argv = [backups.find_tool("pg_dump"), "--schema-only", f"--file={out}", client.arg()]
    with client.environment() as env:
        service = Path(env["PGSERVICEFILE"])
        assert service.read_text() == "[remediation]\nsslpassword=Key-Pass-9\n"
        assert oct(service.stat().st_mode & 0o777) == "0o600"
        with backups.Child("dump", argv, env) as child:
            child.wait(60)
    assert not service.exists() and out.exists()


def day(text: str) -> datetime:
    return datetime.fromisoformat(text + "T03:00:00+00:00")


def test_retention_keeps_newest_per_day_week_and_month(tmp_path: Path) -> None:
    """120 daily backups: 7 days, 4 ISO weeks, 6 months (5 with backups), the newest verified
    one, and within October the newest that did not fail verification are kept."""
    folder = tmp_path / "app"
    start = day("2026-07-28")
    statuses = {"2026-09-10": "verified", "2026-10-31": "failed"}
    for i in range(120):
        when = start + timedelta(days=i)
        write_backup(folder, when, statuses.get(when.date().isoformat(), "unverified"))
    strangers = ["notes.txt", "app-20200101T030000Z.dump.bak", "other-20200101T030000Z.dump"]
    for name in strangers:
        (folder / name).write_text("not ours")
    outside = tmp_path / "outside.dump"
    outside.write_text("someone else's")
    (folder / "app-20200102T030000Z.dump").symlink_to(outside)
    policy = backups.Retention(daily=7, weekly=4, monthly=6, max_deletions=1000)
    result = backups.apply_retention(folder, "app", policy, key=KEY, stale_seconds=3600)
    kept_days = sorted(n.split("-")[1][:8] for n in result["kept"])
    assert kept_days == sorted(
        [f"202611{d}" for d in (18, 19, 20, 21, 22, 23, 24)]  # days (Nov 22 ends ISO week 47)
        + ["20261115", "20261108"]  # ISO weeks 46 and 45
        + ["20261030", "20260930", "20260831", "20260731"]  # months; Oct 31 failed
        + ["20260910"]  # the newest verified
    )
    remaining = {p.name for p in folder.iterdir()}
    assert remaining == (
        {f"app-{d}T030000Z.dump" for d in kept_days}
        | {f"app-{d}T030000Z.dump.json" for d in kept_days}
        | {*strangers, "app-20200102T030000Z.dump"}
    )
    assert len(result["deleted"]) == 120 - 14 and outside.read_text() == "someone else's"


def test_retention_never_deletes_newest_and_caps_deletions(tmp_path: Path) -> None:
    """With one day kept and a cap of 3, the 3 oldest go; the newest verified one stays;
    a crashed run's partial goes once stale, a running one's stays."""
    folder = tmp_path / "app"
    dumps = [write_backup(folder, day("2026-01-01") + timedelta(days=i)) for i in range(8)]
    write_backup(folder, day("2026-01-01") - timedelta(days=30), "verified")
    crashed, running = (
        folder / ".app-20251201T030000Z.dump.partial",
        folder / ".app-20260109T030000Z.dump.partial",
    )
    for partial in (crashed, running):
        partial.write_bytes(b"PGDMP")
    os.utime(crashed, (1e9, 1e9))
    policy = backups.Retention(daily=1, weekly=0, monthly=0, max_deletions=3)
    result = backups.apply_retention(folder, "app", policy, key=KEY, stale_seconds=3600)
    assert result["deleted"] == [d.name for d in dumps[:3]]
    assert result["deferred"] == [d.name for d in dumps[3:7]]
    assert set(result["kept"]) == {dumps[-1].name, "app-20251202T030000Z.dump"}
    assert result["leftovers_removed"] == [crashed.name] and running.exists()


@pytest.mark.parametrize("forger", [None, b"another-key-" * 3])
def test_retention_never_trusts_an_unauthenticated_verification(
    tmp_path: Path, forger: bytes | None
) -> None:
    """A newer manifest claiming a passed verification without our mac (none, or another
    key's) is not "the newest verified": the older, authenticated verified backup stays."""
    folder = tmp_path / "app"
    genuine = write_backup(folder, day("2026-01-01"), "verified")
    forged = write_backup(folder, day("2026-01-05"), "verified", key=forger)
    newest = write_backup(folder, day("2026-01-10"))
    policy = backups.Retention(daily=1, weekly=0, monthly=0, max_deletions=10)
    result = backups.apply_retention(folder, "app", policy, key=KEY, stale_seconds=3600)
    assert set(result["kept"]) == {newest.name, genuine.name}
    assert result["deleted"] == [forged.name] and genuine.exists()


def test_backup_files_archives_without_following_symlinks(
    settings_env: Any, target_db: str, tmp_path: Path
) -> None:
    """A folder with a symlink to a file outside it is archived with the link, not the file;
    a live SQLite database is copied consistently; a missing path is reported."""
    app = tmp_path / "app"
    (app / "config").mkdir(parents=True)
    (app / "config" / "settings.ini").write_text("[app]\nkey = 1\n")
    (app / ".env").write_text("API_KEY=abc\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("do not archive")
    (app / "config" / "link").symlink_to(outside / "secret.txt")
    (app / "config" / "dirlink").symlink_to(outside)
    db = sqlite3.connect(app / "cache.db")
    db.execute("PRAGMA journal_mode=wal")
    db.execute("CREATE TABLE c (k text)")
    db.executemany("INSERT INTO c VALUES (?)", [("a",), ("b",), ("c",)])
    db.commit()  # left in the WAL: the raw file alone would lack these rows
    old = tmp_path / "backups" / "files"
    old.mkdir(parents=True)
    for suffix in ("", ".sha256", ".json"):
        (old / f"files-20200101T000000Z.tar.gz{suffix}").write_text("old")
    (old / "files-notes.txt").write_text("not ours")
    ctx = ctx_for(
        settings_env,
        target_db,
        tmp_path,
        REMEDIATION_BACKUP__FILE_PATHS=json.dumps([str(app), str(tmp_path / "gone")]),
        REMEDIATION_BACKUP__KEEP_FILE_ARCHIVES="1",
    )
    result = backup_files(ctx, BackupFilesParams())
    db.close()
    assert result.ok, result.summary
    archive = Path(result.detail["path"])
    assert result.detail["missing"] == [str(tmp_path / "gone")]
    with tarfile.open(archive) as tar:
        members = {m.name.rsplit("/app/", 1)[-1]: m for m in tar.getmembers()}
        assert members["config/link"].issym()
        assert members["config/link"].linkname == str(outside / "secret.txt")
        assert members["config/dirlink"].issym()
        assert not any("secret.txt" in name or "outside" in name for name in members)
        assert not any(name.endswith(("-wal", "-shm")) for name in members)
        copy = tmp_path / "restored.db"
        copy.write_bytes(tar.extractfile(members["cache.db"]).read())  # type: ignore[union-attr]
    assert sqlite3.connect(copy).execute("SELECT count(*) FROM c").fetchone() == (3,)
    sums = archive.with_name(archive.name + ".sha256").read_text()
    assert sums == f"{backups.sha256_file(archive)}  {archive.name}\n"
    assert result.detail["count"] == len(members)
    assert sorted(p.name for p in old.iterdir()) == sorted(
        [archive.name, archive.name + ".sha256", archive.name + ".json", "files-notes.txt", ".lock"]
    )


def test_backup_files_refuses_when_there_is_nothing_to_archive(
    settings_env: Any, target_db: str, tmp_path: Path, r: Any
) -> None:
    """No configured paths is a quiet refusal naming the variable, paths that all do not
    exist a refusal with a notice, a target other than self a refusal; none of them runs,
    spends the budget or pages a failure."""
    ctx = ctx_for(settings_env, target_db, tmp_path)
    with pytest.raises(Refused, match="REMEDIATION_BACKUP__FILE_PATHS is empty") as empty:
        resolve_files(CheckContext(ctx.settings, ctx.log), BackupFilesParams(target="SELF"))
    assert empty.value.notice is False
    with pytest.raises(Refused, match="is empty"):
        backup_files(ctx, BackupFilesParams())  # called directly: the same refusal
    paths = json.dumps([str(tmp_path / "gone")])
    gone = ctx_for(settings_env, target_db, tmp_path, REMEDIATION_BACKUP__FILE_PATHS=paths)
    with pytest.raises(Refused, match="none of the 1 REMEDIATION_BACKUP__FILE_PATHS exist"):
        resolve_files(CheckContext(gone.settings, gone.log), BackupFilesParams())
    with pytest.raises(Refused, match="always 'self'"):
        resolve_files(CheckContext(gone.settings, gone.log), BackupFilesParams(target="app"))
    sent = Recorder()
    outcome = Runner(gone.settings, sent).run_action("backup_files", {}, task_id="files-1")
    assert outcome.outcome == "refused" and "none of the 1" in outcome.reason
    assert not (tmp_path / "backups" / "files").exists()
    assert [kw["kind"] for _, kw, _ in sent.sent] == ["action_refused"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"target": "app", "file": "other-20261124T030000Z.dump"},
        {"target": "app", "file": "../app-20261124T030000Z.dump"},
        {"target": "app", "file": "app-20261124T030000Z.dump.json"},
        {"target": "app", "jobs": 0},
        {"target": "app", "bogus": 1},
    ],
)
def test_invalid_verify_params_are_rejected(kwargs: dict[str, Any]) -> None:
    """Another target's dump, a path, a manifest, zero jobs and unknown keys fail validation."""
    with pytest.raises(ValidationError):
        VerifyBackupParams.model_validate(kwargs)


def test_verify_resolves_the_canonical_target_and_the_dump(
    settings_env: Any, target_db: str, tmp_path: Path
) -> None:
    """ "APP" resolves to the configured "app" and the newest dump, or the named one; a target
    without dumps or a file not among them is refused saying where it looked."""
    ctx = ctx_for(settings_env, target_db, tmp_path)
    check_ctx = CheckContext(ctx.settings, ctx.log)
    folder = tmp_path / "backups" / "app"
    with pytest.raises(Refused, match=re.escape(f"no backups of 'app' in {folder}")):
        resolve_verify(check_ctx, VerifyBackupParams(target="APP"))
    with pytest.raises(Refused, match="no backups of 'app'"):  # called directly: the same
        verify_backup(ctx, VerifyBackupParams(target="app"))
    older = write_backup(folder, day("2026-01-01"))
    newer = write_backup(folder, day("2026-01-02"))
    resolved = resolve_verify(check_ctx, VerifyBackupParams(target="APP"))
    assert (resolved.params.target, resolved.params.file) == ("app", newer.name)
    named = resolve_verify(check_ctx, VerifyBackupParams(target="App", file=older.name))
    assert (named.params.target, named.params.file) == ("app", older.name)
    missing = VerifyBackupParams(target="app", file="app-20260103T030000Z.dump")
    with pytest.raises(Refused, match=r"app-20260103T030000Z\.dump is not among the backups"):
        resolve_verify(check_ctx, missing)
    with pytest.raises(Refused, match="not configured"):
        resolve_verify(check_ctx, VerifyBackupParams(target="nope"))
    keyless = CheckContext(ctx.settings.model_copy(update={"signing_key": None}), ctx.log)
    with pytest.raises(Refused, match="REMEDIATION_SIGNING_KEY: not set"):
        resolve_database(keyless, BackupDatabaseParams(target="APP"))


def test_refused_verify_costs_nothing_and_case_variants_share_one_folder_and_guards(
    settings_env: Any, target_db: str, tmp_path: Path, r: Any
) -> None:
    """Through the runner: verify_backup on a target without dumps is refused (audited, no
    failure page); backup_database on "APP" dumps into the folder of "app", and a second
    call spelled "app" meets the same cooldown; verify on "aPp" then verifies that dump."""
    ctx = ctx_for(settings_env, target_db, tmp_path)
    fill(target_db, {"t": 20})
    sent = Recorder()
    runner = Runner(ctx.settings, sent)
    refused = runner.run_action("verify_backup", {"target": "App"}, task_id="v-0")
    assert refused.outcome == "refused" and "no backups of 'app'" in refused.reason
    first = runner.run_action("backup_database", {"target": "APP"}, task_id="b-1")
    assert first.outcome == "succeeded", first.reason
    again = runner.run_action("backup_database", {"target": "app"}, task_id="b-2")
    assert again.outcome == "suppressed" and "cooling down" in again.reason
    folder = tmp_path / "backups"
    assert [p.name for p in folder.iterdir()] == ["app"]
    (dump,) = (path for path, _ in backups.dump_files(folder / "app", "app"))
    verified = runner.run_action("verify_backup", {"target": "aPp"}, task_id="v-1")
    assert verified.outcome == "succeeded", verified.reason
    assert manifest_of(dump)["verification"]["ok"] is True
    # the new dump was handed straight to verification (sent as its own task) ...
    assert [(t, kw.get("kind") or kw.get("file")) for t, kw, _ in sent.sent] == [
        ("remediation.act.notify", "action_refused"),
        ("remediation.act.verify_backup", dump.name),
    ]


def test_stale_scratch_databases_are_recognised_by_name() -> None:
    """A scratch database's creation time is read back from its name; others are not ours."""
    at = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)
    assert backups.scratch_created(backups.scratch_name(at)) == at
    assert backups.scratch_created("rem_verify_app") is None


def test_quarantined_dumps_survive_retention_and_are_never_overwritten(tmp_path: Path) -> None:
    """A dump moved aside by a failed verification stays through retention that keeps one
    backup, with its manifest and a note; a second file of the same name is not moved over
    it; symlinks are never moved."""
    folder = tmp_path / "app"
    rotten = write_backup(folder, day("2026-11-20"), "failed")
    into = quarantine.folder(folder, backups.QUARANTINE)
    quarantine.move_aside([rotten, backups.manifest_path(rotten)], into, "restore step failed")
    for d in ("2026-11-21", "2026-11-22", "2026-11-23"):
        write_backup(folder, day(d), "verified")
    policy = backups.Retention(daily=1, weekly=0, monthly=0, max_deletions=100)
    result = backups.apply_retention(folder, "app", policy, key=KEY, stale_seconds=0)
    assert len(result["deleted"]) == 2
    assert sorted(p.name for p in into.iterdir()) == sorted(
        [rotten.name, rotten.name + ".json", rotten.name + quarantine.NOTE_SUFFIX]
    )
    assert (into.stat().st_mode & 0o777) == 0o700
    (note,) = quarantine.listed(into)
    assert note.reason == "restore step failed" and note.note["from"] == str(folder)
    again = write_backup(folder, day("2026-11-20"), "failed")
    with pytest.raises(quarantine.QuarantineError, match="not overwriting"):
        quarantine.move_aside([again], into, "again")
    link = folder / "link.dump"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(quarantine.QuarantineError, match="not a regular file"):
        quarantine.move_aside([link], into, "a link")


def test_verifying_one_dump_by_hand_is_not_held_up_by_anothers_cooldown(
    settings_env: Any, target_db: str, tmp_path: Path, r: Any
) -> None:
    """verify_backup's guards are per dump: after the newest dump was verified (cooldown
    running), an older dump named by hand is verified at once; the same dump again waits."""
    ctx = ctx_for(settings_env, target_db, tmp_path)
    fill(target_db, {"t": 20})
    older = made(backup_database(ctx, BackupDatabaseParams(target="app")))
    # verified outside the guards, so retention (one per day) keeps it as the newest verified
    assert verify_backup(ctx, VerifyBackupParams(target="app", file=older.name)).ok
    time.sleep(1.1)  # one dump per target per second
    newest = made(backup_database(ctx, BackupDatabaseParams(target="app")))
    runner = Runner(ctx.settings, Recorder())
    first = runner.run_action("verify_backup", {"target": "app"}, task_id="v-newest")
    assert first.outcome == "succeeded", first.reason
    by_hand = runner.run_action(
        "verify_backup", {"target": "app", "file": older.name}, task_id="v-older"
    )
    assert by_hand.outcome == "succeeded", by_hand.reason
    same = runner.run_action(
        "verify_backup", {"target": "app", "file": newest.name}, task_id="v-again"
    )
    assert same.outcome == "suppressed" and "cooling down" in same.reason
