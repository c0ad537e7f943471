"""PostgreSQL maintenance actions (runbook 001 weekly database maintenance)."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import psycopg
from psycopg import sql
from pydantic import Field

from remediation.clients import pg
from remediation.context import ActionContext, CheckContext, Resolved
from remediation.errors import Refused
from remediation.findings import ActionResult
from remediation.params import ActionParams
from remediation.plans import Plan, item, plan_of
from remediation.registry import action
from remediation.resolve import canonical, postgres_target
from remediation.tables import TableRef

# Every table a call names, matched case-insensitively in one catalog read; the caller picks
# the exact match, else the only case-insensitive one (i = the position in the call).
CANDIDATES_SQL = """
SELECT w.i, n.nspname, c.relname
FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS w(nspname, relname, i)
JOIN pg_namespace n ON lower(n.nspname) = lower(w.nspname)
JOIN pg_class c ON c.relnamespace = n.oid AND lower(c.relname) = lower(w.relname)
WHERE c.relkind IN ('r', 'm', 'p')
"""
TABLE_EXISTS_SQL = """
SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'm', 'p')
"""
# After a redelivery: did this table get its VACUUM / ANALYZE since the lost attempt claimed
# the work, and does a session (the lost attempt's, still running server-side) hold or await
# the lock VACUUM and ANALYZE take?
DONE_SINCE_SQL = """
SELECT greatest(s.last_vacuum, s.last_autovacuum) >= to_timestamp(%(since)s) AS vacuumed,
       greatest(s.last_analyze, s.last_autoanalyze) >= to_timestamp(%(since)s) AS analyzed,
       EXISTS (SELECT 1 FROM pg_locks l WHERE l.relation = s.relid
               AND l.mode = 'ShareUpdateExclusiveLock' AND l.pid <> pg_backend_pid()) AS running
FROM pg_stat_user_tables s WHERE s.schemaname = %(schema)s AND s.relname = %(name)s
"""
# A plan's facts per table: dead rows and size, from the statistics views (no lock taken).
TABLE_FACTS_SQL = """
SELECT n.nspname, c.relname, s.n_dead_tup, pg_total_relation_size(c.oid)
FROM unnest(%s::text[], %s::text[]) AS w(nspname, relname)
JOIN pg_namespace n ON n.nspname = w.nspname
JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = w.relname
LEFT JOIN pg_stat_all_tables s ON s.relid = c.oid
WHERE c.relkind IN ('r', 'm', 'p')
"""
RESUME_WAIT_SECONDS = 120
RESOLVE_TIMEOUT_MS = 10_000
"""The resolve step's catalog read gives up after this long (the target is then undecided)."""


class VacuumParams(ActionParams):
    tables: list[TableRef] = Field(min_length=1, max_length=50, description="tables to vacuum")


class AnalyzeParams(VacuumParams):
    pass


def _tables_resource(params: VacuumParams) -> str:
    return params.target + "/" + ",".join(sorted(str(t) for t in params.tables))


def resolve_tables(ctx: CheckContext, params: VacuumParams) -> Resolved:
    """The configured target as configured and the named tables as its catalog spells them
    (an exact match wins, else the only case-insensitive one), deduplicated and sorted; the
    rest are facts["missing"]. Refused when none exists. One read-only query."""
    target = postgres_target(ctx, params.target)
    wanted = list(params.tables)
    dsn = ctx.postgres_dsn(target)
    with pg.connect(dsn, autocommit=False, statement_timeout_ms=RESOLVE_TIMEOUT_MS) as conn:
        conn.read_only = True  # BEGIN READ ONLY
        rows = conn.execute(
            CANDIDATES_SQL, ([t.schema_ for t in wanted], [t.name for t in wanted])
        ).fetchall()
    found: dict[int, list[TableRef]] = {}
    for i, schema, name in rows:
        found.setdefault(int(i) - 1, []).append(TableRef(schema_=schema, name=name))
    tables: dict[tuple[str, str], TableRef] = {}
    missing: list[str] = []
    for i, table in enumerate(wanted):
        match = _match(table, found.get(i, []))
        if match is None:
            missing.append(str(table))
        else:
            tables[(match.schema_, match.name)] = match
    if not tables:
        raise Refused(f"no such table on {target}: {', '.join(sorted(set(missing)))}")
    facts = {"missing": sorted(set(missing))} if missing else {}
    ordered = sorted(tables.values(), key=lambda t: (str(t), t.schema_))
    return canonical(params, facts, target=target, tables=ordered)


def _match(table: TableRef, candidates: list[TableRef]) -> TableRef | None:
    """The exact match, else the only case-insensitive one; None when none or ambiguous."""
    if table in candidates:
        return table
    return candidates[0] if len(candidates) == 1 else None


def table_key(table: TableRef) -> str:
    """A table as a plan names it."""
    return f"table:{table.schema_}.{table.name}"


