"""postgres_dead_tuples: round trips and time for 10 vs 1,000 tables.

Round trips are counted at the client: every statement the check sends through its
connection (the check opens one connection per run). The check's own code is used
unchanged; only remediation.clients.pg.connect is wrapped to count.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import psycopg
from psycopg import sql

from bench.pipeline import admin_dsn
from remediation.checks import postgres as check_module
from remediation.checks.postgres import DeadTuplesParams, postgres_dead_tuples
from remediation.context import CheckContext
from remediation.logging import get_logger
from remediation.settings import load_settings
from tests.support.base import wait_for
from tests.support.services import as_url, scratch_database


class Counting:
    """Delegates to a psycopg connection and counts the statements sent."""

    def __init__(self, conn: psycopg.Connection, counter: list[int]) -> None:
        self._conn, self._counter = conn, counter

    def __enter__(self) -> Counting:
        self._conn.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._conn.__exit__(*exc)

    def execute(self, *args: Any, **kw: Any) -> Any:
        self._counter[0] += 1
        return self._conn.execute(*args, **kw)


def make_tables(dsn: str, n: int) -> None:
    """n tables, every tenth one bloated (autovacuum off so it stays bloated)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(n):
            table = sql.Identifier(f"t {i}")
            conn.execute(
                sql.SQL("CREATE TABLE {} (id int) WITH (autovacuum_enabled = false)").format(table)
            )
            if i % 10 == 0:
                conn.execute(
                    sql.SQL("INSERT INTO {} SELECT generate_series(1, 2000)").format(table)
                )
                conn.execute(sql.SQL("DELETE FROM {} WHERE id <= 1500").format(table))


def measure(dsn: str, n: int) -> dict[str, Any]:
    make_tables(dsn, n)
    os.environ["REMEDIATION_POSTGRES_TARGETS__BENCH"] = as_url(dsn)
    settings = load_settings()
    ctx = CheckContext(settings, get_logger())
    params = DeadTuplesParams(target="bench", max_tables=1000)

    def expected() -> bool:
        hits = postgres_dead_tuples(ctx, params)
        return len([f for f in hits if f.kind == "postgres_dead_tuples_high"]) == (n + 9) // 10

    wait_for(expected, 60, 0.5, "statistics of the bloated tables")
    counter = [0]
    real_connect = check_module.pg.connect
    check_module.pg.connect = lambda *a, **k: Counting(real_connect(*a, **k), counter)  # type: ignore[assignment]
    try:
        times = []
        for _ in range(5):
            start = time.perf_counter()
            postgres_dead_tuples(ctx, params)
            times.append(time.perf_counter() - start)
    finally:
        check_module.pg.connect = real_connect  # type: ignore[assignment]
        del os.environ["REMEDIATION_POSTGRES_TARGETS__BENCH"]
    return {
        "tables": n,
        "round_trips_per_run": counter[0] / 5,
        "median_s": round(statistics.median(times), 4),
    }


def run() -> dict[str, Any]:
    results = []
    for n in (10, 1000):
        with scratch_database(admin_dsn(), "rem_bench_dt") as dsn:
            results.append(measure(dsn, n))
    small, big = results
    return {
        "small": small,
        "large": big,
        "round_trip_ratio": big["round_trips_per_run"] / small["round_trips_per_run"],
        "time_ratio": round(big["median_s"] / small["median_s"], 2),
    }
