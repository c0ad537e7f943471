"""Beat schedule of the Flask/Celery application profile (runbook 002).

REMEDIATION_SCHEDULE_MODULE=examples.flask_celery_app.schedule. Starts from the shipped
beat_schedule.py (installed with the package, so importable from anywhere): its Celery, HTTP,
Prometheus and host entries read the settings of profile.env as they are, and the remediator
keeps watching its own audit database and state Redis as under `make run`. Added: the
application's database ("app") and Redis ("app"), names from profile.env.
"""

from __future__ import annotations

import copy
from typing import Any

from beat_schedule import SCHEDULE as BASE

SCHEDULE: dict[str, dict[str, Any]] = copy.deepcopy(BASE)

SCHEDULE.update(
    {
        # runbook 002 "Database Issues: connection errors, connection pool exhaustion":
        # connectivity, latency and connection slots of the application's database, every minute.
        "app-sweep-postgres-connections": {
            "task": "remediation.check.postgres_connections",
            "schedule": 60,
            "kwargs": {"target": "app"},
        },
        # runbook 002 "Database Issues 3. Connection Pool: check for connection leaks": sessions
        # idle in transaction and long queries, every minute.
        "app-sweep-postgres-sessions": {
            "task": "remediation.check.postgres_sessions",
            "schedule": 60,
            "kwargs": {"target": "app"},
        },
        # runbook 002 "Database Issues 2. Slow Queries: review slow query log": hourly at :10.
        "app-hourly-slow-queries": {
            "task": "remediation.check.postgres_slow_queries",
            "schedule": "10 * * * *",
            "kwargs": {"target": "app"},
        },
        # runbook 002 "Disk Space Issues: Diagnosis 3. Check database size": daily at 06:00 UTC.
        "app-daily-database-size": {
            "task": "remediation.check.postgres_database_size",
            "schedule": "0 6 * * *",
            "kwargs": {"target": "app"},
        },
        # runbook 002 "Redis/Cache Issues": connectivity, memory, hit rate (misses > 50 %) of
        # the application's Redis, every minute.
        "app-sweep-redis-cache": {
            "task": "remediation.check.redis_cache",
            "schedule": 60,
            "kwargs": {"target": "app"},
        },
    }
)