def _tables_plan(ctx: CheckContext, params: VacuumParams, verb: str) -> Plan:
    """The named tables that exist now (the ones the action would run on), with dead rows
    and total size; read-only, one catalog query in a READ ONLY transaction."""
    tables = params.tables
    dsn = ctx.postgres_dsn(params.target)
    with pg.connect(dsn, autocommit=False, statement_timeout_ms=RESOLVE_TIMEOUT_MS) as conn:
        conn.read_only = True
        rows = conn.execute(
            TABLE_FACTS_SQL, ([t.schema_ for t in tables], [t.name for t in tables])
        ).fetchall()
    facts = {(schema, name): (dead, size) for schema, name, dead, size in rows}
    items = []
    for t in tables:
        if (t.schema_, t.name) not in facts:
            continue  # the action skips it as missing
        dead, size = facts[(t.schema_, t.name)]
        what = f"{verb} {t} ({dead if dead is not None else '?'} dead rows, {size} bytes)"
        items.append(item(table_key(t), what, table=str(t), dead_rows=dead, size_bytes=size))
    missing = len(tables) - len(items)
    summary = f"{verb} {len(items)} table(s) on {params.target}" + (
        f" ({missing} missing, skipped)" if missing else ""
    )
    return plan_of(summary, items)


def plan_vacuum(ctx: CheckContext, params: VacuumParams) -> Plan:
    return _tables_plan(ctx, params, "VACUUM (ANALYZE)")


def plan_analyze(ctx: CheckContext, params: AnalyzeParams) -> Plan:
    return _tables_plan(ctx, params, "ANALYZE")


@action(
    "vacuum_analyze",
    resolve=resolve_tables,
    resource=_tables_resource,
    plan=plan_vacuum,
    cooldown=timedelta(hours=1),
    max_per_hour=12,
)
def vacuum_analyze(ctx: ActionContext, params: VacuumParams) -> ActionResult:
    """VACUUM (ANALYZE) the named tables, one at a time, outside a transaction.

    Runbook 001 weekly database maintenance. Only the tables a finding (or the operator)
    names, as the target's catalog spells them ("PUBLIC.T1" is public.t1 when that is the
    only match); identifiers are always quoted; a table that does not exist is skipped and
    reported, and a call naming no existing table is refused."""
    return _each_table(ctx, params, sql.SQL("VACUUM (ANALYZE) {}"), "vacuumed", "vacuumed")


@action(
    "analyze_tables",
    resolve=resolve_tables,
    resource=_tables_resource,
    plan=plan_analyze,
    cooldown=timedelta(hours=1),
    max_per_hour=30,
)
def analyze_tables(ctx: ActionContext, params: AnalyzeParams) -> ActionResult:
    """ANALYZE the named tables so the planner's statistics are current.

    Runbook 001 weekly database maintenance ("ANALYZE monitored_urls; ANALYZE
    price_history; ..."). Only the tables a finding (or the operator) names, as the
    target's catalog spells them; identifiers are always quoted; a table that does not
    exist is skipped and reported, and a call naming no existing table is refused."""
    return _each_table(ctx, params, sql.SQL("ANALYZE {}"), "analyzed", "analyzed")


def _each_table(
    ctx: ActionContext, params: VacuumParams, statement: sql.SQL, verb: str, done_column: str
) -> ActionResult:
    """Run statement on each existing table, one at a time, in autocommit.

    Redelivered after its worker died (ctx.resumed_since): a table already done since the
    lost attempt claimed the work is skipped, after waiting (bounded) for a VACUUM of it that
    the lost attempt's server session may still be running; so the effect happens once.
    A table the resolve step did not find (ctx.facts["missing"]) is reported missing too;
    when none of them exists any more, before anything was done, the call is refused."""
    done: list[str] = []
    missing: list[str] = list(ctx.facts.get("missing", []))
    already: list[str] = []
    # on an approval, only the approved tables (a table added to the call is not approved)
    tables = [t for t in params.tables if ctx.approves(table_key(t))]
    not_approved = [str(t) for t in params.tables if not ctx.approves(table_key(t))]
    with pg.connect(ctx.postgres_dsn(params.target), autocommit=True) as conn:
        for table in tables:
            if conn.execute(TABLE_EXISTS_SQL, (table.schema_, table.name)).fetchone() is None:
                missing.append(str(table))
                continue
            if ctx.resumed_since is not None and _done_since(
                conn, table, ctx.resumed_since, done_column
            ):
                already.append(str(table))
                continue
            conn.execute(statement.format(table.identifier))
            done.append(str(table))
    if not done and not already:
        raise Refused(f"no such table on {params.target}: {', '.join(missing)}")
    summary = f"{verb} {len(done)} table(s)" + (f", {len(missing)} missing" if missing else "")
    if already:
        summary += f", {len(already)} already {verb} by the lost attempt"
    if not_approved:
        summary += f", {len(not_approved)} not approved"
    return ActionResult(
        ok=True,
        changed=bool(done or already),
        summary=summary,
        detail={verb: done, "missing": missing, "already": already, "not_approved": not_approved},
    )


def _done_since(conn: psycopg.Connection[Any], table: TableRef, since: float, column: str) -> bool:
    """Whether the table was vacuumed/analyzed at or after ``since`` (epoch seconds)."""
    args = {"since": since, "schema": table.schema_, "name": table.name}
    deadline = time.monotonic() + RESUME_WAIT_SECONDS
    while True:
        row = conn.execute(DONE_SINCE_SQL, args).fetchone()
        if row is None:
            return False
        vacuumed, analyzed, running = row
        if not running or time.monotonic() > deadline:
            return bool(vacuumed if column == "vacuumed" else analyzed)
        time.sleep(0.2)
