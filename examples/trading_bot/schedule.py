"""Beat schedule of the trading bot profile (runbook 004).

REMEDIATION_SCHEDULE_MODULE=examples.trading_bot.schedule. Starts from the shipped
beat_schedule.py (installed with the package, so importable from anywhere): its HTTP,
Prometheus, log-secrets, API-key and dependency entries read the settings of profile.env as
they are, and the remediator keeps watching its own audit database and state Redis as under
`make run`. The job-queue check moves to the bot's Redis ("jobs", from profile.env).
"""

from __future__ import annotations

import copy
from typing import Any

from beat_schedule import SCHEDULE as BASE

SCHEDULE: dict[str, dict[str, Any]] = copy.deepcopy(BASE)

# runbook 004 "Worker Queue Backlog: pending jobs > 50": worker:scanner:queue on the bot's
# Redis, every minute (duplicates removed, stale jobs dead-lettered, backlog notified).
SCHEDULE["sweep-job-queue"]["kwargs"] = {"target": "jobs"}

SCHEDULE.update(
    {
        # runbook 004 "Worker Queue Backlog: Processing time increasing" and "Circuit Breaker
        # Trips: monitor recovery (watch -n 5 ...)": the bot's Redis itself (connectivity,
        # latency, memory), every minute.
        "jobs-sweep-redis": {
            "task": "remediation.check.redis_cache",
            "schedule": 60,
            "kwargs": {"target": "jobs"},
        },
    }
)
