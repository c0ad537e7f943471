"""The ban signal the proxy health check publishes and the scrapers' pacing follows
(runbook 000 "Increase Delays").

The proxy check writes BAN_RATE_KEY and LAST_BAN_KEY on the Redis of
REMEDIATION_PROXIES__REDIS_TARGET (remediation.proxies); scrape_backoff reads them to
report, tune_backoff to act. Both read them through here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from remediation import proxies
from remediation.context import CheckContext

BAN_RATE_KEY = proxies.BAN_RATE_KEY
"""Share (0-1, a float string) of proxied requests banned in the proxy check's window."""
LAST_BAN_KEY = proxies.LAST_BAN_AT_KEY
"""Epoch seconds (a float string) of the newest ban the proxy check saw."""


@dataclass(frozen=True)
class BanSignal:
    """What the proxy check published: ban rate and time of the newest ban (None: absent)."""

    ban_rate: float | None
    last_ban_at: float | None
    unreadable: tuple[str, ...] = ()


def number(raw: bytes | str | None) -> float | None:
    """A finite float from a Redis value; None when absent; ValueError when garbage."""
    if raw is None:
        return None
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(f"not finite: {value}")
    return value


def read_ban_signal(ctx: CheckContext) -> BanSignal:
    """Read BAN_RATE_KEY and LAST_BAN_KEY from the proxies' Redis."""
    rate_raw, last_raw = ctx.redis(ctx.settings.proxies.redis_target).mget(
        [BAN_RATE_KEY, LAST_BAN_KEY]
    )
    values: dict[str, float | None] = {}
    bad: list[str] = []
    for name, raw in ((BAN_RATE_KEY, rate_raw), (LAST_BAN_KEY, last_raw)):
        try:
            values[name] = number(raw)
        except ValueError:
            values[name] = None
            bad.append(name)
    return BanSignal(values[BAN_RATE_KEY], values[LAST_BAN_KEY], tuple(bad))


def quiet_seconds(now: float, signal: BanSignal, last_increase_at: float | None) -> float | None:
    """Seconds since the newest ban or increase; None when the ban time cannot be read."""
    if LAST_BAN_KEY in signal.unreadable:
        return None
    return now - max(signal.last_ban_at or 0.0, last_increase_at or 0.0)
