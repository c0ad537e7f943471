"""The runbooks as data: which finding kind leads to which action, with which params.

Each rule cites the runbook step it automates (files in ../shared/runbooks/). Printed by
`remediation playbook` together with each action's guards and docstring.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from remediation.findings import Finding, Severity


@dataclass(frozen=True)
class Rule:
    kind: str
    action: str
    params: Callable[[Finding], dict[str, Any]]
    runbook: str
    min_severity: Severity = Severity.WARNING

    def applies(self, finding: Finding) -> bool:
        return finding.kind == self.kind and finding.severity.rank >= self.min_severity.rank


def _job_list(f: Finding) -> dict[str, Any]:
    return {"target": f.target, "key": f.subject}


def _table(f: Finding) -> dict[str, Any]:
    return {"target": f.target, "tables": [f.evidence["table"]]}


def notify_params(f: Finding) -> dict[str, Any]:
    """A notification about a finding nobody can fix automatically."""
    return {
        "text": f"[{f.severity.value}] {f.check} on {f.resource}: {f.summary or f.kind}",
        "incident": f.fingerprint,
        "kind": f.kind,
        "severity": f.severity.value,
    }


RULES: list[Rule] = [
    Rule(
        "postgres_dead_tuples_high",
        "vacuum_analyze",
        _table,
        "001 Weekly Operations 1. Database Maintenance: VACUUM ANALYZE",
    ),
    Rule(
        "postgres_stats_stale",
        "analyze_tables",
        _table,
        "001 Weekly Operations 1. Database Maintenance: ANALYZE",
    ),
    Rule(
        "postgres_data_quality_breach",
        "notify",
        notify_params,
        "001 Data Quality Issues: check extraction accuracy (fixes are human: extractors)",
    ),
    Rule(
        "postgres_data_stale",
        "notify",
        notify_params,
        "004 Data Freshness Issues: data age exceeds update frequency",
    ),
    Rule(
        "redis_job_queue_duplicates",
        "dedupe_job_queue",
        _job_list,
        "000 Redis Queue Management: job queue processing duplicate jobs",
    ),
    Rule(
        "redis_job_queue_stale",
        "dead_letter_stale_jobs",
        _job_list,
        "000 Redis Queue Management: job queue is stuck (instead of FLUSHALL); "
        "004 Worker Queue Backlog: clear stale jobs",
    ),
    Rule(
        "redis_job_queue_backlog",
        "notify",
        notify_params,
        "004 Worker Queue Backlog: pending jobs > 50; 002 Celery: queue depth > 1000",
        min_severity=Severity.HIGH,
    ),
]


def rules_for(finding: Finding) -> list[Rule]:
    return [rule for rule in RULES if rule.applies(finding)]
