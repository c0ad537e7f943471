"""Runbook 000 "Redis Queue Management" without FLUSHALL: dedupe and dead-letter, bounded."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import redis
from pydantic import Field

from remediation.clients.redis import text
from remediation.context import ActionContext, CheckContext, Resolved
from remediation.errors import Refused
from remediation.findings import ActionResult
from remediation.guards.lua import script
from remediation.params import ActionParams
from remediation.plans import Plan, item, plan_of
from remediation.registry import action
from remediation.resolve import canonical, redis_target

KEY_VAR = "REMEDIATION_JOB_QUEUE__KEY"
KEYS_VAR = "REMEDIATION_JOB_QUEUE__KEYS"


class JobQueueActionParams(ActionParams):
    key: str | None = Field(
        None, min_length=1, max_length=512, description=f"{KEY_VAR} (default) or one of {KEYS_VAR}"
    )


def _resource(params: JobQueueActionParams) -> str:
    """Locks and cooldowns are per list: the configured key the resolve step names."""
    return f"{params.target}/{params.key or '(configured job list)'}"


def _shown(key: str) -> str:
    """A caller's key as quoted in a refusal: bounded (it may be 512 characters of anything)."""
    return repr(key if len(key) <= 80 else key[:80] + "...")


def resolve_job_list(ctx: CheckContext, params: JobQueueActionParams) -> Resolved:
    """The configured Redis target and job list, which must exist and be a list.

    Refused: a key that is neither REMEDIATION_JOB_QUEUE__KEY nor one of __KEYS (a call
    cannot point the action at another list), a list that does not exist (nothing to do,
    no notice), or a key holding something other than a list."""
    cfg = ctx.settings.job_queue
    target = redis_target(ctx, params.target)
    key = cfg.key if params.key is None else params.key
    if not configured_job_list(cfg.key, cfg.keys, key):
        raise Refused(
            f"key {_shown(key)} is not a configured job list: only {KEY_VAR} ({cfg.key!r})"
            f" or one of {KEYS_VAR} ({len(cfg.keys)} configured)"
        )
    kind = text(ctx.redis(target).type(key))
    if kind == "none":
        raise Refused(
            f"job list {_shown(key)} does not exist on {target}: nothing to do", notice=False
        )
    if kind != "list":
        raise Refused(f"{_shown(key)} on {target} is a {kind}, not a job list")
    return canonical(params, target=target, key=key)


def configured_job_list(key: str, keys: list[str], name: str) -> bool:
    """Whether name is the configured job list, one of the further ones, or under a
    configured prefix (an entry of REMEDIATION_JOB_QUEUE__KEYS ending in '*': "jobs:*")."""
    return name == key or any(
        name == k or (k.endswith("*") and name.startswith(k[:-1]) and len(name) >= len(k))
        for k in keys
    )


def _resolve_dead_letter(ctx: CheckContext, params: JobQueueActionParams) -> Resolved:
    """As resolve_job_list; the dead-letter list itself is never a source."""
    resolved = resolve_job_list(ctx, params)
    if resolved.params.key == ctx.settings.job_queue.dead_letter_key:
        raise Refused(
            f"{_shown(resolved.params.key)} is the dead-letter list"
            " (REMEDIATION_JOB_QUEUE__DEAD_LETTER_KEY), not a job list"
        )
    return resolved


def _run(client: redis.Redis, name: str, keys: list[str], args: list[Any]) -> Any:
    """One Lua call; a key whose type changed since the resolve step is a refusal (the
    script's first command is the read that fails, so nothing was changed)."""
    try:
        return script(client, name, "remediation.actions")(keys=keys, args=args)
    except redis.ResponseError as exc:
        if "WRONGTYPE" in str(exc):
            raise Refused(f"{_shown(keys[0])} is no longer a list") from None
        raise


def _tombstone() -> str:
    return f"\x00remediation-tombstone-{uuid.uuid4().hex}"


def _per_run(settings: Any, params: Any) -> int:
    return int(settings.job_queue.max_changes_per_run)


def queue_key(key: str) -> str:
    """A job list as a plan names it."""
    return f"queue:{key}"


def _dedupe(ctx: CheckContext, target: str, key: str, cap: int, dry: bool) -> tuple[int, int]:
    """(duplicates removed, or counted when dry, jobs examined): one Lua call, so a plan
    counts with the very loop the action removes with."""
    cfg = ctx.settings.job_queue
    args = [cfg.scan_limit, cap, cfg.id_field or "", _tombstone(), "1" if dry else "0"]
    removed, scanned = _run(ctx.redis(target), "dedupe_job_queue", [key], args)
    return int(removed), int(scanned)


def _dead_letter(ctx: CheckContext, target: str, key: str, cap: int, dry: bool) -> tuple[int, int]:
    """(stale jobs moved, or counted when dry, jobs examined): one Lua call, as _dedupe."""
    cfg = ctx.settings.job_queue
    reason = f"older than {cfg.max_age_seconds}s"
    args = [cfg.scan_limit, cap, cfg.enqueued_at_field, cfg.max_age_seconds, _tombstone()]
    keys = [key, cfg.dead_letter_key]
    moved, scanned = _run(
        ctx.redis(target), "dead_letter_stale", keys, [*args, reason, "1" if dry else "0"]
    )
    return int(moved), int(scanned)


