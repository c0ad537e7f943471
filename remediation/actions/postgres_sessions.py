"""End PostgreSQL sessions that hold a database up (runbook 002 "Connection Pool": leaks).

Only sessions an operator allow-listed (REMEDIATION_POSTGRES__SESSION_ALLOW_ROLES /
__SESSION_ALLOW_APPLICATIONS) are ever signalled; with both lists empty nothing is, and a
call is refused before any guard (quietly: it is configuration, not an incident). Each
session is re-checked in the same statement that signals it (same backend, still in the
same state since the same moment, same role and application), so a session that moved on
between reading and acting is left alone.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg
from psycopg import sql

from remediation.context import ActionContext, CheckContext, Resolved
from remediation.errors import Refused
from remediation.findings import ActionResult
from remediation.params import ActionParams
from remediation.pg_activity import (
    ACTIVE,
    IDLE,
    SESSION_STATES,
    connect,
    list_sessions,
    safe_query,
)
from remediation.plans import Plan, item, plan_of
from remediation.registry import action
from remediation.resolve import canonical, postgres_target
from remediation.settings import PostgresSettings

TERMINATE_WAIT_MS = 5000
"""pg_terminate_backend waits this long for the backend to exit (PostgreSQL 14+)."""
ALLOW_VARS = "REMEDIATION_POSTGRES__SESSION_ALLOW_ROLES / __SESSION_ALLOW_APPLICATIONS"

SIGNAL_SQL = """
SELECT {signal} FROM pg_stat_activity
WHERE pid = %(pid)s AND backend_start = %(backend_start)s AND {since} = %(since)s AND {state}
  AND usename IS NOT DISTINCT FROM %(usename)s
  AND application_name IS NOT DISTINCT FROM %(application_name)s
