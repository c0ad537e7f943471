"""PostgreSQL maintenance actions (runbook 001 weekly database maintenance)."""

from __future__ import annotations

from datetime import timedelta

from psycopg import sql
from pydantic import Field

from remediation.clients import pg
from remediation.context import ActionContext
from remediation.findings import ActionResult
from remediation.params import ActionParams
from remediation.registry import action
from remediation.tables import TableRef

TABLE_EXISTS_SQL = """
SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'm', 'p')
"""


class VacuumParams(ActionParams):
    tables: list[TableRef] = Field(min_length=1, max_length=50, description="tables to vacuum")


class AnalyzeParams(VacuumParams):
    pass


def _tables_resource(params: VacuumParams) -> str:
    return params.target + "/" + ",".join(sorted(str(t) for t in params.tables))


@action(
    "vacuum_analyze",
    resource=_tables_resource,
    cooldown=timedelta(hours=1),
    max_per_hour=12,
)
def vacuum_analyze(ctx: ActionContext, params: VacuumParams) -> ActionResult:
    """VACUUM (ANALYZE) the named tables, one at a time, outside a transaction.

    Runbook 001 weekly database maintenance. Only the tables a finding (or the operator)
    names; identifiers are always quoted; a table that no longer exists is skipped."""
    return _each_table(ctx, params, sql.SQL("VACUUM (ANALYZE) {}"), "vacuumed")


@action(
    "analyze_tables",
    resource=_tables_resource,
    cooldown=timedelta(hours=1),
    max_per_hour=30,
)
def analyze_tables(ctx: ActionContext, params: AnalyzeParams) -> ActionResult:
    """ANALYZE the named tables so the planner's statistics are current.

    Runbook 001 weekly database maintenance ("ANALYZE monitored_urls; ANALYZE
    price_history; ..."). Only the tables a finding (or the operator) names; identifiers
    are always quoted; a table that no longer exists is skipped."""
    return _each_table(ctx, params, sql.SQL("ANALYZE {}"), "analyzed")


def _each_table(
    ctx: ActionContext, params: VacuumParams, statement: sql.SQL, verb: str
) -> ActionResult:
    """Run statement on each existing table, one at a time, in autocommit."""
    done, missing = [], []
    with pg.connect(ctx.postgres_dsn(params.target), autocommit=True) as conn:
        for table in params.tables:
            if conn.execute(TABLE_EXISTS_SQL, (table.schema_, table.name)).fetchone() is None:
                missing.append(str(table))
                continue
            conn.execute(statement.format(table.identifier))
            done.append(str(table))
    return ActionResult(
        ok=True,
        changed=bool(done),
        summary=f"{verb} {len(done)} table(s)" + (f", {len(missing)} missing" if missing else ""),
        detail={verb: done, "missing": missing},
    )
