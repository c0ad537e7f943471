"""Audit retention (issue 15): a generated audit at the default schedule's rate, its size,
`remediation history` / `report --since 30d` / `report --incident` latency before and after
`remediation db prune --apply`, the prune's time, and a plain DELETE on the same data without
the indexes of migration 4 (the baseline of issue 15).

The audit is made with generate_series in one scratch database: check runs at 15 a minute
(7.9 M a year, what `make run` measured), a finding on every 20th (394 k a year), a guard
decision on every 10th finding (39 k), an action run for 7 in 10 decisions (27.6 k, verified by
the next check run), an observation every 75th check run (105 k), incidents of 40 findings.
REMEDIATION_BENCH_RETENTION_YEARS sets how much (default 0.1: 36.5 days, 788 k check runs, so
`make bench` stays short); the prune runs with the default settings except the retention of
check runs without findings (14 days, less on a span under 35 days) and of the rest (3/4 of
the generated span), so that every rule deletes. The baseline: a copy of the database (CREATE DATABASE ... TEMPLATE) with the
migration-4 indexes dropped, where `DELETE FROM check_runs` of the oldest quiet check runs (in
one statement, BASELINE_ROWS rows) is timed, and the same statement on the indexed copy.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import redis
from psycopg import sql

from bench.pipeline import admin_dsn
from remediation import incident_report, report
from remediation.audit import retention
from remediation.audit import store as store_module
from remediation.audit.store import AuditStore
from remediation.settings.retention import RetentionSettings
from tests.support.services import as_url, scratch_database, with_database

PER_MINUTE = 15
MINUTES_A_YEAR = 365 * 24 * 60
BASELINE_ROWS = 300
MIGRATION_4 = [
    "findings_check_run",
    "findings_seen",
    "findings_incident",
    "guard_decisions_finding",
    "action_runs_finding",
    "action_runs_decision",
    "action_runs_verify_check_run",
    "observations_at",
]

GENERATE = """
INSERT INTO check_runs (id, check_name, target, purpose, status, findings_count, started_at,
                        finished_at, duration_ms)
SELECT g, 'check_' || (g % 12), 'target_' || (g % 5), 'detect', 'ok',
       CASE WHEN g % 20 = 0 THEN 1 ELSE 0 END,
       now() - (%(n)s - g) * interval '4 seconds', now() - (%(n)s - g) * interval '4 seconds', 12
FROM generate_series(1, %(n)s) g;
INSERT INTO findings (id, check_run_id, check_name, target, subject, kind, severity, observed,
                      threshold, summary, fingerprint, incident_id, seen_at)
SELECT g, g, 'check_' || (g % 12), 'target_' || (g % 5), 's', 'kind_' || (g % 7), 'high', '1',
       '0', 'generated', 'fp' || (g % 12), 'fp' || (g % 12) || '-' || (g / 800),
       now() - (%(n)s - g) * interval '4 seconds'
FROM generate_series(20, %(n)s, 20) g;
INSERT INTO guard_decisions (id, finding_id, action, target, resource, decision, guard, reason,
                             decided_at)
SELECT g, g, 'action_' || (g % 5), 'target_' || (g % 5), 'target_' || (g % 5),
       CASE WHEN (g / 200) % 10 < 7 THEN 'admitted' ELSE 'suppressed' END,
       CASE WHEN (g / 200) % 10 < 7 THEN NULL ELSE 'cooldown' END, 'generated',
       now() - (%(n)s - g) * interval '4 seconds'
FROM generate_series(200, %(n)s, 200) g;
INSERT INTO action_runs (id, decision_id, finding_id, action, target, resource, outcome,
                         duration_ms, verification, verify_check_run_id, verified_at, started_at)
SELECT g, g, g, 'action_' || (g % 5), 'target_' || (g % 5), 'target_' || (g % 5), 'succeeded',
       40, 'recovered', g + 1, now() - (%(n)s - g - 1) * interval '4 seconds',
       now() - (%(n)s - g) * interval '4 seconds'
FROM generate_series(200, %(n)s - 1, 200) g WHERE (g / 200) % 10 < 7;
INSERT INTO observations (id, check_name, target, metric, value, observed_at)
SELECT g, 'check_' || (g % 12), 'target_' || (g % 5), 'bytes', g,
       now() - (%(n)s - g) * interval '4 seconds'
