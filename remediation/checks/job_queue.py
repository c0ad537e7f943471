"""Runbook 000 "Redis Queue Management": a job list that is stuck or holds duplicates."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

from pydantic import Field

from remediation.context import CheckContext
from remediation.findings import Finding, Severity
from remediation.params import CheckParams
from remediation.registry import check
from remediation.settings import JobQueueSettings


class JobQueueParams(CheckParams):
    key: str | None = Field(None, min_length=1, max_length=512, description="default: settings")


def job_identity(raw: bytes | str, id_field: str | None) -> str | None:
    """What makes two jobs the same: the whole payload, or one JSON field (None: no id)."""
    if not id_field:
        return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    try:
        value = json.loads(raw).get(id_field)
    except (ValueError, AttributeError):
        return None
    return None if value is None else f"{type(value).__name__}:{value}"


def job_age(raw: bytes | str, field: str, now: float) -> float | None:
    try:
        stamp = json.loads(raw).get(field)
    except (ValueError, AttributeError):
        return None
    return now - stamp if isinstance(stamp, int | float) and not isinstance(stamp, bool) else None


def _finding(params: JobQueueParams, key: str, kind: str, sev: Severity, **kw: Any) -> Finding:
    return Finding(
        check="redis_job_queue", target=params.target, subject=key, kind=kind, severity=sev, **kw
    )


@check("redis_job_queue")
def redis_job_queue(ctx: CheckContext, params: JobQueueParams) -> list[Finding]:
    """Length, duplicates and stale jobs of the application's job list (runbook 000).

    Backlog bands: > 50 pending is a warning (runbook 004), > 1000 is high (runbook 002).
    Duplicates and jobs older than the bound are fixed by dedupe_job_queue and
    dead_letter_stale_jobs; the list is never flushed."""
    cfg: JobQueueSettings = ctx.settings.job_queue
    key = params.key or cfg.key
    r = ctx.redis(params.target)
    length = r.llen(key)
    items = r.lrange(key, 0, cfg.scan_limit - 1) if length else []
    now = time.time()
    ids = Counter(i for i in (job_identity(raw, cfg.id_field) for raw in items) if i is not None)
    duplicates = sum(n - 1 for n in ids.values() if n > 1)
    ages = [a for a in (job_age(raw, cfg.enqueued_at_field, now) for raw in items) if a is not None]
    stale = sum(1 for a in ages if a > cfg.max_age_seconds)
    evidence = {
        "length": length,
        "scanned": len(items),
        "oldest_age_s": round(max(ages, default=0)),
    }
    findings = []
    if length > cfg.backlog_warning:
        sev = Severity.HIGH if length > cfg.backlog_high else Severity.WARNING
        limit = cfg.backlog_high if sev is Severity.HIGH else cfg.backlog_warning
        findings.append(
            _finding(
                params,
                key,
                "redis_job_queue_backlog",
                sev,
                observed=length,
                threshold=limit,
                evidence=evidence,
                summary=f"{length} jobs pending in {key}",
            )
        )
    if duplicates:
        findings.append(
            _finding(
                params,
                key,
                "redis_job_queue_duplicates",
                Severity.WARNING,
                observed=duplicates,
                threshold=0,
                evidence=evidence,
                summary=f"{duplicates} duplicate jobs in {key}",
            )
        )
    if stale:
        findings.append(
            _finding(
                params,
                key,
                "redis_job_queue_stale",
                Severity.WARNING,
                observed=stale,
                threshold=cfg.max_age_seconds,
                evidence=evidence,
                summary=f"{stale} jobs older than {cfg.max_age_seconds}s in {key}",
            )
        )
    return findings