"""


class TerminateIdleTransactionsParams(ActionParams):
    """Bounds, allow-lists and the per-run cap come from REMEDIATION_POSTGRES__*."""


class CancelLongQueriesParams(ActionParams):
    """Opt-in, bounds, allow-lists and the per-run cap come from REMEDIATION_POSTGRES__*."""


def _may_signal(cfg: PostgresSettings, past: str) -> None:
    """Refused (quietly) when no session may be signalled: both allow-lists are empty."""
    if not cfg.session_allow_roles and not cfg.session_allow_applications:
        raise Refused(
            f"no session may be {past}: the allow-lists are empty (set {ALLOW_VARS})",
            notice=False,
        )


def _may_cancel(cfg: PostgresSettings) -> None:
    """Refused (quietly) unless cancelling is switched on and something is allow-listed."""
    if not cfg.cancel_long_queries:
        raise Refused(
            "cancelling long queries is off (opt-in): set"
            " REMEDIATION_POSTGRES__CANCEL_LONG_QUERIES=true to let this action cancel"
            f" allow-listed queries running longer than {cfg.long_query_seconds}s",
            notice=False,
        )
    _may_signal(cfg, "cancelled")


def resolve_terminate(ctx: CheckContext, params: TerminateIdleTransactionsParams) -> Resolved:
    """The configured target as configured; refused when the allow-lists allow nothing."""
    target = postgres_target(ctx, params.target)
    _may_signal(ctx.settings.postgres, "terminated")
    return canonical(params, target=target)


def resolve_cancel(ctx: CheckContext, params: CancelLongQueriesParams) -> Resolved:
    """The configured target as configured; refused unless cancelling is on and allowed."""
    target = postgres_target(ctx, params.target)
    _may_cancel(ctx.settings.postgres)
    return canonical(params, target=target)


def _allowed(s: dict[str, Any], cfg: PostgresSettings) -> bool:
    return s["usename"] in cfg.session_allow_roles or (
        s["application_name"] in cfg.session_allow_applications
    )


def _signal(conn: psycopg.Connection[Any], kind: str, verb: str, s: dict[str, Any]) -> str:
    """'done', 'gone' (no longer the session that was read) or 'failed: <reason>'."""
    state, since = SESSION_STATES[kind]
    if verb == "terminate":
        wait = TERMINATE_WAIT_MS if conn.info.server_version >= 140000 else None
        args = [sql.Identifier("pid")] + ([sql.Literal(wait)] if wait else [])
        fn: sql.Composable = sql.SQL("pg_terminate_backend({})").format(sql.SQL(", ").join(args))
    else:
        fn = sql.SQL("pg_cancel_backend(pid)")
    query = sql.SQL(SIGNAL_SQL).format(signal=fn, since=sql.Identifier(since), state=sql.SQL(state))
    try:
        row = conn.execute(query, s).fetchone()
    except psycopg.errors.InsufficientPrivilege as exc:
        return f"failed: {exc.diag.message_primary or 'permission denied'}"
    if row is None:
        return "gone"
    return "done" if row[0] else f"failed: pg_{verb}_backend returned false"


def session_key(s: dict[str, Any]) -> str:
    """A session as a plan names it: the same pid with another backend_start is another
    session (pids are reused)."""
    return f"session:{s['pid']}:{s['backend_start'].isoformat()}"


def _chosen_now(
    ctx: CheckContext, target: str, kind: str, bound: int
) -> tuple[list[Any], int, int]:
    """(sessions it would signal, how many are not allow-listed, how many over the cap)."""
    cfg = ctx.settings.postgres
    with connect(ctx, target) as conn:
        sessions = list_sessions(conn, kind, bound)
    allowed = [s for s in sessions if _allowed(s, cfg)]
    return allowed[: cfg.max_sessions_per_run], len(sessions) - len(allowed), len(allowed)


def sessions_plan(ctx: CheckContext, target: str, kind: str, verb: str, bound: int) -> Plan:
    """Which sessions a run would end now (read-only): user, application, age and the
    query with its literals masked."""
    wanted, not_allowed, allowed = _chosen_now(ctx, target, kind, bound)
    cap = ctx.settings.postgres.max_sessions_per_run
    what = "idle in transaction" if kind == IDLE else "running a query"
    items = [
        item(
            session_key(s),
            f"{verb} pid {s['pid']} ({s['usename']}, {s['application_name'] or '-'}),"
            f" {what} for {s['age_s']:.0f}s: {safe_query(s['query'])}",
            pid=s["pid"],
            user=s["usename"],
            application=s["application_name"],
            age_s=round(s["age_s"], 1),
            query=safe_query(s["query"]),
        )
        for s in wanted
    ]
    summary = (
        f"{verb} {len(items)} session(s) {what} for more than {bound}s on {target}"
        f" ({not_allowed} not allow-listed and {max(0, allowed - cap)} over the cap of"
        f" {cap} left alone)"
    )
    return plan_of(summary, items)


def plan_terminate(ctx: CheckContext, params: TerminateIdleTransactionsParams) -> Plan:
    bound = ctx.settings.postgres.idle_in_transaction_seconds
    return sessions_plan(ctx, params.target, IDLE, "terminate", bound)


def plan_cancel(ctx: CheckContext, params: CancelLongQueriesParams) -> Plan:
    bound = ctx.settings.postgres.long_query_seconds
    return sessions_plan(ctx, params.target, ACTIVE, "cancel", bound)


def end_sessions(ctx: ActionContext, target: str, kind: str, verb: str, bound: int) -> ActionResult:
    """Signal the oldest allow-listed sessions in ``kind`` longer than bound, up to the cap."""
    cfg = ctx.settings.postgres
    past = "terminated" if verb == "terminate" else "cancelled"
    what = "idle in transaction" if kind == IDLE else "running a query"
    _may_signal(cfg, past)  # the resolve step refused already; a direct call is refused too
    done: list[dict[str, Any]] = []
    gone: list[int] = []
    failed: list[dict[str, Any]] = []
    with connect(ctx, target) as conn:
        sessions = list_sessions(conn, kind, bound)
        # on an approval, only the sessions approved that are still there (none new)
        listed = [s for s in sessions if _allowed(s, cfg)]
        allowed = [s for s in listed if ctx.approves(session_key(s))]
        wanted = allowed[: cfg.max_sessions_per_run]
        granted = ctx.reserve(len(wanted))  # blast radius: sessions per window, all workers
        chosen = wanted[:granted]
        for s in chosen:
            outcome = _signal(conn, kind, verb, s)
            who = {k: s[k] for k in ("pid", "usename", "application_name")}
            if outcome == "done":
                done.append({**who, "age_s": round(s["age_s"], 1)})
                ctx.log.info(f"session {past}", **who, age_s=round(s["age_s"], 1))
            elif outcome == "gone":
                gone.append(s["pid"])
            else:
                failed.append({**who, "error": outcome.removeprefix("failed: ")})
    ctx.give_back(len(chosen) - len(done))  # a session that moved on or failed was not ended
    not_allowed, over_cap = len(sessions) - len(listed), len(allowed) - len(wanted)
    not_approved = len(listed) - len(allowed)
    over_blast = len(wanted) - len(chosen)
    summary = (
        f"{past} {len(done)} session(s) {what} for more than {bound}s;"
        f" {not_allowed} not allow-listed, {over_cap} over the cap of {cfg.max_sessions_per_run}"
        + (f", {not_approved} not approved (new since the approval)" if not_approved else "")
        + (f", {len(gone)} moved on" if gone else "")
        + (f", {over_blast} left at the blast-radius cap" if over_blast else "")
        + (f", {len(failed)} failed: {failed[0]['error']}" if failed else "")
    )
    detail = {
        past: done,
        "skipped_not_allowed": not_allowed,
        "skipped_over_cap": over_cap,
        "skipped_not_approved": not_approved,
        "skipped_blast_radius": over_blast,
        "moved_on": gone,
        "failed": failed,
        "bound_seconds": bound,
    }
    return ActionResult(ok=not failed, changed=bool(done), summary=summary, detail=detail)


@action(
    "terminate_idle_transactions",
    resolve=resolve_terminate,
    plan=plan_terminate,
    cooldown=timedelta(minutes=5),
    max_per_hour=6,
)
def terminate_idle_transactions(
    ctx: ActionContext, params: TerminateIdleTransactionsParams
) -> ActionResult:
    """End sessions idle in transaction too long (runbook 002 "Connection Pool": leaks).

    Re-reads pg_stat_activity at run time: sessions of this database idle in transaction
    longer than REMEDIATION_POSTGRES__IDLE_IN_TRANSACTION_SECONDS whose role is in
    SESSION_ALLOW_ROLES or whose application_name is in SESSION_ALLOW_APPLICATIONS (both
    empty: the call is refused, quietly, and costs no budget). Never its own session, never
    application_name 'remediation*'. At most MAX_SESSIONS_PER_RUN per run, oldest first, with
    pg_terminate_backend: the client sees its connection closed and its transaction rolled
    back. Sessions left (not allow-listed, over the cap) keep the finding open, so the
    verification fails and a human is notified."""
    bound = ctx.settings.postgres.idle_in_transaction_seconds
    return end_sessions(ctx, params.target, IDLE, "terminate", bound)


@action(
    "cancel_long_queries",
    resolve=resolve_cancel,
    plan=plan_cancel,
    cooldown=timedelta(minutes=5),
    max_per_hour=6,
)
def cancel_long_queries(ctx: ActionContext, params: CancelLongQueriesParams) -> ActionResult:
    """Cancel queries running too long (runbook 002 "Slow Queries"); opt-in.

    Refused (quietly, costing no budget) unless REMEDIATION_POSTGRES__CANCEL_LONG_QUERIES=true
    and an allow-list names something. Then, like terminate_idle_transactions: queries of this database active longer than
    LONG_QUERY_SECONDS, allow-listed by role or application only, never the worker's own,
    at most MAX_SESSIONS_PER_RUN per run, oldest first, with pg_cancel_backend: the query
    fails with "canceling statement due to user request", the session stays connected."""
    cfg = ctx.settings.postgres
    _may_cancel(cfg)  # the resolve step refused already; a direct call is refused too
    return end_sessions(ctx, params.target, ACTIVE, "cancel", cfg.long_query_seconds)
