"""PostgreSQL statistics (runbook 001 weekly "Check index health", runbook 002).

Unused indexes, database growth and slow statements. Reported only: nothing here changes
the database. Thresholds are REMEDIATION_POSTGRES__* settings.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql
from pydantic import Field

from remediation.context import CheckContext
from remediation.findings import Finding, Severity
from remediation.params import CheckParams
from remediation.pg_activity import band, connect, finding, pretty_bytes, rows, safe_query
from remediation.registry import check

UNUSED_INDEXES_SQL = """
SELECT s.schemaname, s.relname, s.indexrelname, pg_relation_size(s.indexrelid) AS bytes,
       i.indisvalid AS valid, count(*) OVER () AS total, sum(pg_relation_size(s.indexrelid))
       OVER () AS total_bytes,
       (SELECT stats_reset FROM pg_stat_database WHERE datname = current_database()) AS reset
FROM pg_stat_user_indexes s JOIN pg_index i ON i.indexrelid = s.indexrelid
WHERE s.idx_scan = 0 AND NOT i.indisunique AND NOT i.indisprimary AND NOT i.indisexclusion
  AND pg_relation_size(s.indexrelid) >= %(min_bytes)s
ORDER BY bytes DESC, s.schemaname, s.indexrelname LIMIT %(limit)s
"""
PGSS_SQL = """
SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
WHERE e.extname = 'pg_stat_statements'
"""
SLOW_SQL = """
SELECT s.queryid, r.rolname, s.calls, s.mean_exec_time, s.max_exec_time, s.rows, s.query
FROM {view} s LEFT JOIN pg_roles r ON r.oid = s.userid
WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND s.calls >= %(min_calls)s AND s.mean_exec_time >= %(floor)s
ORDER BY s.mean_exec_time DESC LIMIT %(top)s
"""


# --- postgres_unused_indexes --------------------------------------------------------------


class UnusedIndexesParams(CheckParams):
    min_size_bytes: int = Field(0, ge=0, description="ignore indexes smaller than this")
    max_indexes: int = Field(50, ge=1, le=1000, description="list at most this many")


@check("postgres_unused_indexes")
def postgres_unused_indexes(ctx: CheckContext, params: UnusedIndexesParams) -> list[Finding]:
    """Indexes never scanned since statistics were reset (runbook 001 weekly "Check index health").

    From pg_stat_user_indexes: idx_scan = 0, leaving out unique, primary-key and exclusion
    indexes (they enforce constraints). One info finding per target lists them, largest
    first, with sizes and the statistics reset time (the window "never" covers). Reported
    only: nothing is dropped. Check replicas before dropping; they keep their own counts."""
    with connect(ctx, params.target) as conn:
        found = rows(
            conn,
            UNUSED_INDEXES_SQL,
            {"min_bytes": params.min_size_bytes, "limit": params.max_indexes},
        )
    if not found:
        return []
    total, total_bytes, reset = found[0]["total"], int(found[0]["total_bytes"]), found[0]["reset"]
    indexes = [
        {
            "schema": r["schemaname"],
            "table": r["relname"],
            "index": r["indexrelname"],
            "bytes": r["bytes"],
            "size": pretty_bytes(r["bytes"]),
            "valid": r["valid"],
        }
        for r in found
    ]
    return [
        finding(
            "postgres_unused_indexes",
            params.target,
            "postgres_indexes_unused",
            Severity.INFO,
            observed=total,
            threshold=0,
            evidence={
                "count": total,
                "total_bytes": total_bytes,
                "indexes": indexes,
                "stats_reset": reset.isoformat() if reset else None,
            },
            summary=f"{total} index(es) never scanned, {pretty_bytes(total_bytes)} in total;"
            " review before dropping",
        )
    ]


# --- postgres_database_size ---------------------------------------------------------------


class DatabaseSizeParams(CheckParams):
    """The warning threshold is REMEDIATION_POSTGRES__SIZE_GROWTH_WARNING_PERCENT."""


@check("postgres_database_size")
def postgres_database_size(ctx: CheckContext, params: DatabaseSizeParams) -> list[Finding]:
    """Growth of the database since the previous run (runbook 002 "Disk Space": database size).

    pg_database_size is recorded at every run (audit table observations, metric
    database_bytes); growth past SIZE_GROWTH_WARNING_PERCENT since the previous run is a
    postgres_database_growth warning. Growth is per run, so the schedule sets the period
    it covers. The first run only records."""
    with connect(ctx, params.target) as conn:
        (row,) = rows(
            conn, "SELECT current_database() AS db, pg_database_size(current_database()) AS bytes"
        )
    db, size = row["db"], int(row["bytes"])
    if ctx.store is None:
        ctx.log.info("database size", database=db, bytes=size)
        return []
    previous = ctx.store.last_observation("postgres_database_size", params.target, "database_bytes")
    ctx.store.record_observation("postgres_database_size", params.target, "database_bytes", size)
    if previous is None or previous[0] <= 0:
        return []
    before, at = previous
    growth = (size - before) / before * 100
    limit = ctx.settings.postgres.size_growth_warning_percent
    if growth < limit:
        return []
    return [
        finding(
            "postgres_database_size",
            params.target,
            "postgres_database_growth",
            Severity.WARNING,
            subject=db,
            observed=round(growth, 2),
            threshold=limit,
            evidence={
                "bytes": size,
                "previous_bytes": int(before),
                "previous_at": at.isoformat() if at else None,
            },
            summary=f"database {db} grew {growth:.1f} % since the previous run"
            f" ({pretty_bytes(before)} -> {pretty_bytes(size)})",
        )
    ]


# --- postgres_slow_queries ----------------------------------------------------------------


class SlowQueriesParams(CheckParams):
    top: int = Field(10, ge=1, le=100, description="report at most this many statements")
    min_calls: int = Field(5, ge=1, description="ignore statements run fewer times")


ENABLE = (
    "add pg_stat_statements to shared_preload_libraries in postgresql.conf, restart"
    " PostgreSQL, then run CREATE EXTENSION pg_stat_statements; in this database"
)


def _unavailable(params: SlowQueriesParams, db: str, reason: str, how: str) -> list[Finding]:
    return [
        finding(
            "postgres_slow_queries",
            params.target,
            "postgres_slow_queries_unavailable",
            Severity.INFO,
            evidence={"database": db, "reason": reason, "enable": how},
            summary=f"slow queries cannot be read in {db}: {reason}; to enable: {how}",
        )
    ]


@check("postgres_slow_queries")
def postgres_slow_queries(ctx: CheckContext, params: SlowQueriesParams) -> list[Finding]:
    """Statements slow on average, from pg_stat_statements (runbook 002 "Slow Queries").

    Bands of runbook 002: P95 > 1 s medium (SLOW_QUERY_WARNING_MS), > 2 s high, > 5 s
    critical. pg_stat_statements keeps no percentiles, so the mean execution time stands
    in for P95 (a P95 is at least as high: this under-reports, never over-reports). Means
    add up since the last pg_stat_statements_reset(): after fixing a query, reset it.
    One postgres_slow_queries_found finding per database lists the slowest statements (text
    masked, 200 characters). Without the extension (or its preload, or the right to read
    it) one info finding, postgres_slow_queries_unavailable, says how to enable it."""
    cfg = ctx.settings.postgres
    with connect(ctx, params.target) as conn:
        db = str(conn.info.dbname)
        schema = conn.execute(PGSS_SQL).fetchone()
        if schema is None:
            return _unavailable(params, db, "pg_stat_statements is not installed", ENABLE)
        view = sql.Identifier(schema[0], "pg_stat_statements")
        args = {
            "min_calls": params.min_calls,
            "floor": cfg.slow_query_warning_ms,
            "top": params.top,
        }
        try:
            found = rows(conn, sql.SQL(SLOW_SQL).format(view=view), args)
        except psycopg.errors.ObjectNotInPrerequisiteState:
            return _unavailable(
                params,
                db,
                "pg_stat_statements is installed but not loaded",
                "add pg_stat_statements to shared_preload_libraries and restart PostgreSQL",
            )
        except psycopg.errors.InsufficientPrivilege:
            return _unavailable(
                params,
                db,
                "the monitoring role may not read pg_stat_statements",
                "GRANT pg_read_all_stats TO the role in this target's DSN",
            )
        except psycopg.errors.UndefinedColumn:
            return _unavailable(
                params,
                db,
                "pg_stat_statements is older than 1.8 (PostgreSQL 13)",
                "ALTER EXTENSION pg_stat_statements UPDATE on PostgreSQL 13 or later",
            )
    return _slowfinding(params, cfg, db, found) if found else []


def _slowfinding(
    params: SlowQueriesParams, cfg: Any, db: str, found: list[dict[str, Any]]
) -> list[Finding]:
    bands = (
        (cfg.slow_query_warning_ms, Severity.WARNING),
        (cfg.slow_query_high_ms, Severity.HIGH),
        (cfg.slow_query_critical_ms, Severity.CRITICAL),
    )
    statements = []
    for r in found:
        hit = band(r["mean_exec_time"], *bands)
        statements.append(
            {
                "queryid": str(r["queryid"]),
                "role": r["rolname"],
                "calls": r["calls"],
                "mean_ms": round(r["mean_exec_time"], 1),
                "max_ms": round(r["max_exec_time"], 1),
                "rows": r["rows"],
                "severity": hit[0].value if hit else "info",
                "query": safe_query(r["query"]),
            }
        )
    worst = band(found[0]["mean_exec_time"], *bands) or (
        Severity.WARNING,
        cfg.slow_query_warning_ms,
    )
    top = statements[0]
    return [
        finding(
            "postgres_slow_queries",
            params.target,
            "postgres_slow_queries_found",
            worst[0],
            subject=db,
            observed=top["mean_ms"],
            threshold=worst[1],
            evidence={"database": db, "count": len(statements), "statements": statements},
            summary=f"{len(statements)} statement(s) average {cfg.slow_query_warning_ms:.0f} ms"
            f" or more; slowest {top['mean_ms']:.0f} ms over {top['calls']} calls"
            f" (queryid {top['queryid']})",
        )
    ]
