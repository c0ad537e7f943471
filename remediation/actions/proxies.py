"""Runbook 000 "HTTP 403 Forbidden / CAPTCHA: Rotate Proxies" and runbook 001 "Emergency:
rotate proxy pool": quarantine failing proxies with back-off, promote recovered ones."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from remediation.context import ActionContext, CheckContext, Resolved
from remediation.errors import Refused
from remediation.findings import ActionResult
from remediation.params import ActionParams
from remediation.proxies import (
    ACTIVE,
    DEAD,
    FAILING,
    HEALTHY,
    QUARANTINED,
    Changes,
    ProxyPool,
    ProxyRecord,
    load_entries,
)
from remediation.registry import action
from remediation.resolve import canonical, redis_target
from remediation.settings import ProxySettings

MAX_LISTED = 100
"""Proxies listed by name per list in the result; the rest are counted."""


class RotateProxiesParams(ActionParams):
    """``target`` is the Redis target that holds the pool (REMEDIATION_REDIS_TARGETS)."""


@dataclass
class Rotation(Changes):
    """What a rotation decided, proxies named by id and scheme://host:port."""

    quarantined: list[dict[str, Any]] = field(default_factory=list)
    dead: list[dict[str, Any]] = field(default_factory=list)
    promoted: list[dict[str, Any]] = field(default_factory=list)
    kept_failing: list[dict[str, Any]] = field(default_factory=list)
    healthy_after: int = 0


def _resolve(ctx: CheckContext, params: RotateProxiesParams) -> Resolved:
    """The target must be the Redis holding the pool (REMEDIATION_PROXIES__REDIS_TARGET),
    named as configured; with no proxy configured there is nothing to rotate."""
    cfg = ctx.settings.proxies
    what = f"the proxy pool {cfg.active_key!r} (REMEDIATION_PROXIES__REDIS_TARGET)"
    target = redis_target(ctx, params.target, only=cfg.redis_target, what=what)
    loaded = load_entries(cfg)
    if not loaded.entries and loaded.complete:
        raise Refused(
            "nothing to rotate: no proxy is configured (REMEDIATION_PROXIES__PROXY_LIST and"
            " __FILE name none)",
            notice=False,
        )
    return canonical(params, target=target)


def backoff_seconds(quarantine_count: int, cfg: ProxySettings) -> int:
    """quarantine_base_seconds * 2**count, capped at quarantine_max_seconds."""
    doubled: int = cfg.quarantine_base_seconds << min(quarantine_count, 32)
    return min(doubled, cfg.quarantine_max_seconds)


def _badness(rec: ProxyRecord) -> tuple[int, float, int, float]:
    """Dead is worse than banned; then lower score, more failures, slower."""
    return (
        rec.last_status == DEAD,
        -rec.score,
        rec.consecutive_failures,
        rec.last_latency_ms or float("inf"),
    )


def _park(rec: ProxyRecord, cfg: ProxySettings, now: float, rotation: Rotation) -> None:
    """Quarantine (back-off doubling) or, after dead_after_failures, mark dead."""
    dead = rec.consecutive_failures >= cfg.dead_after_failures
    seconds = cfg.quarantine_max_seconds if dead else backoff_seconds(rec.quarantine_count, cfg)
    rotation.fields[rec.id] = {
        "state": DEAD if dead else QUARANTINED,
        "quarantine_until": f"{now + seconds:.3f}",
        "quarantined_at": f"{now:.3f}",
        "quarantine_count": str(rec.quarantine_count + 1),
    }
    (rotation.dead if dead else rotation.quarantined).append(rec.brief(seconds=seconds))


