"""backup_database, verify_backup and backup_files against a real PostgreSQL and real files."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from pydantic import ValidationError

from remediation import backups
from remediation.actions.backup_files import BackupFilesParams, backup_files
from remediation.actions.backups import (
    BackupDatabaseParams,
    VerifyBackupParams,
    backup_database,
    verify_backup,
)
from remediation.context import ActionContext
from remediation.logging import get_logger

HOSTILE = ["Price History", 'x"; drop table y; --']


def fill(dsn: str, tables: dict[str, int]) -> None:
    """Create each table with an index and the given number of rows."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name, rows in tables.items():
            ident = sql.Identifier("public", name)
            conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, note text)").format(ident))
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} SELECT g, md5(g::text) FROM generate_series(1, %s) g"
                ).format(ident),
                (rows,),
            )


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


def manifest_of(path: Path) -> dict[str, Any]:
    return json.loads(backups.manifest_path(path).read_text())


def rewrite_manifest(dump: Path, **changes: Any) -> None:
    backups.write_json(backups.manifest_path(dump), {**manifest_of(dump), **changes})


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
        (HOSTILE[0], 300), (HOSTILE[1], 200), ("y", 10)
    }  # fmt: skip
    assert (
        manifest["sha256"] == backups.sha256_file(dump) and manifest["size"] == dump.stat().st_size
    )
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

    def insert_then_spawn(argv: list[str], env: dict[str, str], stderr: Any) -> Any:
        with psycopg.connect(target_db, autocommit=True) as conn:  # after the snapshot
            conn.execute("INSERT INTO t SELECT g, 'late' FROM generate_series(101, 150) g")
        return spawned(argv, env, stderr)

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
    verification = manifest_of(dump)["verification"]
    assert (verification["ok"], verification["failed_step"]) == (False, "full_read")
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


def test_changed_bytes_are_caught_by_the_checksum(
    settings_env: Any, target_db: str, tmp_path: Path
) -> None:
    """One flipped byte with the manifest left alone fails at the checksum step."""
    ctx = ctx_for(settings_env, target_db, tmp_path)
    fill(target_db, {"a": 500})
    dump = made(backup_database(ctx, BackupDatabaseParams(target="app")))
    with open(dump, "r+b") as f:
        f.seek(dump.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    result = verify_backup(ctx, VerifyBackupParams(target="app"))
    assert (result.ok, result.detail["failed_step"]) == (False, "checksum")


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
    assert manifest_of(dump)["verification"]["mismatches"] == result.detail["mismatches"]
    assert scratch_databases(pg_admin) == before


def test_password_travels_in_the_environment_not_on_the_command_line(
    settings_env: Any, target_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pg_dump and pg_restore get PGPASSWORD; no argv, manifest or result holds the password."""
    password = "s3cret-Pw"
    with_password = target_db.replace("postgres@", f"postgres:{password}@")
    ctx = ctx_for(settings_env, with_password, tmp_path)
    fill(target_db, {"t": 10})
    calls: list[tuple[list[str], dict[str, str]]] = []
    real = backups.spawn

    def recording(argv: list[str], env: dict[str, str], stderr: Any) -> Any:
        calls.append((argv, env))
        return real(argv, env, stderr)

    monkeypatch.setattr(backups, "spawn", recording)
    result = backup_database(ctx, BackupDatabaseParams(target="app"))
    verified = verify_backup(ctx, VerifyBackupParams(target="app"))
    assert result.ok and verified.ok
    tools = sorted({Path(argv[0]).name for argv, _ in calls})
    assert tools == ["pg_dump", "pg_restore"] and len(calls) == 3
    assert all(password not in arg for argv, _ in calls for arg in argv)
    connecting = [env for argv, env in calls if any(a.startswith("--dbname=") for a in argv)]
    assert len(connecting) == 2 and all(env["PGPASSWORD"] == password for env in connecting)
    assert sum("PGPASSWORD" in env for _, env in calls) == 2  # the full read needs none
    assert not any(k.startswith("REMEDIATION_") for _, env in calls for k in env)
    stored = backups.manifest_path(made(result)).read_text()
    assert password not in stored and password not in result.model_dump_json()
    assert password not in verified.model_dump_json()


def write_backup(folder: Path, when: datetime, status: str = "unverified") -> Path:
    """A synthetic dump and manifest; status is unverified, verified or failed."""
    folder.mkdir(parents=True, exist_ok=True)
    dump = folder / backups.dump_name("app", when)
    dump.write_bytes(b"PGDMP")
    verification = None if status == "unverified" else {"ok": status == "verified"}
    if status == "failed":
        verification = {"ok": False, "failed_step": "restore", "message": "boom"}
    backups.write_json(
        backups.manifest_path(dump),
        {"file": dump.name, "started_at": when.isoformat(), "verification": verification},
    )
    return dump


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
    result = backups.apply_retention(folder, "app", policy, stale_seconds=3600)
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
    result = backups.apply_retention(folder, "app", policy, stale_seconds=3600)
    assert result["deleted"] == [d.name for d in dumps[:3]]
    assert result["deferred"] == [d.name for d in dumps[3:7]]
    assert set(result["kept"]) == {dumps[-1].name, "app-20251202T030000Z.dump"}
    assert result["leftovers_removed"] == [crashed.name] and running.exists()


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
        settings_env, target_db, tmp_path,
        REMEDIATION_BACKUP__FILE_PATHS=json.dumps([str(app), str(tmp_path / "gone")]),
        REMEDIATION_BACKUP__KEEP_FILE_ARCHIVES="1",
    )  # fmt: skip
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


def test_backup_files_without_paths_is_a_clear_failure(
    settings_env: Any, target_db: str, tmp_path: Path
) -> None:
    """No configured paths fails and names the variable."""
    result = backup_files(ctx_for(settings_env, target_db, tmp_path), BackupFilesParams())
    assert not result.ok and "REMEDIATION_BACKUP__FILE_PATHS" in result.summary


@pytest.mark.parametrize(
    "kwargs",
    [
        {"target": "app", "file": "other-20261124T030000Z.dump"},
        {"target": "app", "file": "../app-20261124T030000Z.dump"},
        {"target": "app", "file": "app-20261124T030000Z.dump.json"},
        {"target": "app", "jobs": 0},
        {"target": "app", "bogus": 1},
    ],  # fmt: skip
)
def test_invalid_verify_params_are_rejected(kwargs: dict[str, Any]) -> None:
    """Another target's dump, a path, a manifest, zero jobs and unknown keys fail validation."""
    with pytest.raises(ValidationError):
        VerifyBackupParams.model_validate(kwargs)


def test_verify_without_backups_names_the_folder(
    settings_env: Any, target_db: str, tmp_path: Path
) -> None:
    """Verifying a target with no dumps is an error that says where it looked."""
    with pytest.raises(backups.BackupError, match="no backups of 'app'"):
        verify_backup(ctx_for(settings_env, target_db, tmp_path), VerifyBackupParams(target="app"))


def test_stale_scratch_databases_are_recognised_by_name() -> None:
    """A scratch database's creation time is read back from its name; others are not ours."""
    at = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)
    assert backups.scratch_created(backups.scratch_name(at)) == at
    assert backups.scratch_created("rem_verify_app") is None
