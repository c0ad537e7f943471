"""Hysteresis: a finding triggers only once the same check saw it in enough consecutive runs
(REMEDIATION_GUARDS__CONSECUTIVE_RUNS, per check in CONSECUTIVE_OVERRIDES).

The counts live in one Redis hash per check and target (streak.lua): a condition missing
from a run starts again from zero.
"""

from __future__ import annotations

import redis

from remediation.guards import keys
from remediation.guards.lua import script
from remediation.settings import GuardSettings

STREAK_TTL = 8 * 86400
"""A streak outlives a weekly check's gap between two runs."""


def needed(guards: GuardSettings, check: str) -> int:
    """Consecutive runs of ``check`` that must see a finding before it triggers."""
    return guards.consecutive_overrides.get(check, guards.consecutive_runs)


def count(client: redis.Redis, check: str, target: str, fingerprints: list[str]) -> list[int]:
    """Count this run: the consecutive runs (this one included) that saw each fingerprint,
    in the order given. Raises the client's errors."""
    counts = script(client, "streak")(
        keys=[keys.streak(check, target)], args=[STREAK_TTL, *fingerprints]
    )
    return [int(n) for n in counts]
