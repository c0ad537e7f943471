"""PostgreSQL activity (runbook 002 "Database Issues", runbook 001 "System Overload").

Connections and latency, and sessions that hold transactions or run too long; reading
pg_stat_activity is in remediation.pg_activity (shared with postgres_stats and the
session actions). Every threshold is a ``REMEDIATION_POSTGRES__*`` setting. Query text
never leaves as it was: literals are masked, secrets redacted and the text cut to
``QUERY_CHARS``. The monitoring role needs ``pg_monitor`` (or to be a superuser) to see
other roles' sessions and statements.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

import psycopg

from remediation.context import CheckContext
from remediation.findings import Finding, Severity
from remediation.params import CheckParams
from remediation.pg_activity import (
    ACTIVE,
    IDLE,
    band,
    connect,
    finding,
    list_sessions,
    rows,
    safe_query,
)
from remediation.redact import MASK, redact_text
from remediation.registry import check
from remediation.timing import ms_since

MAX_LISTED = 20
"""Sessions listed in one finding's evidence (the count covers all of them)."""


CONNECTIONS_SQL = """
SELECT count(*) AS in_use,
       current_setting('max_connections')::int AS max_connections,
       current_setting('superuser_reserved_connections')::int AS reserved,
       count(*) FILTER (WHERE application_name = %(app)s) AS pool_open,
       count(*) FILTER (WHERE application_name = %(app)s AND state <> 'idle') AS pool_busy
FROM pg_stat_activity WHERE coalesce(backend_type, 'client backend') = 'client backend'
"""


# --- postgres_connections -----------------------------------------------------------------


class ConnectionsParams(CheckParams):
    """Thresholds come from REMEDIATION_POSTGRES__*; only the target is chosen per call."""


