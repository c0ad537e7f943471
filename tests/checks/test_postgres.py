"""postgres_dead_tuples against a real PostgreSQL scratch database."""

from __future__ import annotations

from typing import Any

import psycopg

from remediation.checks.postgres import DeadTuplesParams, postgres_dead_tuples
from remediation.context import CheckContext
from remediation.logging import get_logger
from tests.support.base import wait_for
from tests.support.postgres import HOSTILE, bloat, dead_rows


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
    wait_for(
        lambda: all(f.subject != "public.fresh rows" for f in run(s, target="app")),
        15,
        0.3,
        "analyze to be visible",
    )
