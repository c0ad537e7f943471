"""`remediation report --incident ID`: the timeline of one incident, from the audit trail.

Runbook 001 "Security Incident Response: investigate, document and report" (and every other
runbook's escalation: what happened, what was done, did it work). An incident is one open
condition (a finding's fingerprint, guards/incidents.py): every finding that joined it, every
guard decision on the actions it triggered, every action run and every verification, in
time order. Only what the audit trail holds is shown; findings and errors were redacted
when they were written.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from remediation.audit.store import AuditStore
from remediation.errors import RemediationError

MAX_ROWS = 1000
"""Rows read per kind (findings, decisions, actions); the report says when it cut."""
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:._\-]{0,199}$")

_FINDINGS = """
    SELECT f.id, f.check_run_id, f.check_name, f.target, f.subject, f.kind, f.severity,
           f.observed, f.threshold, f.summary, f.evidence, f.fingerprint, f.seen_at,
           c.purpose
    FROM findings f JOIN check_runs c ON c.id = f.check_run_id
    WHERE f.incident_id = %(id)s
    ORDER BY f.seen_at, f.id LIMIT %(limit)s
"""
_DECISIONS = """
    SELECT id, finding_id, task_id, action, target, resource, decision, guard, reason,
           decided_at
    FROM guard_decisions WHERE finding_id = ANY(%(ids)s)
    ORDER BY decided_at, id LIMIT %(limit)s
"""
_ACTIONS = """
    SELECT id, decision_id, finding_id, task_id, action, target, resource, outcome, error,
           result, started_at, duration_ms, verification, verify_check_run_id, verified_at
    FROM action_runs WHERE finding_id = ANY(%(ids)s) OR decision_id = ANY(%(decisions)s)
    ORDER BY started_at, id LIMIT %(limit)s
"""
_VERIFY_RUNS = """
    SELECT id, check_name, target, status, error, findings_count, started_at, finished_at
    FROM check_runs WHERE id = ANY(%(ids)s)
