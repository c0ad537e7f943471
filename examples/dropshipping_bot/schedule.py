"""Beat schedule of the dropshipping bot profile (runbook 000).

REMEDIATION_SCHEDULE_MODULE=examples.dropshipping_bot.schedule. Starts from the shipped
beat_schedule.py (installed with the package, so importable from anywhere; the remediator
keeps watching its own audit database and state Redis as under `make run`), then points the
entries whose data lives in the bot's Redis at the target "queue" and adds the bot database's
entries for the target "shop" (names from profile.env).
"""

from __future__ import annotations

import copy
from typing import Any

from beat_schedule import SCHEDULE as BASE

SCHEDULE: dict[str, dict[str, Any]] = copy.deepcopy(BASE)

# runbook 000 "Redis Queue Management: job queue is stuck or processing duplicate jobs": LLEN
# job_queue every minute on the bot's Redis; duplicates and stuck jobs fixed (never FLUSHALL).
SCHEDULE["sweep-job-queue"]["kwargs"] = {"target": "queue"}
# runbook 000 "HTTP 403 Forbidden / CAPTCHA 1. Rotate Proxies": every 5 minutes, the pool in
# the bot's Redis (REMEDIATION_PROXIES__REDIS_TARGET=queue).
SCHEDULE["sweep-proxy-pool"]["kwargs"] = {"target": "queue"}
# runbook 000 "HTTP 403 Forbidden / CAPTCHA 2. Increase Delays": min_delay in the bot's Redis.
SCHEDULE["sweep-scrape-backoff"]["kwargs"] = {"target": "queue"}
# runbook 000 "Shopify API (429)" / "OpenAI API (429)": throttles and fallbacks kept in the
# bot's Redis are restored when their time is up.
SCHEDULE["sweep-api-rate-limits"]["kwargs"] = {"target": "queue"}

SCHEDULE.update(
    {
        # runbook 000 "Database Maintenance: Postgres Connection Issues" (verify credentials,
        # volume): connection and latency of the bot's database, every minute.
        "shop-sweep-postgres-connections": {
            "task": "remediation.check.postgres_connections",
            "schedule": 60,
            "kwargs": {"target": "shop"},
        },
        # runbook 000 "Backup: pg_dump -U [user] [db_name] > backup.sql": a verified dump of
        # "shop" younger than a day (REMEDIATION_BACKUP__INTERVAL_HOURS), looked at every
        # 15 minutes, so one is always there before a major update.
        "shop-sweep-postgres-backups": {
            "task": "remediation.check.postgres_backups",
            "schedule": "*/15 * * * *",
            "kwargs": {"target": "shop"},
        },
        # runbook 000 "Check if volume is corrupt": the newest dump restored again on the 1st
        # at 04:15 UTC, so a dump that rotted on disk is found before it is needed.
        "shop-monthly-backup-verification": {
            "task": "remediation.act.verify_backup",
            "schedule": "15 4 1 * *",
            "kwargs": {"target": "shop"},
        },
    }
)
