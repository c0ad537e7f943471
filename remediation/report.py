"""`remediation report --since 7d`: what each runbook procedure did, from the audit trail.

A procedure is a playbook rule: a finding kind and the action it leads to, citing a runbook.
For each one seen in the window: how often it fired (findings that dispatched the action),
how often the action ran (succeeded / failed), how often the guards suppressed it (by
guard), how often the fix was verified, and the median time from the finding to the
verified fix. Action calls without a finding (notifications, calls by hand) get a row each.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from remediation import playbook
from remediation.audit.store import AuditStore

_WINDOW = re.compile(r"^(\d{1,6})([mhdw])$")
_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_WINDOW = timedelta(days=3650)
"""Longer windows than ten years are a typo, not a question."""

NO_FINDING = "(no finding)"

# Every call of an action is a guard decision, except calls rejected for their kwargs and
# poison tasks given up after their worker died (an action run without a decision). A reset
# by an operator is not a call. An approval adds rows to the call it was asked for: the
# approver's decision (guard "approval", detail "by") and the approved run (its result
# carries the approval); ``continues`` marks them, so a call by hand approved once counts once.
_CALLS = """
    WITH calls AS (
        SELECT d.action, d.finding_id, d.decision, d.guard, a.outcome, a.verification,
               a.verified_at,
               (d.guard = 'approval' AND coalesce(d.detail ? 'by', false))
                 OR coalesce(a.result->'detail' ? 'approval', false) AS continues
        FROM guard_decisions d LEFT JOIN action_runs a ON a.decision_id = d.id
        WHERE d.decided_at >= %(since)s
          AND d.decision <> 'breaker_reset'
        UNION ALL
        SELECT a.action, a.finding_id, NULL, NULL, a.outcome, a.verification,
               a.verified_at, false
        FROM action_runs a
        WHERE a.decision_id IS NULL AND a.started_at >= %(since)s
    )
"""

# constant SQL text joined with constant SQL text: no input reaches it (S608)
_PROCEDURES = (
    _CALLS  # noqa: S608
    + """
    SELECT f.kind, c.action, count(*) AS calls,
           CASE WHEN f.kind IS NULL THEN count(*) FILTER (WHERE NOT c.continues)
                ELSE count(DISTINCT c.finding_id) END AS fired,
           count(*) FILTER (WHERE c.outcome IN ('succeeded', 'failed')) AS acted,
           count(*) FILTER (WHERE c.outcome = 'succeeded') AS succeeded,
           count(*) FILTER (WHERE c.outcome = 'failed') AS failed,
           count(*) FILTER (WHERE c.decision IN ('suppressed', 'duplicate', 'unavailable'))
               AS suppressed,
           count(*) FILTER (WHERE c.outcome = 'dry_run') AS dry_run,
           count(*) FILTER (WHERE c.outcome = 'rejected') AS rejected,
           count(*) FILTER (WHERE c.verification = 'recovered') AS verified,
           count(*) FILTER (WHERE c.verification IN ('not_recovered', 'error')) AS not_verified,
           percentile_cont(0.5) WITHIN GROUP (
               ORDER BY extract(epoch FROM c.verified_at - f.seen_at)::float8
           ) FILTER (WHERE c.verification = 'recovered' AND f.seen_at IS NOT NULL)
               AS median_fix_s
    FROM calls c LEFT JOIN findings f ON f.id = c.finding_id
    GROUP BY f.kind, c.action
    """
)

_SUPPRESSED_BY = (
    _CALLS  # noqa: S608
    + """
    SELECT f.kind, c.action, coalesce(c.guard, c.decision) AS guard, count(*) AS n
    FROM calls c LEFT JOIN findings f ON f.id = c.finding_id
    WHERE c.decision IN ('suppressed', 'duplicate', 'unavailable')
    GROUP BY f.kind, c.action, coalesce(c.guard, c.decision)
    ORDER BY 4 DESC, 3
    """
)

_TOTALS = """
    SELECT
      (SELECT count(*) FROM check_runs
        WHERE started_at >= %(since)s) AS check_runs,
      (SELECT count(*) FROM check_runs WHERE status = 'error'
        AND started_at >= %(since)s) AS check_errors,
      (SELECT count(*) FROM findings
        WHERE seen_at >= %(since)s) AS findings,
      (SELECT count(DISTINCT incident_id) FROM findings
        WHERE seen_at >= %(since)s) AS incidents
"""

_INCIDENTS = """
    SELECT incident_id AS incident, min(kind) AS kind, min(target) AS target,
           min(subject) AS subject, count(*) AS findings, min(seen_at) AS first_seen,
           max(seen_at) AS last_seen
    FROM findings WHERE seen_at >= %(since)s AND incident_id IS NOT NULL
    GROUP BY incident_id ORDER BY max(seen_at) DESC, incident_id LIMIT %(limit)s
