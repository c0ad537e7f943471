"""Runbook 000 "Redis Queue Management" without FLUSHALL: dedupe and dead-letter, bounded."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from pydantic import Field

from remediation.context import ActionContext
from remediation.findings import ActionResult
from remediation.guards.lua import script
from remediation.params import ActionParams
from remediation.registry import action


class JobQueueActionParams(ActionParams):
    key: str | None = Field(None, min_length=1, max_length=512, description="default: settings")


def _resource(params: JobQueueActionParams) -> str:
    """Locks and cooldowns are per list; the configured list when no key is given."""
    return f"{params.target}/{params.key or '(configured job list)'}"


def _tombstone() -> str:
    return f"\x00remediation-tombstone-{uuid.uuid4().hex}"


def _per_run(settings: Any, params: Any) -> int:
    return int(settings.job_queue.max_changes_per_run)


@action(
    "dedupe_job_queue", resource=_resource, cooldown=timedelta(minutes=5), max_per_hour=30,
    upfront=_per_run,
)  # fmt: skip
def dedupe_job_queue(ctx: ActionContext, params: JobQueueActionParams) -> ActionResult:
    """Remove duplicate jobs from the job list, keeping the first of each and the order.

    Runbook 000 "job queue processing duplicate jobs". One atomic Lua call; examines at
    most REMEDIATION_JOB_QUEUE__SCAN_LIMIT jobs and removes at most
    REMEDIATION_JOB_QUEUE__MAX_CHANGES_PER_RUN. Never FLUSHALL."""
    cfg = ctx.settings.job_queue
    key = params.key or cfg.key
    cap = ctx.reserve(cfg.max_changes_per_run)  # blast radius: jobs removed per window
    if cap == 0:
        return _blast_spent("dedupe_job_queue", key)
    removed, scanned = script(ctx.redis(params.target), "dedupe_job_queue")(
        keys=[key], args=[cfg.scan_limit, cap, cfg.id_field or "", _tombstone()]
    )
    ctx.give_back(cap - int(removed))
    return ActionResult(
        changed=removed > 0,
        summary=f"removed {removed} duplicate job(s) from {key}",
        detail={"key": key, "removed": removed, "scanned": scanned},
    )


@action(
    "dead_letter_stale_jobs", resource=_resource, cooldown=timedelta(minutes=5), max_per_hour=30,
    upfront=_per_run,
)  # fmt: skip
def dead_letter_stale_jobs(ctx: ActionContext, params: JobQueueActionParams) -> ActionResult:
    """Move jobs older than the bound to the dead-letter list, with a reason; delete nothing.

    Runbook 000 "job queue is stuck" and runbook 004 "clear stale jobs", instead of
    FLUSHALL/DEL. Age comes from the job's JSON field REMEDIATION_JOB_QUEUE__ENQUEUED_AT_FIELD
    (epoch seconds); jobs without it stay. Capped per run."""
    cfg = ctx.settings.job_queue
    key = params.key or cfg.key
    reason = f"older than {cfg.max_age_seconds}s"
    cap = ctx.reserve(cfg.max_changes_per_run)  # blast radius: jobs moved per window
    if cap == 0:
        return _blast_spent("dead_letter_stale_jobs", key)
    moved, scanned = script(ctx.redis(params.target), "dead_letter_stale")(
        keys=[key, cfg.dead_letter_key],
        args=[
            cfg.scan_limit,
            cap,
            cfg.enqueued_at_field,
            cfg.max_age_seconds,
            _tombstone(),
            reason,
        ],
    )
    ctx.give_back(cap - int(moved))
    return ActionResult(
        changed=moved > 0,
        summary=f"moved {moved} stale job(s) from {key} to {cfg.dead_letter_key}",
        detail={"key": key, "dead_letter_key": cfg.dead_letter_key, "moved": moved,
                "scanned": scanned},
    )  # fmt: skip


def _blast_spent(name: str, key: str) -> ActionResult:
    return ActionResult(changed=False, detail={"key": key, "blast_radius": "cap reached"},
                        summary=f"{name}: the blast-radius cap is spent; {key} left as it is")  # fmt: skip
