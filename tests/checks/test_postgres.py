"""postgres_dead_tuples against a real PostgreSQL scratch database."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from remediation.checks.postgres import DeadTuplesParams, postgres_dead_tuples
from remediation.context import CheckContext
from remediation.logging import get_logger
from remediation.testing import wait_for

HOSTILE = ["Price History", 'x"; drop table y; --', "semi;colon"]


def bloat(dsn: str, table: str, rows: int = 5000, delete_share: float = 0.8) -> None:
    """Create table, fill it, delete a share of rows, with autovacuum off for it."""
    ident = sql.Identifier("public", table)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id int, pad text)").format(ident))
        conn.execute(sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = false)").format(ident))
        conn.execute(
            sql.SQL(
                "INSERT INTO {} SELECT g, repeat('x', 50) FROM generate_series(1, %s) g"
            ).format(ident),
            (rows,),
        )
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE id <= %s").format(ident), (int(rows * delete_share),)
        )


def dead_rows(dsn: str, table: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = %s", (table,)
        ).fetchone()
        return int(row[0]) if row else 0


def run(settings: Any, **params: Any) -> list[Any]:
    return postgres_dead_tuples(CheckContext(settings, get_logger()), DeadTuplesParams(**params))


def test_reports_bloated_tables_with_hostile_names(settings_env: Any, target_db: str) -> None:
    """Tables past ratio and minimum are found, whatever characters their names hold."""
    s = settings_env(REMEDIATION_POSTGRES_TARGETS__APP=target_db)
    for name in HOSTILE:
        bloat(target_db, name)
    bloat(target_db, "healthy", delete_share=0.01)
    wait_for(lambda: all(dead_rows(target_db, n) >= 4000 for n in HOSTILE), 15, 0.3, "stats")
    findings = [f for f in run(s, target="app") if f.kind == "postgres_dead_tuples_high"]
    assert sorted(f.subject for f in findings) == sorted(f"public.{n}" for n in HOSTILE)
    f = findings[0]
    assert f.kind == "postgres_dead_tuples_high"
    assert f.severity.value == "high"  # 80 % dead
    assert f.evidence["table"]["schema"] == "public"


def test_thresholds_are_respected(settings_env: Any, target_db: str) -> None:
    """A table under the minimum dead rows is not reported."""
    s = settings_env(REMEDIATION_POSTGRES_TARGETS__APP=target_db)
    bloat(target_db, "small", rows=500)
    wait_for(lambda: dead_rows(target_db, "small") >= 400, 15, 0.3, "stats")
    assert run(s, target="app") == []
    assert [f.subject for f in run(s, target="app", min_dead_rows=100)] == ["public.small"]


def test_stale_statistics_are_reported_once_per_table(settings_env: Any, target_db: str) -> None:
    """A never-analyzed table with many changes is stale; a bloated one is only 'dead tuples'."""
    s = settings_env(REMEDIATION_POSTGRES_TARGETS__APP=target_db)
    bloat(target_db, "fresh rows", delete_share=0.01)
    bloat(target_db, "bloated")
    wait_for(lambda: dead_rows(target_db, "bloated") >= 4000, 15, 0.3, "stats")
    kinds = {(f.subject, f.kind) for f in run(s, target="app")}
    assert kinds == {
        ("public.fresh rows", "postgres_stats_stale"),
        ("public.bloated", "postgres_dead_tuples_high"),
    }
    with psycopg.connect(target_db, autocommit=True) as conn:
        conn.execute('ANALYZE "fresh rows"')
    wait_for(lambda: all(f.subject != "public.fresh rows" for f in run(s, target="app")), 15, 0.3,
             "analyze to be visible")  # fmt: skip
