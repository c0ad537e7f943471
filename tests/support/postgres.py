"""PostgreSQL scenes for checks and actions: bloated tables, sessions idle in a transaction,
long-running queries."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from remediation import pg_activity
from tests.support.base import wait_for


@dataclass(frozen=True)
class WeakRole:
    """A LOGIN-only role (the doctor's under-privileged setup)."""

    role: str
    dsn: str  # a postgresql:// URL as this role, with a password (trust auth ignores it)
    table: str  # schema.table it does not own


HOSTILE = ["Price History", 'x"; drop table y; --', "semi;colon"]


def bloat(dsn: str, table: str, rows: int = 5000, delete_share: float = 0.8) -> None:
    """Create table, fill it, delete a share of rows, with autovacuum off for it."""
    ident = sql.Identifier("public", table)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id int, pad text)").format(ident))
        conn.execute(sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = false)").format(ident))
        conn.execute(
            sql.SQL(
                "INSERT INTO {} SELECT g, repeat('x', 50) FROM generate_series(1, %s) g"
            ).format(ident),
            (rows,),
        )
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE id <= %s").format(ident), (int(rows * delete_share),)
        )


def dead_rows(dsn: str, table: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = %s", (table,)
        ).fetchone()
        return int(row[0]) if row else 0


FAST = {
    "REMEDIATION_POSTGRES__IDLE_IN_TRANSACTION_SECONDS": "1",
    "REMEDIATION_POSTGRES__LONG_QUERY_SECONDS": "1",
}


@contextlib.contextmanager
def session(
    dsn: str, *, app: str, user: str | None = None, idle_in_transaction: bool = True
) -> Iterator[psycopg.Connection[Any]]:
    """A client session tagged ``app``; by default left idle in an open transaction."""
    extra = {"application_name": app, **({"user": user} if user else {})}
    conn = psycopg.connect(psycopg.conninfo.make_conninfo(dsn, **extra), autocommit=False)
    try:
        if idle_in_transaction:
            conn.execute("SELECT 1")
        yield conn
    finally:
        with contextlib.suppress(psycopg.Error):
            conn.close()


@contextlib.contextmanager
def running(dsn: str, app: str, query: str = "SELECT pg_sleep(30)") -> Iterator[dict[str, Any]]:
    """Run ``query`` in a thread as ``app``; yields {"pid", "error"}; ends it on exit."""
    conn = psycopg.connect(
        psycopg.conninfo.make_conninfo(dsn, application_name=app), autocommit=True
    )
    box: dict[str, Any] = {"pid": conn.info.backend_pid, "error": None}

    def work() -> None:
        try:
            conn.execute(query)
        except psycopg.Error as exc:
            box["error"] = exc

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    box["thread"] = thread
    try:
        yield box
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_cancel_backend(%s)", (box["pid"],))
        thread.join(10)
        conn.close()


def wait_for_sessions(dsn: str, kind: str, pids: set[int], bound_s: int = 1) -> None:
    """Wait until every pid has been in ``kind`` for longer than bound_s."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        seen = lambda: pids <= {s["pid"] for s in pg_activity.list_sessions(conn, kind, bound_s)}  # noqa: E731
        wait_for(seen, 10, 0.1, f"sessions {sorted(pids)} {kind} > {bound_s}s")
