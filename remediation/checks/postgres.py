"""PostgreSQL checks (runbook 001 weekly database maintenance)."""

from __future__ import annotations

from pydantic import Field

from remediation.clients import pg
from remediation.context import CheckContext
from remediation.findings import Finding, Severity
from remediation.params import CheckParams
from remediation.registry import check

DEAD_TUPLES_SQL = """
SELECT schemaname, relname, n_live_tup, n_dead_tup,
       n_dead_tup::float8 / greatest(n_live_tup + n_dead_tup, 1) AS dead_ratio,
       last_vacuum, last_autovacuum, last_analyze, last_autoanalyze
FROM pg_stat_user_tables
WHERE n_dead_tup >= %(min_rows)s
  AND n_dead_tup::float8 / greatest(n_live_tup + n_dead_tup, 1) >= %(min_ratio)s
ORDER BY n_dead_tup DESC
LIMIT %(limit)s
"""


class DeadTuplesParams(CheckParams):
    min_dead_ratio: float = Field(0.2, gt=0, le=1, description="dead / (live + dead) that is bloat")
    min_dead_rows: int = Field(1000, ge=1, description="ignore tables with fewer dead rows")
    high_dead_ratio: float = Field(0.5, gt=0, le=1, description="ratio reported as high")
    max_tables: int = Field(50, ge=1, le=1000, description="report at most this many tables")


@check("postgres_dead_tuples")
def postgres_dead_tuples(ctx: CheckContext, params: DeadTuplesParams) -> list[Finding]:
    """Tables whose dead rows outgrow autovacuum (runbook 001 weekly: VACUUM ANALYZE).

    One query over pg_stat_user_tables however many tables the database has."""
    with pg.connect(ctx.postgres_dsn(params.target)) as conn:
        rows = conn.execute(
            DEAD_TUPLES_SQL,
            {
                "min_rows": params.min_dead_rows,
                "min_ratio": params.min_dead_ratio,
                "limit": params.max_tables,
            },
        ).fetchall()
    findings = []
    for schema, table, live, dead, ratio, *times in rows:
        severity = Severity.HIGH if ratio >= params.high_dead_ratio else Severity.WARNING
        findings.append(
            Finding(
                check="postgres_dead_tuples",
                target=params.target,
                subject=f"{schema}.{table}",
                kind="postgres_dead_tuples_high",
                severity=severity,
                observed=round(ratio, 4),
                threshold=params.min_dead_ratio,
                summary=f"{dead} dead rows ({ratio:.0%}) in {schema}.{table}",
                evidence={
                    "table": {"schema": schema, "name": table},
                    "n_live_tup": live,
                    "n_dead_tup": dead,
                    "last_vacuum": _iso(times[0]),
                    "last_autovacuum": _iso(times[1]),
                    "last_analyze": _iso(times[2]),
                    "last_autoanalyze": _iso(times[3]),
                },
            )
        )
    return findings


def _iso(value: object) -> str | None:
    return value.isoformat() if hasattr(value, "isoformat") else None
