"""PostgreSQL table maintenance checks (runbook 001 weekly database maintenance)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from remediation.clients import pg
from remediation.context import CheckContext
from remediation.findings import Finding, Severity
from remediation.params import CheckParams
from remediation.registry import check

# One query for the whole database, however many tables it has.
TABLES_SQL = """
SELECT schemaname, relname, n_live_tup, n_dead_tup, n_mod_since_analyze,
       n_dead_tup::float8 / greatest(n_live_tup + n_dead_tup, 1) AS dead_ratio,
       last_vacuum, last_autovacuum, last_analyze, last_autoanalyze,
       extract(epoch FROM now() - greatest(last_analyze, last_autoanalyze)) AS analyze_age_s
FROM pg_stat_user_tables
WHERE (n_dead_tup >= %(min_rows)s
       AND n_dead_tup::float8 / greatest(n_live_tup + n_dead_tup, 1) >= %(min_ratio)s)
   OR (n_mod_since_analyze >= %(min_modified)s
       AND coalesce(greatest(last_analyze, last_autoanalyze) < now() - %(stale)s * interval '1 day',
                    true))
ORDER BY n_dead_tup DESC, n_mod_since_analyze DESC
LIMIT %(limit)s
"""


class DeadTuplesParams(CheckParams):
    min_dead_ratio: float = Field(0.2, gt=0, le=1, description="dead / (live + dead) that is bloat")
    min_dead_rows: int = Field(1000, ge=1, description="ignore tables with fewer dead rows")
    high_dead_ratio: float = Field(0.5, gt=0, le=1, description="ratio reported as high")
    max_tables: int = Field(50, ge=1, le=1000, description="report at most this many tables")
    stale_stats_days: float | None = Field(
        None, gt=0, description="last (auto)analyze older than this; default from settings"
    )
    min_modified_rows: int = Field(1000, ge=1, description="rows changed since the last analyze")


def _table_finding(params: DeadTuplesParams, row: dict[str, Any], **kw: Any) -> Finding:
    schema, table = row["schemaname"], row["relname"]
    return Finding(
        check="postgres_dead_tuples",
        target=params.target,
        subject=f"{schema}.{table}",
        evidence={
            "table": {"schema": schema, "name": table},
            "n_live_tup": row["n_live_tup"],
            "n_dead_tup": row["n_dead_tup"],
            "n_mod_since_analyze": row["n_mod_since_analyze"],
            **{
                k: _iso(row[k])
                for k in ("last_vacuum", "last_autovacuum", "last_analyze", "last_autoanalyze")
            },
        },
        **kw,
    )


@check("postgres_dead_tuples")
def postgres_dead_tuples(ctx: CheckContext, params: DeadTuplesParams) -> list[Finding]:
    """Tables whose dead rows outgrow autovacuum, and tables with stale statistics.

    Runbook 001 weekly: VACUUM ANALYZE (kind postgres_dead_tuples_high) and ANALYZE
    (kind postgres_stats_stale: rows changed since a last (auto)analyze older than
    REMEDIATION_POSTGRES__STALE_STATS_DAYS, or never analyzed). One query over
    pg_stat_user_tables however many tables the database has."""
    stale = params.stale_stats_days or ctx.settings.postgres.stale_stats_days
    with pg.connect(ctx.postgres_dsn(params.target)) as conn:
        cur = conn.execute(
            TABLES_SQL,
            {
                "min_rows": params.min_dead_rows,
                "min_ratio": params.min_dead_ratio,
                "min_modified": params.min_modified_rows,
                "stale": stale,
                "limit": params.max_tables,
            },
        )
        names = [c.name for c in cur.description or []]
        rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    findings = []
    for row in rows:
        ratio, dead = row["dead_ratio"], row["n_dead_tup"]
        where = f"{row['schemaname']}.{row['relname']}"
        if dead >= params.min_dead_rows and ratio >= params.min_dead_ratio:
            findings.append(
                _table_finding(
                    params,
                    row,
                    kind="postgres_dead_tuples_high",
                    severity=Severity.HIGH if ratio >= params.high_dead_ratio else Severity.WARNING,
                    observed=round(ratio, 4),
                    threshold=params.min_dead_ratio,
                    summary=f"{dead} dead rows ({ratio:.0%}) in {where}",
                )
            )
        else:  # VACUUM (ANALYZE) also analyzes: a stale finding only where no vacuum is due
            age = row["analyze_age_s"]
            since = (
                "it was never analyzed"
                if age is None
                else f"the last analyze {float(age) / 86400:.1f} days ago"
            )
            findings.append(
                _table_finding(
                    params,
                    row,
                    kind="postgres_stats_stale",
                    severity=Severity.WARNING,
                    observed=None if age is None else round(float(age) / 86400, 2),
                    threshold=stale,
                    summary=f"{row['n_mod_since_analyze']} rows changed in {where} since {since}",
                )
            )
    return findings


def _iso(value: object) -> str | None:
    return value.isoformat() if hasattr(value, "isoformat") else None
