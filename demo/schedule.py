"""The demo's beat schedule (REMEDIATION_SCHEDULE_MODULE=demo.schedule): the checks that
watch the miniature every few seconds, so the remediator finds each fault by itself.

Targets: "demo" is the miniature's database and Redis (REMEDIATION_POSTGRES_TARGETS /
REMEDIATION_REDIS_TARGETS set by demo.run)."""

INTERVAL = 5
"""Seconds between two runs of each check (production: beat_schedule.py, minutes to weeks)."""

SCHEDULE = {
    # Runbook 001 "Weekly Operations 1. Database Maintenance": VACUUM ANALYZE price_history.
    "demo-dead-tuples": {
        "task": "remediation.check.postgres_dead_tuples",
        "schedule": INTERVAL,
        "kwargs": {"target": "demo", "min_dead_ratio": 0.2, "min_dead_rows": 1000},
    },
    # Runbook 000 "Redis Queue Management": duplicate jobs in the scraper's job list.
    "demo-job-queue": {
        "task": "remediation.check.redis_job_queue",
        "schedule": INTERVAL,
        "kwargs": {"target": "demo"},
    },
    # Runbook 000 "HTTP 403 Forbidden: Rotate Proxies", 001 "Proxy Pool Maintenance".
    "demo-proxy-pool": {
        "task": "remediation.check.proxy_pool_health",
        "schedule": INTERVAL,
        "kwargs": {"target": "demo"},
    },
    # Runbook 000 "Docker Management": crashed containers of the compose project
    # (REMEDIATION_CONTAINERS__PROJECT, set when Docker answers; else an info finding).
    "demo-containers": {
        "task": "remediation.check.docker_containers",
        "schedule": INTERVAL,
        "kwargs": {"target": "docker"},
    },
    # Runbooks 002 and 003 "Redis/Cache Issues": memory, evictions, hit rate of the scraper's
    # Redis (its flush_cache runs by hand only: a full LRU cache is normal).
    "demo-cache": {
        "task": "remediation.check.redis_cache",
        "schedule": INTERVAL,
        "kwargs": {"target": "demo"},
    },
}