FROM generate_series(75, %(n)s, 75) g;
"""


def _median_ms(fn: Callable[[], Any], runs: int = 5) -> float:
    fn()  # warm
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 1)


def latencies(store: AuditStore, incident: str) -> dict[str, float]:
    return {
        "history_ms": _median_ms(lambda: store.history(limit=50)),
        "history_action_ms": _median_ms(lambda: store.history(action="action_1", limit=50)),
        "report_30d_ms": _median_ms(lambda: report.build(store, timedelta(days=30))),
        "report_incident_ms": _median_ms(lambda: incident_report.build(store, incident)),
    }


def sizes(dsn: str) -> dict[str, Any]:
    with psycopg.connect(dsn) as conn:
        rows = {
            t: conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t))
            ).fetchone()[0]  # type: ignore[index]
            for t in retention.TABLES
        }
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]  # type: ignore[index]
    return {"rows": rows, "database_mb": round(size / 2**20, 1)}


def plain_delete_s(dsn: str, rows: int) -> float:
    """One DELETE of the oldest `rows` check runs without findings; rolled back."""
    with psycopg.connect(dsn) as conn:
        start = time.perf_counter()
        conn.execute(
            "DELETE FROM check_runs WHERE id IN (SELECT id FROM check_runs"
            " WHERE findings_count = 0 AND id %% 200 <> 1 ORDER BY id LIMIT %s)",  # 1: verifiers
            (rows,),
        )
        elapsed = time.perf_counter() - start
        conn.rollback()
    return elapsed


def run() -> dict[str, Any]:
    years = float(os.environ.get("REMEDIATION_BENCH_RETENTION_YEARS", "0.1"))
    n = int(MINUTES_A_YEAR * PER_MINUTE * years)
    span_days = n * 4 / 86400
    admin = admin_dsn()
    out: dict[str, Any] = {"years": years, "span_days": round(span_days, 1), "check_runs": n}
    with scratch_database(admin, "rem_bench_retention") as raw:
        dsn = as_url(raw)
        store = AuditStore(dsn)
        store.upgrade()
        start = time.perf_counter()
        with psycopg.connect(dsn, autocommit=True) as conn:
            # an int, formatted: no placeholders (the SQL's % is modulo)
            conn.execute(GENERATE.replace("%(n)s", str(n)).encode())
            conn.execute("VACUUM ANALYZE")
        out["generate_s"] = round(time.perf_counter() - start, 1)
        out["before"] = sizes(dsn)
        incident = f"fp0-{n // 2 // 800}"
        out["before"].update(latencies(store, incident))

        # the baseline: the same data without migration 4's indexes
        name = str(psycopg.conninfo.conninfo_to_dict(raw)["dbname"])
        bare = f"{name}_bare"
        store_module.close_pools()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(bare), sql.Identifier(name)
                )
            )
        try:
            bare_dsn = as_url(with_database(admin, bare))
            with psycopg.connect(bare_dsn, autocommit=True) as conn:
                for index in MIGRATION_4:
                    conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(index)))
            unindexed = plain_delete_s(bare_dsn, BASELINE_ROWS)
            out["unindexed"] = latencies(AuditStore(bare_dsn), incident)
        finally:
            store_module.close_pools()
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(bare))
                )
        indexed = plain_delete_s(dsn, BASELINE_ROWS)
        out["plain_delete"] = {
            "rows": BASELINE_ROWS,
            "unindexed_s": round(unindexed, 3),
            "indexed_s": round(indexed, 3),
            "unindexed_per_row_ms": round(unindexed / BASELINE_ROWS * 1000, 2),
        }

        settings = RetentionSettings(
            check_runs_days=max(1, min(14, int(span_days * 0.4))),
            audit_days=max(2, int(span_days * 0.75)),
            observations_days=max(2, int(span_days * 0.75)),
        )
        state = redis.Redis.from_url(
            os.environ.get("REMEDIATION_STATE_REDIS_URL", "redis://127.0.0.1:6379/0")
        )
        now = datetime.now(UTC)  # one set of cutoffs for the dry run and the apply
        dry_start = time.perf_counter()
        dry = retention.prune(store, settings, state, apply=False, now=now)
        out["dry_run_s"] = round(time.perf_counter() - dry_start, 1)
        result = retention.prune(store, settings, state, apply=True, now=now)
        out["prune"] = {
            "settings": settings.model_dump(),
            "deleted": result.counts,
            "same_as_dry_run": dry.counts == result.counts,
            "batches": result.batches,
            "seconds": round(result.seconds, 1),
            "rows_per_s": round(sum(result.counts.values()) / max(result.seconds, 1e-9)),
        }
        out["plain_delete"]["unindexed_estimate_for_pruned_check_runs_s"] = round(
            result.counts["check_runs"] * unindexed / BASELINE_ROWS
        )
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
        out["after"] = sizes(dsn)
        out["after"].update(latencies(store, incident))
        store_module.close_pools()
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