def _counted_plan(ctx: CheckContext, params: JobQueueActionParams, count: Any, verb: str) -> Plan:
    """One item: how many jobs of the list a run would change now (counted, not changed)."""
    key = params.key or ctx.settings.job_queue.key
    n, scanned = count(ctx, params.target, key, ctx.settings.job_queue.max_changes_per_run, True)
    what = f"{verb} {n} job(s) of {key} ({scanned} examined)"
    items = [item(queue_key(key), what, list=key, jobs=n, examined=scanned)] if n else []
    return plan_of(what, items)  # nothing to change: no item, nothing to approve


def plan_dedupe(ctx: CheckContext, params: JobQueueActionParams) -> Plan:
    return _counted_plan(ctx, params, _dedupe, "remove duplicates:")


def plan_dead_letter(ctx: CheckContext, params: JobQueueActionParams) -> Plan:
    dead = ctx.settings.job_queue.dead_letter_key
    return _counted_plan(ctx, params, _dead_letter, f"move to {dead} as stale:")


def _cap(ctx: ActionContext, target: str, key: str, count: Any) -> int:
    """Units reserved for this run: the per-run cap, and on an approval no more than the
    list's plan counts now nor than the approved plan counted."""
    cap = ctx.settings.job_queue.max_changes_per_run
    if not ctx.approves(queue_key(key)):
        raise Refused(f"{_shown(key)} is not the job list approved", notice=False)
    if ctx.approved is not None:  # what is there now, and no more than the approver saw
        now = count(ctx, target, key, cap, True)[0]
        cap = ctx.approved_count(queue_key(key), "jobs", now)
        if cap == 0:
            raise Refused(f"{_shown(key)}: nothing approved is left to change", notice=False)
    return ctx.reserve(cap)


@action(
    "dedupe_job_queue",
    resolve=resolve_job_list,
    resource=_resource,
    cooldown=timedelta(minutes=5),
    max_per_hour=30,
    upfront=_per_run,
    plan=plan_dedupe,
)
def dedupe_job_queue(ctx: ActionContext, params: JobQueueActionParams) -> ActionResult:
    """Remove duplicate jobs from the job list, keeping the first of each and the order.

    Runbook 000 "job queue processing duplicate jobs". Only REMEDIATION_JOB_QUEUE__KEY
    (default) or a list in __KEYS; another key is refused, a missing list is refused as
    nothing to do. One atomic Lua call; examines at most __SCAN_LIMIT jobs and removes at
    most __MAX_CHANGES_PER_RUN. Never FLUSHALL."""
    cfg = ctx.settings.job_queue
    key = params.key or cfg.key
    cap = _cap(ctx, params.target, key, _dedupe)  # blast radius: jobs removed per window
    if cap == 0:
        return _blast_spent("dedupe_job_queue", key)
    removed, scanned = _dedupe(ctx, params.target, key, cap, False)
    ctx.give_back(cap - removed)
    return ActionResult(
        changed=removed > 0,
        summary=f"removed {removed} duplicate job(s) from {key}",
        detail={"key": key, "removed": removed, "scanned": scanned, "bound": cap},
    )


@action(
    "dead_letter_stale_jobs",
    resolve=_resolve_dead_letter,
    resource=_resource,
    cooldown=timedelta(minutes=5),
    max_per_hour=30,
    upfront=_per_run,
    plan=plan_dead_letter,
)
def dead_letter_stale_jobs(ctx: ActionContext, params: JobQueueActionParams) -> ActionResult:
    """Move jobs older than the bound to the dead-letter list, with a reason; delete nothing.

    Runbook 000 "job queue is stuck" and runbook 004 "clear stale jobs", instead of
    FLUSHALL/DEL. Only REMEDIATION_JOB_QUEUE__KEY (default) or a list in __KEYS, into
    __DEAD_LETTER_KEY only. Age comes from the job's JSON field __ENQUEUED_AT_FIELD (epoch
    seconds); jobs without it stay. Capped per run."""
    cfg = ctx.settings.job_queue
    key = params.key or cfg.key
    cap = _cap(ctx, params.target, key, _dead_letter)  # blast radius: jobs moved per window
    if cap == 0:
        return _blast_spent("dead_letter_stale_jobs", key)
    moved, scanned = _dead_letter(ctx, params.target, key, cap, False)
    ctx.give_back(cap - moved)
    return ActionResult(
        changed=moved > 0,
        summary=f"moved {moved} stale job(s) from {key} to {cfg.dead_letter_key}",
        detail={
            "key": key,
            "dead_letter_key": cfg.dead_letter_key,
            "moved": moved,
            "scanned": scanned,
            "bound": cap,
        },
    )


def _blast_spent(name: str, key: str) -> ActionResult:
    return ActionResult(
        changed=False,
        detail={"key": key, "blast_radius": "cap reached"},
        summary=f"{name}: the blast-radius cap is spent; {key} left as it is",
    )
