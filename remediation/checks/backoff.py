"""The scrapers' pacing against the proxy check's ban signal (runbook 000 "Increase Delays").

The action that changes the pacing is tune_backoff (actions/backoff.py); the ban signal's
Redis keys are in remediation.ban_signal. This check only reads.
"""

from __future__ import annotations

import time

import redis

from remediation.ban_signal import number, quiet_seconds, read_ban_signal
from remediation.context import CheckContext
from remediation.errors import RemediationError
from remediation.findings import Finding, Severity
from remediation.params import CheckParams
from remediation.registry import check


class ScrapeBackoffParams(CheckParams):
    """target: the Redis holding REMEDIATION_BACKOFF__CONFIG_KEY."""


def _read_pacing(client: redis.Redis, key: str) -> tuple[float | None, float | None]:
    """min_delay and last_increase_at from the configuration hash (None: absent)."""
    min_delay, last_increase = client.hmget(key, ["min_delay", "last_increase_at"])
    try:
        return number(min_delay), number(last_increase)
    except ValueError:
        raise RemediationError(f"min_delay/last_increase_at in {key} are not numbers") from None


@check("scrape_backoff")
def scrape_backoff(ctx: CheckContext, params: ScrapeBackoffParams) -> list[Finding]:
    """The scrapers' pacing against the proxy check's ban signal (runbook 000 "Increase Delays").

    Ban rate (BAN_RATE_KEY) at or above REMEDIATION_BACKOFF__BAN_RATE_THRESHOLD ->
    scrape_ban_rate_high (warning; high when min_delay is already at the cap, so pacing
    cannot help any more). min_delay above the floor with neither a ban nor an increase in
    the last HEALTHY_SECONDS -> scrape_backoff_relaxable (info): time to ease off."""
    cfg = ctx.settings.backoff
    min_delay, last_increase = _read_pacing(ctx.redis(params.target), cfg.config_key)
    signal = read_ban_signal(ctx)
    delay = cfg.floor_seconds if min_delay is None else min_delay
    quiet = quiet_seconds(time.time(), signal, last_increase)
    evidence = {
        "min_delay": delay,
        "configured": min_delay is not None,
        "floor_seconds": cfg.floor_seconds,
        "cap_seconds": cfg.cap_seconds,
        "ban_rate": signal.ban_rate,
        "last_ban_at": signal.last_ban_at,
        "quiet_seconds": None if quiet is None else round(quiet),
        "unreadable": list(signal.unreadable),
    }
    # The delay is part of the subject: each AIMD step is a condition of its own (a new
    # incident), so the next step is not refused as a duplicate of the last one.
    base = {
        "check": "scrape_backoff",
        "target": params.target,
        "subject": f"{cfg.config_key}@{delay:g}s",
        "evidence": evidence,
    }
    if signal.ban_rate is not None and signal.ban_rate >= cfg.ban_rate_threshold:
        at_cap = delay >= cfg.cap_seconds
        cap_note = " (at the cap)" if at_cap else ""
        return [
            Finding(
                **base,
                kind="scrape_ban_rate_high",
                severity=Severity.HIGH if at_cap else Severity.WARNING,
                observed=signal.ban_rate,
                threshold=cfg.ban_rate_threshold,
                summary=f"ban rate {signal.ban_rate:.0%} with min_delay {delay}s{cap_note}",
            )
        ]
    if delay > cfg.floor_seconds and quiet is not None and quiet >= cfg.healthy_seconds:
        return [
            Finding(
                **base,
                kind="scrape_backoff_relaxable",
                severity=Severity.INFO,
                observed=delay,
                threshold=cfg.floor_seconds,
                summary=f"no ban for {round(quiet)}s; min_delay {delay}s can come down",
            )
        ]
    return []
