"""PostgreSQL connections for checks and actions on monitored databases."""

from __future__ import annotations

import psycopg

APPLICATION_NAME = "remediation"


def connect(
    dsn: str, *, autocommit: bool = True, timeout: int = 10, statement_timeout_ms: int = 0
) -> psycopg.Connection:
    """A connection tagged application_name=remediation, so our own sessions are recognisable.

    Autocommit by default: checks only read, and VACUUM must run outside a transaction.
    """
    options = f"-c statement_timeout={statement_timeout_ms}" if statement_timeout_ms else ""
    return psycopg.connect(
        dsn,
        autocommit=autocommit,
        connect_timeout=timeout,
        application_name=APPLICATION_NAME,
        options=options,
    )