def safe_error(exc: BaseException, dsn: str) -> str:
    """The error text without the DSN's password, whatever form the driver echoed it in."""
    text = redact_text(" ".join(f"{type(exc).__name__}: {exc}".split()))
    secrets = {urlsplit(dsn).password or ""}
    try:
        secrets.add(str(psycopg.conninfo.conninfo_to_dict(dsn).get("password") or ""))
    except psycopg.Error:
        pass
    for secret in sorted(secrets - {""}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text[:500]


def _where(dsn: str) -> dict[str, Any]:
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.Error:
        return {}
    return {k: info.get(k) for k in ("host", "port", "dbname")}


def _unreachable(params: ConnectionsParams, dsn: str, exc: BaseException) -> Finding:
    error, where = safe_error(exc, dsn), _where(dsn)
    place = "{host}:{port}/{dbname}".format(**where) if where else "?"
    return finding(
        "postgres_connections",
        params.target,
        "postgres_unreachable",
        Severity.CRITICAL,
        evidence={**where, "error": error},
        summary=f"cannot reach PostgreSQL {params.target!r} ({place}): {error}",
    )


@check("postgres_connections")
def postgres_connections(ctx: CheckContext, params: ConnectionsParams) -> list[Finding]:
    """Can we connect, how fast, and how full are the connection slots (runbook 002).

    A failed connection (within REMEDIATION_POSTGRES__CONNECT_TIMEOUT_SECONDS) is
    postgres_unreachable, critical ("database is down: Critical - contact DBA"). The round
    trip of SELECT 1 past LATENCY_WARNING_MS / LATENCY_HIGH_MS is postgres_latency_high.
    Client sessions against max_connections minus superuser_reserved_connections (what
    applications can use) at CONNECTIONS_WARNING / HIGH / CRITICAL_RATIO is
    postgres_connections_high. With POOL_SIZE and POOL_APPLICATION_NAME set, that
    application's busy sessions (not 'idle': checked out of its pool) against the pool
    size are postgres_pool_exhausted, at most high ("pool exhausted: High - increase
    pool size"; the database itself still answers)."""
    cfg = ctx.settings.postgres
    dsn = ctx.postgres_dsn(params.target)
    conn = None
    try:
        started = time.perf_counter()
        conn = connect(ctx, params.target)
        connect_ms, started = ms_since(started, clock=time.perf_counter), time.perf_counter()
        conn.execute("SELECT 1").fetchone()
        rtt_ms = ms_since(started, clock=time.perf_counter)
    except psycopg.Error as exc:
        if conn is not None:
            conn.close()
        return [_unreachable(params, dsn, exc)]
    with conn:
        (stats,) = rows(conn, CONNECTIONS_SQL, {"app": cfg.pool_application_name})
    found = [_latency(params, cfg, rtt_ms, connect_ms), _slots(params, cfg, stats)]
    if cfg.pool_size and cfg.pool_application_name:
        found.append(_pool(params, cfg, stats))
    elif cfg.pool_size or cfg.pool_application_name:
        ctx.log.warning("pool check skipped: set both POOL_SIZE and POOL_APPLICATION_NAME")
    return [f for f in found if f is not None]


def _latency(params: ConnectionsParams, cfg: Any, rtt_ms: float, connect_ms: float) -> Any:
    hit = band(
        rtt_ms, (cfg.latency_warning_ms, Severity.WARNING), (cfg.latency_high_ms, Severity.HIGH)
    )
    if hit is None:
        return None
    return finding(
        "postgres_connections",
        params.target,
        "postgres_latency_high",
        hit[0],
        observed=rtt_ms,
        threshold=hit[1],
        evidence={"round_trip_ms": rtt_ms, "connect_ms": connect_ms},
        summary=f"SELECT 1 took {rtt_ms:.1f} ms (limit {hit[1]} ms)",
    )


def _slots(params: ConnectionsParams, cfg: Any, s: dict[str, Any]) -> Any:
    usable = max(s["max_connections"] - s["reserved"], 1)
    ratio = s["in_use"] / usable
    hit = band(
        ratio,
        (cfg.connections_warning_ratio, Severity.WARNING),
        (cfg.connections_high_ratio, Severity.HIGH),
        (cfg.connections_critical_ratio, Severity.CRITICAL),
    )
    if hit is None:
        return None
    evidence = {
        "in_use": s["in_use"],
        "max_connections": s["max_connections"],
        "superuser_reserved_connections": s["reserved"],
        "usable": usable,
    }
    return finding(
        "postgres_connections",
        params.target,
        "postgres_connections_high",
        hit[0],
        observed=round(ratio, 4),
        threshold=hit[1],
        evidence=evidence,
        summary=f"{s['in_use']} of {usable} usable connections in use ({ratio:.0%})",
    )


def _pool(params: ConnectionsParams, cfg: Any, s: dict[str, Any]) -> Any:
    ratio = s["pool_busy"] / cfg.pool_size
    hit = band(
        ratio,
        (cfg.connections_warning_ratio, Severity.WARNING),
        (cfg.connections_high_ratio, Severity.HIGH),
    )
    if hit is None:
        return None
    app = cfg.pool_application_name
    return finding(
        "postgres_connections",
        params.target,
        "postgres_pool_exhausted",
        hit[0],
        subject=app,
        observed=round(ratio, 4),
        threshold=hit[1],
        evidence={
            "application_name": app,
            "pool_size": cfg.pool_size,
            "busy": s["pool_busy"],
            "open": s["pool_open"],
        },
        summary=f"{s['pool_busy']} of {cfg.pool_size} pool connections of {app!r} busy",
    )


# --- postgres_sessions --------------------------------------------------------------------


class SessionsParams(CheckParams):
    """Bounds come from REMEDIATION_POSTGRES__IDLE_IN_TRANSACTION_SECONDS / LONG_QUERY_SECONDS."""


def session_evidence(s: dict[str, Any]) -> dict[str, Any]:
    """What a human needs to identify a session; the query only masked and cut."""
    return {
        "pid": s["pid"],
        "usename": s["usename"],
        "application_name": s["application_name"],
        "state": s["state"],
        "age_s": round(s["age_s"], 1),
        "query": safe_query(s["query"]),
    }


@check("postgres_sessions")
def postgres_sessions(ctx: CheckContext, params: SessionsParams) -> list[Finding]:
    """Sessions idle in transaction or running one query too long (runbooks 001 and 002).

    Runbook 001 "System Overload Response" looks at pg_stat_activity; runbook 002 says
    check for connection leaks. In this database only, never the worker's own sessions
    (application_name 'remediation*'): sessions idle in transaction longer than
    IDLE_IN_TRANSACTION_SECONDS are one postgres_idle_in_transaction finding (warning: they
    hold locks and stop vacuum); queries active longer than LONG_QUERY_SECONDS are one
    postgres_long_query finding (high: "queries are slow: High"). Evidence lists pid, role,
    application and age; query text is masked and cut to 200 characters."""
    cfg = ctx.settings.postgres
    with connect(ctx, params.target) as conn:
        idle = list_sessions(conn, IDLE, cfg.idle_in_transaction_seconds)
        active = list_sessions(conn, ACTIVE, cfg.long_query_seconds)
    found = []
    for kind, sessions, bound, sev, what in (
        (
            "postgres_idle_in_transaction",
            idle,
            cfg.idle_in_transaction_seconds,
            Severity.WARNING,
            "idle in transaction",
        ),
        ("postgres_long_query", active, cfg.long_query_seconds, Severity.HIGH, "running a query"),
    ):
        if not sessions:
            continue
        oldest = sessions[0]
        found.append(
            finding(
                "postgres_sessions",
                params.target,
                kind,
                sev,
                observed=len(sessions),
                threshold=bound,
                evidence={
                    "count": len(sessions),
                    "oldest_age_s": round(oldest["age_s"]),
                    "sessions": [session_evidence(s) for s in sessions[:MAX_LISTED]],
                },
                summary=f"{len(sessions)} session(s) {what} for more than {bound}s"
                f" (oldest {oldest['age_s']:.0f}s, pid {oldest['pid']})",
            )
        )
    return found
