"""Write one full audit trail (run -> finding -> decision -> action -> verification) and read
tables back, for the spool tests."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from remediation.audit.store import AuditStore
from remediation.findings import Finding, Severity

SECRET = "hunter2-Sup3rSecret"
TABLES = ("check_runs", "findings", "guard_decisions", "action_runs", "observations")


def finding(summary: str = "bloat", evidence: dict[str, Any] | None = None) -> Finding:
    return Finding(
        check="postgres_dead_tuples",
        target="app",
        subject="public.t",
        kind="postgres_bloat",
        severity=Severity.HIGH,
        observed=0.5,
        threshold=0.2,
        summary=summary,
        evidence=evidence if evidence is not None else {"dsn": f"postgresql://u:{SECRET}@h/d"},
    )


def write_trail(store: AuditStore, task: str, f: Finding | None = None) -> dict[str, int]:
    """Seven writes, parents before children; returns the ids the store handed out."""
    run = store.start_check_run(
        "postgres_dead_tuples", "app", {"password": SECRET, "n": 1}, "detect", task
    )
    fid = store.add_finding(run, f or finding(), "inc-1")
    did = store.add_decision(
        action="vacuum_analyze",
        target="app",
        resource="app/public.t",
        decision="admitted",
        reason=f"url postgresql://u:{SECRET}@h/d",
        finding_id=fid,
        task_id=task,
        idempotency_key=f"k-{task}",
    )
    aid = store.add_action_run(
        action="vacuum_analyze",
        target="app",
        resource="app/public.t",
        params={"tables": ["public.t"], "token": SECRET},
        outcome="succeeded",
        result={"ok": True},
        duration_ms=3.5,
        decision_id=did,
        finding_id=fid,
        task_id=task,
    )
    store.finish_check_run(run, "ok", 1, 12.5)
    store.set_verification(aid, "recovered", run)
    store.record_observation("postgres_database_size", "app", "database_bytes", 42.0)
    return {"run": run, "finding": fid, "decision": did, "action": aid}


def rows(dsn: str, query: str, *params: Any) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        return conn.execute(query, params).fetchall()


def counts(dsn: str) -> dict[str, int]:
    return {t: rows(dsn, f"SELECT count(*) AS n FROM {t}")[0]["n"] for t in TABLES}


def dump(dsn: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of every audit table, by id."""
    return {t: rows(dsn, f"SELECT * FROM {t} ORDER BY id") for t in TABLES}
