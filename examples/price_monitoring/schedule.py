"""Beat schedule of the price-monitoring scraper profile (runbook 001).

REMEDIATION_SCHEDULE_MODULE=examples.price_monitoring.schedule. Starts from the shipped
beat_schedule.py (installed with the package, so importable from anywhere; the remediator
keeps watching its own audit database and state Redis as under `make run`), then points the
entries whose settings live in the scraper's Redis at the target "scraper" and adds the
scraper database's entries for the target "prices" (names from profile.env).
"""

from __future__ import annotations

import copy
from typing import Any

from beat_schedule import SCHEDULE as BASE

SCHEDULE: dict[str, dict[str, Any]] = copy.deepcopy(BASE)

# runbook 001 "Daily 3. Data Quality Check": the rules of profile.env name the scraper's
# tables, which the remediator's own database does not have; they run on "prices" below.
del SCHEDULE["daily-data-quality"]

# runbook 001 "Weekly 2. Proxy Pool Maintenance: test all proxies" (every 5 minutes): the pool
# is in the scraper's Redis (REMEDIATION_PROXIES__REDIS_TARGET=scraper).
SCHEDULE["sweep-proxy-pool"]["kwargs"] = {"target": "scraper"}
# runbook 001 "If rate limiting: adjust request rates / implement cooldown": min_delay lives
# in the scraper's Redis (REMEDIATION_BACKOFF__REDIS_TARGET=scraper).
SCHEDULE["sweep-scrape-backoff"]["kwargs"] = {"target": "scraper"}

SCHEDULE.update(
    {
        # runbook 001 "System Overload Response 3. Check database load": connection slots and
        # latency of the scraper's database, every minute.
        "prices-sweep-postgres-connections": {
            "task": "remediation.check.postgres_connections",
            "schedule": 60,
            "kwargs": {"target": "prices"},
        },
        # runbook 001 "System Overload Response 3. pg_stat_activity where state = 'active'":
        # long queries and sessions idle in transaction (only role "scraper" may be ended).
        "prices-sweep-postgres-sessions": {
            "task": "remediation.check.postgres_sessions",
            "schedule": 60,
            "kwargs": {"target": "prices"},
        },
        # runbook 001 "Data Quality Issues 1. Check extraction accuracy" (the last hour) and
        # "Daily 3. Data Quality Check": hourly at :20, with the freshness of price_history.
        "prices-hourly-data-quality": {
            "task": "remediation.check.postgres_data_quality",
            "schedule": "20 * * * *",
            "kwargs": {"target": "prices"},
        },
        # runbook 001 "Weekly 1. Database Maintenance: ANALYZE monitored_urls, price_history,
        # scrape_logs; VACUUM ANALYZE": Sunday 03:00 UTC, bloated tables vacuumed, tables with
        # stale statistics analyzed.
        "prices-weekly-vacuum-analyze": {
            "task": "remediation.check.postgres_dead_tuples",
            "schedule": "0 3 * * 0",
            "kwargs": {"target": "prices", "min_dead_ratio": 0.2},
        },
        # runbook 001 "Weekly 1. Database Maintenance: check index health" (pg_stat_user_indexes),
        # after the vacuum; reported, never dropped.
        "prices-weekly-index-health": {
            "task": "remediation.check.postgres_unused_indexes",
            "schedule": "30 3 * * 0",
            "kwargs": {"target": "prices"},
        },
        # runbook 001 "Monthly 3. Capacity Planning: review growth metrics": database size and
        # growth, daily at 06:00 UTC.
        "prices-daily-database-size": {
            "task": "remediation.check.postgres_database_size",
            "schedule": "0 6 * * *",
            "kwargs": {"target": "prices"},
        },
        # runbook 001 "Pre-Maintenance 2. Backup database" and "Monthly 2. Backup Verification":
        # a verified dump of "prices" younger than a day, looked at every 15 minutes.
        "prices-sweep-postgres-backups": {
            "task": "remediation.check.postgres_backups",
            "schedule": "*/15 * * * *",
            "kwargs": {"target": "prices"},
        },
        # runbook 001 "Monthly 2. Backup Verification: test backup restoration": the 1st at
        # 04:15 UTC, the newest dump restored again whatever its state.
        "prices-monthly-backup-verification": {
            "task": "remediation.act.verify_backup",
            "schedule": "15 4 1 * *",
            "kwargs": {"target": "prices"},
        },
        # runbook 001 "Pre-Maintenance 2. Backup configs: tar -czf config_backup.tar.gz config/":
        # daily at 02:30 UTC (REMEDIATION_BACKUP__FILE_PATHS).
        "daily-file-backup": {
            "task": "remediation.act.backup_files",
            "schedule": "30 2 * * *",
            "kwargs": {},
        },
    }
)