def plan_rotation(records: dict[str, ProxyRecord], cfg: ProxySettings, now: float) -> Rotation:
    """Decide the rotation without writing anything (pool.update writes it)."""
    rotation = Rotation()
    active = [rec for rec in records.values() if rec.state == ACTIVE]
    parked = [rec for rec in records.values() if rec.retested]
    promote = [rec for rec in parked if rec.last_status in HEALTHY]
    failing = sorted((rec for rec in active if rec.last_status in FAILING), key=_badness)
    floor = min(cfg.min_active, len(active) + len(promote))
    keep = max(0, floor - (len(active) - len(failing) + len(promote)))
    for rec in promote:
        rotation.fields[rec.id] = {"state": ACTIVE, "quarantine_until": "0"}
        rotation.promoted.append(rec.brief())
    rotation.kept_failing = [rec.brief() for rec in failing[:keep]]
    for rec in failing[keep:] + [rec for rec in parked if rec.last_status in FAILING]:
        _park(rec, cfg, now, rotation)
    healthy_active = [rec for rec in active if rec.last_status in HEALTHY]
    rotation.healthy_after = len(healthy_active) + len(promote)
    return rotation


def _summary(rot: Rotation, cfg: ProxySettings) -> str:
    text = (
        f"active {rot.active_before} -> {rot.active_after}: {len(rot.quarantined)} quarantined,"
        f" {len(rot.dead)} dead, {len(rot.promoted)} promoted"
    )
    if rot.healthy_after < cfg.min_active:
        text = (
            f"proxy pool below its minimum: {rot.healthy_after} healthy active proxies,"
            f" minimum {cfg.min_active}; kept {len(rot.kept_failing)} failing proxies"
            f" active rather than shrink the set ({text})"
        )
    return text


def _listed(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return items[:MAX_LISTED]


@action("rotate_proxies", resolve=_resolve, cooldown=timedelta(0), max_per_hour=60, breaker=False)
def rotate_proxies(ctx: ActionContext, params: RotateProxiesParams) -> ActionResult:
    """Quarantine banned and failing proxies, promote recovered ones, republish the set.

    Runbook 000 "Rotate Proxies" and runbook 001 "Emergency: rotate proxy pool". A proxy
    whose latest test was banned or failed is quarantined for
    REMEDIATION_PROXIES__QUARANTINE_BASE_SECONDS, doubling with each quarantine up to
    __QUARANTINE_MAX_SECONDS; after __DEAD_AFTER_FAILURES failed tests in a row it is
    marked dead (re-tested every __QUARANTINE_MAX_SECONDS). A parked proxy that passed
    its re-test is promoted. The active set (__ACTIVE_KEY) is replaced atomically and
    never shrunk below __MIN_ACTIVE: the least bad failing proxies stay, and the action
    fails (notifying a human) while fewer than __MIN_ACTIVE healthy proxies remain.
    No circuit breaker: a failure here means "pool too small", and rotating must keep
    promoting recovered proxies. Only on REMEDIATION_PROXIES__REDIS_TARGET; with no proxy
    configured it is refused quietly (nothing to rotate)."""
    cfg = ctx.settings.proxies
    pool = ProxyPool(ctx.redis(params.target), cfg.active_key)
    now = time.time()
    rot = pool.update(lambda records: plan_rotation(records, cfg, now))
    summary = _summary(rot, cfg)
    ctx.log.info("proxies rotated", summary=summary)
    return ActionResult(
        ok=rot.healthy_after >= cfg.min_active,
        changed=not rot.empty,
        summary=summary,
        detail={
            "active_before": rot.active_before,
            "active_after": rot.active_after,
            "healthy_after": rot.healthy_after,
            "min_active": cfg.min_active,
            "republished": rot.republished,
            "quarantined": _listed(rot.quarantined),
            "dead": _listed(rot.dead),
            "promoted": _listed(rot.promoted),
            "kept_failing": _listed(rot.kept_failing),
            "counts": {
                "quarantined": len(rot.quarantined),
                "dead": len(rot.dead),
                "promoted": len(rot.promoted),
                "kept_failing": len(rot.kept_failing),
            },
        },
    )
