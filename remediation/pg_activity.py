"""PostgreSQL activity: sessions in pg_stat_activity, and how the PostgreSQL checks report.

Shared by checks/postgres_health.py, checks/postgres_stats.py and
actions/postgres_sessions.py. Query text never leaves as it was: literals are masked,
secrets redacted and the text cut to ``QUERY_CHARS``.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from remediation.clients import pg
from remediation.context import CheckContext
from remediation.findings import Finding, Severity
from remediation.redact import MASK, redact_text

QUERY_CHARS = 200
"""Query text in evidence is cut to this many characters."""
STATEMENT_TIMEOUT_MS = 15_000
"""No health query may hang the worker."""
IDLE, ACTIVE = "idle_in_transaction", "active"

# A quoted literal (also one cut off by track_activity_query_size) or a dollar-quoted body.
_QUOTED = re.compile(r"'(?:[^']|'')*(?:'|\Z)|\$(\w*)\$.*?(?:\$\1\$|\Z)", re.S)
# kind -> (condition on pg_stat_activity.state, the column the age is measured from)
SESSION_STATES = {
    IDLE: ("state IN ('idle in transaction', 'idle in transaction (aborted)')", "state_change"),
    ACTIVE: ("state = 'active'", "query_start"),
}
SESSIONS_SQL = """
SELECT pid, usename, application_name, state, backend_start, {since} AS since,
       extract(epoch FROM now() - {since})::float8 AS age_s, query
FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'client backend'
  AND pid <> pg_backend_pid() AND NOT starts_with(coalesce(application_name, ''), %(own)s)
  AND {state} AND now() - {since} > %(bound)s * interval '1 second'
ORDER BY {since}, pid
"""


def safe_query(text: str | None) -> str:
    """Query text fit for evidence: literals masked, secrets redacted, whitespace folded, cut."""
    masked = _QUOTED.sub(lambda m: f"'{MASK}'" if m[0][0] == "'" else f"$${MASK}$$", text or "")
    folded = " ".join(redact_text(masked).split())
    return folded if len(folded) <= QUERY_CHARS else folded[: QUERY_CHARS - 1] + "…"


def connect(ctx: CheckContext, target: str) -> psycopg.Connection[Any]:
    """A tagged autocommit connection with the configured connect and statement timeouts."""
    timeout = ctx.settings.postgres.connect_timeout_seconds
    dsn = ctx.postgres_dsn(target)
    return pg.connect(dsn, timeout=timeout, statement_timeout_ms=STATEMENT_TIMEOUT_MS)


def rows(conn: psycopg.Connection[Any], query: Any, args: Any = None) -> list[dict[str, Any]]:
    """The rows of query as dicts."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, args).fetchall()


def list_sessions(conn: psycopg.Connection[Any], kind: str, bound_s: int) -> list[dict[str, Any]]:
    """Sessions of this database in ``kind`` for longer than bound_s, oldest first.

    Never the caller's own session nor any session whose application_name starts with
    'remediation' (the worker's own)."""
    state, since = SESSION_STATES[kind]
    query = sql.SQL(SESSIONS_SQL).format(since=sql.Identifier(since), state=sql.SQL(state))
    return rows(conn, query, {"own": pg.APPLICATION_NAME, "bound": bound_s})


def band(value: float, *limits: tuple[float, Severity]) -> tuple[Severity, float] | None:
    """The most severe (severity, limit) whose limit ``value`` reaches, or None."""
    hits = [(sev, limit) for limit, sev in limits if value >= limit]
    return max(hits, key=lambda hit: hit[0].rank) if hits else None


def finding(name: str, target: str, kind: str, severity: Severity, **kw: Any) -> Finding:
    """A finding of the PostgreSQL check name on target."""
    return Finding(check=name, target=target, kind=kind, severity=severity, **kw)


def pretty_bytes(n: float) -> str:
    """A byte count for people: 512 B, 1.5 kB, 2.0 GB."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"
