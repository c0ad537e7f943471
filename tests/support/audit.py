"""The audit database as the integration and chaos tests read it."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from tests.support.base import wait_for

ORPHANS_SQL = (
    "SELECT (SELECT count(*) FROM findings f WHERE NOT EXISTS"
    "  (SELECT 1 FROM check_runs c WHERE c.id = f.check_run_id))"
    " + (SELECT count(*) FROM guard_decisions d WHERE d.finding_id IS NOT NULL"
    "  AND NOT EXISTS (SELECT 1 FROM findings f WHERE f.id = d.finding_id))"
    " + (SELECT count(*) FROM action_runs a WHERE (a.decision_id IS NOT NULL AND NOT"
    "  EXISTS (SELECT 1 FROM guard_decisions d WHERE d.id = a.decision_id))"
    "  OR (a.finding_id IS NOT NULL AND NOT EXISTS"
    "  (SELECT 1 FROM findings f WHERE f.id = a.finding_id))"
    "  OR (a.verify_check_run_id IS NOT NULL AND NOT EXISTS"
    "  (SELECT 1 FROM check_runs c WHERE c.id = a.verify_check_run_id))) AS n"
)
"""Rows whose reference points at no row (the foreign keys forbid them; counted anyway)."""


class Audit:
    """Read the audit database the workers write to."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def rows(self, query: str, *params: Any) -> list[dict[str, Any]]:
        with psycopg.connect(self.dsn, row_factory=dict_row) as conn:
            return conn.execute(query, params).fetchall()  # type: ignore[arg-type]

    def wait_rows(
        self, query: str, *params: Any, n: int = 1, timeout: float = 60
    ) -> list[dict[str, Any]]:
        return wait_for(
            lambda: (lambda r: r if len(r) >= n else None)(self.rows(query, *params)),
            timeout,
            0.3,
            f"{n} row(s) for {query!r}",
        )

    def everything_as_text(self) -> str:
        tables = ["check_runs", "findings", "guard_decisions", "action_runs"]
        return "\n".join(
            str(r) for t in tables for r in self.rows(f"SELECT row_to_json(x)::text FROM {t} x")
        )