"""


class IncidentNotFound(RemediationError):
    """No finding in the audit trail belongs to the incident."""


def valid_id(value: str) -> str:
    """The incident id as given; ValueError for anything an incident id cannot be."""
    if not _ID.match(value):
        raise ValueError(
            f"{value[:60]!r} is not an incident id (letters, digits, ':._-', at most 200)"
        )
    return value


def build(store: AuditStore, incident: str) -> dict[str, Any]:
    """The incident as data (what --json prints); IncidentNotFound when nothing joined it."""
    limit = MAX_ROWS + 1
    findings = store.query(_FINDINGS, {"id": incident, "limit": limit})
    if not findings:
        raise IncidentNotFound(f"no finding in the audit trail belongs to incident {incident!r}")
    ids = [f["id"] for f in findings[:MAX_ROWS]]
    decisions = store.query(_DECISIONS, {"ids": ids, "limit": limit})
    decision_ids = [d["id"] for d in decisions[:MAX_ROWS]]
    actions = store.query(_ACTIONS, {"ids": ids, "decisions": decision_ids, "limit": limit})
    verify_ids = [a["verify_check_run_id"] for a in actions if a["verify_check_run_id"]]
    runs = {r["id"]: r for r in store.query(_VERIFY_RUNS, {"ids": verify_ids})}
    cut = any(len(rows) > MAX_ROWS for rows in (findings, decisions, actions))
    findings, decisions, actions = findings[:MAX_ROWS], decisions[:MAX_ROWS], actions[:MAX_ROWS]
    timeline = sorted(
        [
            *(_finding_event(f) for f in findings),
            *(_decision_event(d) for d in decisions),
            *(_action_event(a) for a in actions),
            *(_verification_event(a, runs.get(a["verify_check_run_id"])) for a in actions),
        ],
        key=lambda e: (e["at"], _ORDER[e["type"]], e["id"]),
    )
    timeline = [e for e in timeline if e["at"] is not None]
    first = findings[0]
    return {
        "incident": incident,
        "condition": {
            k: first[k] for k in ("check_name", "target", "subject", "kind", "fingerprint")
        },
        "state": _state(actions),
        "first_seen": first["seen_at"],
        "last_seen": findings[-1]["seen_at"],
        "counts": {
            "findings": len(findings),
            "decisions": len(decisions),
            "actions": len(actions),
            "verified": sum(a["verification"] == "recovered" for a in actions),
        },
        "truncated": cut,
        "timeline": timeline,
    }


# Events at the same instant: what was seen, what the guards said, what was done, did it work.
_ORDER = {"finding": 0, "decision": 1, "action": 2, "verification": 3}


def _state(actions: list[dict[str, Any]]) -> str:
    """'recovered' once a verification saw the condition gone; else 'not recovered' after an
    action that did not fix it, 'open' otherwise (nothing acted or verified yet)."""
    verified = [a for a in actions if a["verification"]]
    if any(a["verification"] == "recovered" for a in verified):
        return "recovered"
    return "not recovered" if verified else "open"


def _finding_event(f: dict[str, Any]) -> dict[str, Any]:
    where = f["target"] + (f"/{f['subject']}" if f["subject"] else "")
    seen = "verification saw" if f["purpose"] == "verify" else "saw"
    return {
        "at": f["seen_at"],
        "type": "finding",
        "id": f["id"],
        "text": f"{f['check_name']} {seen} {f['kind']} ({f['severity']}) on {where}: "
        f"{f['summary']}",
        "check": f["check_name"],
        "check_run_id": f["check_run_id"],
        "kind": f["kind"],
        "severity": f["severity"],
        "observed": f["observed"],
        "threshold": f["threshold"],
        "evidence": f["evidence"],
    }


def _decision_event(d: dict[str, Any]) -> dict[str, Any]:
    why = f" by {d['guard']}" if d["guard"] else ""
    reason = f": {d['reason']}" if d["reason"] else ""
    return {
        "at": d["decided_at"],
        "type": "decision",
        "id": d["id"],
        "text": f"guards {d['decision']}{why} {d['action']} on {d['resource']}{reason}",
        "finding_id": d["finding_id"],
        "action": d["action"],
        "resource": d["resource"],
        "decision": d["decision"],
        "guard": d["guard"],
        "task_id": d["task_id"],
    }


def _action_event(a: dict[str, Any]) -> dict[str, Any]:
    took = f" in {a['duration_ms']:.0f} ms" if a["duration_ms"] is not None else ""
    error = f": {a['error']}" if a["error"] else ""
    return {
        "at": a["started_at"],
        "type": "action",
        "id": a["id"],
        "text": f"{a['action']} on {a['resource'] or a['target']} {a['outcome']}{took}{error}",
        "decision_id": a["decision_id"],
        "action": a["action"],
        "outcome": a["outcome"],
        "result": a["result"],
        "task_id": a["task_id"],
    }


def _verification_event(a: dict[str, Any], run: dict[str, Any] | None) -> dict[str, Any]:
    detail = ""
    if run is not None:
        detail = f" ({run['check_name']} run {run['id']}: {run['status']}"
        detail += f", {run['findings_count']} findings)"
    return {
        "at": a["verified_at"],
        "type": "verification",
        "id": a["id"],
        "text": f"verification of {a['action']}: {a['verification']}{detail}",
        "action_run_id": a["id"],
        "verification": a["verification"],
        "check_run": run,
    }


def render(data: dict[str, Any]) -> str:
    """The human text: a head and one line per event."""
    c, n = data["condition"], data["counts"]
    where = c["target"] + (f"/{c['subject']}" if c["subject"] else "")
    head = [
        f"incident {data['incident']}: {c['kind']} on {where} ({c['check_name']})",
        f"first seen {_when(data['first_seen'])}, last seen {_when(data['last_seen'])} UTC;"
        f" state: {data['state']}",
        f"{n['findings']} findings, {n['decisions']} guard decisions, {n['actions']} action runs,"
        f" {n['verified']} verified fixes",
        "",
    ]
    lines = [
        f"{_when(e['at'], seconds=True)}  {e['type']:<12}  {e['text']}" for e in data["timeline"]
    ]
    tail = [f"(cut at {MAX_ROWS} rows per kind)"] if data["truncated"] else []
    return "\n".join(head + lines + tail)


def _when(moment: datetime, seconds: bool = False) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M" + (":%S.%f" if seconds else ""))[
        : 23 if seconds else None
    ]
