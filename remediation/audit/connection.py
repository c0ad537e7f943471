"""Connections to the audit database: one pool per process and DSN, and errors naming where.

Prefork children get their own pools after fork (the key holds the process id). Messages
name host, port, database and user, never the password.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from remediation.errors import AuditError
from remediation.redact import MASK, redact_text

_POOLS: dict[tuple[int, str], ConnectionPool] = {}

CONNECT_TIMEOUT = 3
APP = "remediation-audit"
"""application_name of every audit connection."""
SILENCE = {
    "tcp_user_timeout": 10_000,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 2,
}
"""libpq options for a server gone silent (a network partition, not a refusal): a write
the server's TCP has not acknowledged within 10 s, or an idle connection unanswered for
about 20 s, fails (and the row goes to the spool) instead of waiting out TCP's
retransmissions, some 15 minutes, with the task stuck in the write."""


def _conninfo(dsn: str) -> dict[str, Any]:
    try:
        return psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.Error:
        return {}


def where(dsn: str) -> str:
    """'audit database "NAME" at host H, port P, user U' from a DSN, never its password."""
    info = _conninfo(dsn)
    host = info.get("host") or os.environ.get("PGHOST") or "the local socket"
    port = info.get("port") or os.environ.get("PGPORT") or "5432"
    name = info.get("dbname") or os.environ.get("PGDATABASE") or info.get("user") or "?"
    user = f", user {info['user']}" if info.get("user") else ""
    return redact_text(f'audit database "{name}" at host {host}, port {port}{user}')


def connection_failed(dsn: str, exc: BaseException) -> AuditError:
    """AuditError for a connection the audit database refused or did not answer: one line
    naming host, port, database and the cause. Never the password: psycopg's message is cut
    to its cause and redacted, and the DSN's own password is masked in it."""
    line = (str(exc).strip().splitlines() or [""])[0]
    cause = line.rpartition(" failed: ")[2]
    cause = " ".join(re.sub(r"^(FATAL|ERROR):", "", cause).split()) or type(exc).__name__
    cause = redact_text(cause)
    password = _conninfo(dsn).get("password")
    if password:
        cause = cause.replace(str(password), MASK)
    missing = cause.startswith("database ") and cause.endswith("does not exist")
    hint = " (create it, then run `remediation db upgrade`)" if missing else ""
    return AuditError(f"{where(dsn)}: {cause}{hint}")


def with_silence(dsn: str) -> str:
    """dsn with the SILENCE options (a URL or key=value DSN; its own settings win)."""
    return psycopg.conninfo.make_conninfo(
        "", **{**{k: str(v) for k, v in SILENCE.items()}, **_conninfo(dsn)}
    )


def pool(dsn: str) -> ConnectionPool:
    """This process's pool for dsn, opened on first use (AuditError-worthy psycopg errors
    surface at once when the server refuses)."""
    key = (os.getpid(), dsn)
    if key not in _POOLS:
        # a pool waits its whole timeout for a server that refuses; one plain connect does not
        psycopg.connect(
            with_silence(dsn), connect_timeout=CONNECT_TIMEOUT, application_name=APP
        ).close()
        _POOLS[key] = ConnectionPool(
            with_silence(dsn),
            min_size=0,
            max_size=4,
            kwargs={
                "autocommit": True,
                "application_name": APP,
                "connect_timeout": CONNECT_TIMEOUT,
            },
            timeout=5,  # how long a write waits for a connection before AuditError
            open=True,
        )
    return _POOLS[key]


def discard_pool(dsn: str) -> None:
    """Forget a pool whose connections died with the server; the next write opens a new one."""
    dead = _POOLS.pop((os.getpid(), dsn), None)
    if dead is not None:  # closing waits for its workers: not on the caller's time
        threading.Thread(target=dead.close, daemon=True).start()


def close_pools() -> None:
    """Close this process's pools and forget every pool (a forked child's inherited ones too)."""
    for key, each in list(_POOLS.items()):
        if key[0] == os.getpid():
            each.close()
        del _POOLS[key]
