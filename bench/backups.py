"""verify_backup vs a plain restore of the same dump, measured in the same run.

A scratch database on the configured PostgreSQL gets four tables (two with hostile names,
~1.7 million rows, primary keys and a secondary index); backup_database dumps it. Then,
interleaved so both see the same machine state:

* baseline: `pg_restore -d <fresh empty database> DUMP` (the restore alone), median of 3;
* verify: `verify_backup` (authenticated manifest, then checksum of the open dump, then full
  read + restore into a scratch database side by side, row counts, drop), median of 3, with
  its default of one restore job; and the same with jobs=2 for reference.

Target: verify at most 1.3x the baseline.
"""

from __future__ import annotations

import os
import secrets
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from pydantic import SecretStr

from bench.pipeline import admin_dsn
from remediation import backups
from remediation.actions.backups import BackupDatabaseParams, backup_database
from remediation.actions.verify_backup import VerifyBackupParams, verify_backup
from remediation.context import ActionContext
from remediation.settings import BackupSettings, Settings
from tests.support.services import as_url, scratch_database

ROUNDS = int(os.environ.get("REMEDIATION_BENCH_BACKUP_ROUNDS", "3"))
SCALE = float(os.environ.get("REMEDIATION_BENCH_BACKUP_SCALE", "1"))

DATA = """
CREATE TABLE "Price History" (id bigserial PRIMARY KEY, url_id int NOT NULL,
  price numeric(12,2), checked_at timestamptz NOT NULL DEFAULT now(), note text);
INSERT INTO "Price History" (url_id, price, checked_at, note)
  SELECT g % 5000, (g % 10000) / 100.0, now() - g * interval '1 second', md5(g::text)
  FROM generate_series(1, {ph}) g;
CREATE INDEX ON "Price History" (url_id, checked_at);
CREATE TABLE "x""; drop table y; --" (id int PRIMARY KEY, payload jsonb);
INSERT INTO "x""; drop table y; --"
  SELECT g, jsonb_build_object('g', g, 's', md5(g::text)) FROM generate_series(1, {x}) g;
CREATE TABLE monitored_urls (id int PRIMARY KEY, domain text NOT NULL, url text NOT NULL UNIQUE);
INSERT INTO monitored_urls
  SELECT g, 'd' || (g % 50) || '.example', 'https://d' || (g % 50) || '.example/p/' || g
  FROM generate_series(1, {urls}) g;
CREATE TABLE events (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, kind text,
  at timestamptz DEFAULT now());
INSERT INTO events (kind) SELECT (ARRAY['a', 'b', 'c'])[1 + g % 3] FROM generate_series(1, {ev}) g;
ANALYZE;
"""


class _Quiet:
    """A logger that drops everything: the benchmark prints one JSON document."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def _rows(n: int) -> int:
    return max(int(n * SCALE), 1)


def plain_restore(admin: str, target_dsn: str, dump: Path) -> float:
    """Seconds of `pg_restore -d <fresh empty db> DUMP` (database creation not counted)."""
    name = f"rem_bench_restore_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        client = backups.libpq(target_dsn, connect_timeout=10, dbname=name)
        argv = [backups.find_tool("pg_restore"), "--no-password", client.arg(), str(dump)]
        start = time.perf_counter()
        with client.environment() as env, backups.Child("baseline", argv, env) as child:
            child.wait(3600)
        return time.perf_counter() - start
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            backups.drop_database(conn, name)


def timed_verify(ctx: ActionContext, jobs: int) -> tuple[float, dict[str, Any]]:
    start = time.perf_counter()
    result = verify_backup(ctx, VerifyBackupParams(target="bench", jobs=jobs))
    elapsed = time.perf_counter() - start
    if not result.ok:
        raise RuntimeError(f"verify_backup failed: {result.summary}")
    return elapsed, result.detail["timings"]


def run() -> dict[str, Any]:
    admin = admin_dsn()
    with scratch_database(admin, "rem_bench_bk") as dsn, tempfile.TemporaryDirectory() as tmp:
        sizes = {
            "ph": _rows(800_000),
            "x": _rows(300_000),
            "urls": _rows(200_000),
            "ev": _rows(400_000),
        }
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(DATA.format(**sizes).encode())
        settings = Settings(
            postgres_targets={"bench": SecretStr(as_url(dsn))},
            backup=BackupSettings(dir=tmp),
            signing_key=SecretStr(secrets.token_hex(32)),
        )
        ctx = ActionContext(settings, _Quiet())
        start = time.perf_counter()
        made = backup_database(ctx, BackupDatabaseParams(target="bench"))
        dump_seconds = time.perf_counter() - start
        if not made.ok:
            raise RuntimeError(f"backup_database failed: {made.summary}")
        dump = Path(made.detail["path"])
        plain_restore(admin, dsn, dump)  # warm-up: the dump in the page cache for both sides
        baseline, verify, verify2, timings = [], [], [], {}
        for _ in range(ROUNDS):
            baseline.append(plain_restore(admin, dsn, dump))
            seconds, timings = timed_verify(ctx, jobs=1)
            verify.append(seconds)
            verify2.append(timed_verify(ctx, jobs=2)[0])
        b, v, v2 = (statistics.median(x) for x in (baseline, verify, verify2))
        return {
            "rows": sum(sizes.values()),
            "dump_bytes": dump.stat().st_size,
            "backup_database_seconds": round(dump_seconds, 3),
            "baseline_pg_restore_seconds": {"median": round(b, 3), "samples": _r(baseline)},
            "verify_backup_seconds": {"median": round(v, 3), "samples": _r(verify)},
            "ratio": round(v / b, 3),
            "verify_backup_jobs2_seconds": {"median": round(v2, 3), "samples": _r(verify2)},
            "ratio_jobs2": round(v2 / b, 3),
            "verify_step_seconds_last_run": timings,
            "target_ratio": 1.3,
        }


def _r(values: list[float]) -> list[float]:
    return [round(x, 3) for x in values]


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