"""
RECENT_INCIDENTS = 20
"""Incidents listed under the report (newest first); `--incident ID` shows one whole."""


def parse_window(value: str) -> timedelta:
    """'30m', '12h', '7d' or '2w' -> timedelta; anything else is a usage error."""
    match = _WINDOW.match(value.strip())
    if not match:
        raise argparse.ArgumentTypeError(
            f"{value!r}: use a whole number and a unit m, h, d or w: 30m, 12h, 7d or 2w"
        )
    window = timedelta(seconds=int(match[1]) * _UNIT_SECONDS[match[2]])
    if not timedelta(0) < window <= MAX_WINDOW:
        raise argparse.ArgumentTypeError(f"{value!r}: the window must be between 1m and 520w")
    return window


@dataclass(frozen=True)
class Procedure:
    runbook: str  # the citation in the playbook
    procedure: str  # the runbook's name(s), the part before ':'


def procedures() -> dict[tuple[str, str], Procedure]:
    """(finding kind, action) -> the runbook procedure the playbook cites for it."""
    cited: dict[tuple[str, str], list[str]] = {}
    for rule in playbook.RULES:
        if rule.run == "act":
            cited.setdefault((rule.kind, rule.action), [])
            if rule.runbook not in cited[(rule.kind, rule.action)]:
                cited[(rule.kind, rule.action)].append(rule.runbook)
    return {key: Procedure("; ".join(texts), procedure_name(texts)) for key, texts in cited.items()}


def procedure_name(citations: list[str]) -> str:
    """'000 Redis Queue Management: stuck; 004 Backlog: stale' -> '000 Redis ..., 004 Backlog'."""
    names: list[str] = []
    for citation in citations:
        for part in citation.split(";"):
            name = part.split(":", 1)[0].strip()
            if name and name not in names:
                names.append(name)
    return ", ".join(names)


def build(store: AuditStore, window: timedelta) -> dict[str, Any]:
    """The report as data (what --json prints)."""
    bounds = store.query("SELECT now() - %(w)s::interval AS since, now() AS until", {"w": window})
    params = {"since": bounds[0]["since"], "until": bounds[0]["until"]}
    known = procedures()
    suppressed_by: dict[tuple[str | None, str], dict[str, int]] = {}
    for row in store.query(_SUPPRESSED_BY, params):
        suppressed_by.setdefault((row["kind"], row["action"]), {})[row["guard"]] = row["n"]
    rows = []
    for row in store.query(_PROCEDURES, params):
        kind, action = row["kind"], row["action"]
        proc = known.get((kind, action)) if kind else None
        if kind is None:
            runbook, name = "", "-"
        elif proc is None:
            runbook, name = "", "(not in the playbook)"
        else:
            runbook, name = proc.runbook, proc.procedure
        median = row["median_fix_s"]
        rows.append(
            {
                "procedure": name,
                "runbook": runbook,
                "finding": kind or NO_FINDING,
                "action": action,
                **{k: int(row[k]) for k in _COUNTS},
                "suppressed_by": suppressed_by.get((kind, action), {}),
                "median_fix_seconds": round(float(median), 3) if median is not None else None,
            }
        )
    rows.sort(key=lambda r: (r["finding"] == NO_FINDING, r["procedure"], r["finding"], r["action"]))
    totals = {k: int(v) for k, v in store.query(_TOTALS, params)[0].items()}
    return {
        "since": params["since"],
        "until": params["until"],
        "window_seconds": int(window.total_seconds()),
        "totals": totals,
        "procedures": rows,
        "recent_incidents": store.query(_INCIDENTS, {**params, "limit": RECENT_INCIDENTS}),
    }


_COUNTS = (
    "calls",
    "fired",
    "acted",
    "succeeded",
    "failed",
    "suppressed",
    "dry_run",
    "rejected",
    "verified",
    "not_verified",
)


def render(report: dict[str, Any], window_text: str) -> str:
    """The human table."""
    from remediation.cli import table

    t = report["totals"]
    head = [
        f"remediation report, last {window_text}: {_when(report['since'])} .. "
        f"{_when(report['until'])} UTC",
        f"checks: {t['check_runs']} runs ({t['check_errors']} errors); findings: "
        f"{t['findings']} in {t['incidents']} incidents",
        "",
    ]
    cells = [
        {
            **r,
            "suppressed": _suppressed(r),
            "median_fix": duration(r["median_fix_seconds"]),
        }
        for r in report["procedures"]
    ]
    cols = [
        "procedure",
        "finding",
        "action",
        "fired",
        "succeeded",
        "failed",
        "suppressed",
        "verified",
        "median_fix",
    ]
    notes = [
        "",
        "fired: findings that dispatched the action (calls, without a finding); suppressed: "
        "refused by a guard (by guard); verified: the check no longer saw the condition; "
        "median_fix: finding -> verified fix.",
    ]
    incidents = [
        {
            **i,
            "where": i["target"] + (f"/{i['subject']}" if i["subject"] else ""),
            "last_seen": _when(i["last_seen"]),
        }
        for i in report["recent_incidents"]
    ]
    listed = [
        "",
        f"recent incidents (newest first, at most {RECENT_INCIDENTS};"
        " `remediation report --incident ID` shows one):",
        table(incidents, ["incident", "kind", "where", "findings", "last_seen"]),
    ]
    return "\n".join(
        head + [table(cells, cols)] + (notes if cells else []) + (listed if incidents else [])
    )


def _suppressed(row: dict[str, Any]) -> str:
    if not row["suppressed"]:
        return "0"
    parts = ", ".join(f"{g} {n}" for g, n in row["suppressed_by"].items())
    return f"{row['suppressed']} ({parts})"


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def duration(seconds: float | None) -> str:
    """42.5 -> '42.5s', 200 -> '3m 20s', 7500 -> '2h 05m', 190000 -> '2d 04h'."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = round(seconds)
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"
