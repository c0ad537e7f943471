"""The schedule operators edit: which checks run when.

Each entry names a task (``remediation.check.<name>``, or an action), a schedule and the
task's kwargs. The schedule is a crontab string "minute hour day-of-month month
day-of-week" (UTC), or a number of seconds for the frequent sweep. Every entry is
validated when the worker or beat starts: an unknown task, a bad crontab or kwargs the
task does not accept stop start-up with a message naming the entry.

Checks act through the playbook (`remediation playbook`): a finding fans out to its
guarded actions. Targets are names from REMEDIATION_POSTGRES_TARGETS /
REMEDIATION_REDIS_TARGETS; "self" is the worker's own audit database and state Redis.
"""

SCHEDULE = {
    # Frequent sweep of the quick checks.
    # Runbook 000 "Redis Queue Management": duplicates and stuck jobs in the job list;
    # runbook 004 "Worker Queue Backlog": pending > 50.
    "sweep-job-queue": {
        "task": "remediation.check.redis_job_queue",
        "schedule": 60,
        "kwargs": {"target": "self"},
    },
    # Runbook 002 "Database Issues": connectivity, latency, connection slots and the pool.
    "sweep-postgres-connections": {
        "task": "remediation.check.postgres_connections",
        "schedule": 60,
        "kwargs": {"target": "self"},
    },
    # Runbook 001 "System Overload Response" / 002 connection leaks: sessions idle in
    # transaction and long-running queries.
    "sweep-postgres-sessions": {
        "task": "remediation.check.postgres_sessions",
        "schedule": 60,
        "kwargs": {"target": "self"},
    },
    # Runbook 002 "Slow Queries" (needs pg_stat_statements; says so once an hour if absent).
    "hourly-slow-queries": {
        "task": "remediation.check.postgres_slow_queries",
        "schedule": "10 * * * *",
        "kwargs": {"target": "self"},
    },
    # Daily: runbook 001 "Daily Operations 3. Data Quality Check" (configured rules).
    "daily-data-quality": {
        "task": "remediation.check.postgres_data_quality",
        "schedule": "15 6 * * *",
        "kwargs": {"target": "self"},
    },
    # Daily: database size and growth since yesterday (runbook 002 "Disk Space Issues").
    "daily-database-size": {
        "task": "remediation.check.postgres_database_size",
        "schedule": "0 6 * * *",
        "kwargs": {"target": "self"},
    },
    # Runbook 000 (pg_dump) and runbook 001 "Monthly Operations 2. Backup Verification":
    # keep a verified dump younger than REMEDIATION_BACKUP__INTERVAL_HOURS (daily by
    # default). The check only reads manifests; a stale backup triggers backup_database,
    # a fresh unverified one triggers verify_backup (restore into a scratch database).
    "sweep-postgres-backups": {
        "task": "remediation.check.postgres_backups",
        "schedule": "*/15 * * * *",
        "kwargs": {"target": "self"},
    },
    # Monthly: runbook 001 "Backup Verification" of the newest dump again, whatever its
    # state, so a dump that rotted on disk is caught.
    "monthly-backup-verification": {
        "task": "remediation.act.verify_backup",
        "schedule": "0 4 1 * *",
        "kwargs": {"target": "self"},
    },
    # Runbook 003 "Backup and Recovery": configuration and SQLite files. Needs
    # REMEDIATION_BACKUP__FILE_PATHS; uncomment once set.
    # "daily-file-backup": {
    #     "task": "remediation.act.backup_files",
    #     "schedule": "30 2 * * *",
    #     "kwargs": {},
    # },
    # Runbooks 001 (scraper_errors_total), 002 (error rate 5/10/20 %, P95 1/2/5 s, scraper
    # success < 80/50 %) and 004 (SLA success < 95 %, P99) as PromQL rules; needs
    # REMEDIATION_PROMETHEUS__URL (until then one info finding per run).
    "sweep-prometheus-slo": {
        "task": "remediation.check.prometheus_slo",
        "schedule": 60,
        "kwargs": {"target": "prometheus"},
    },
    # Runbook 002 "System Startup: check health endpoints", 001 "check target site
    # availability", 004 freshness from an endpoint; needs REMEDIATION_HTTP__ENDPOINTS.
    "sweep-http-endpoints": {
        "task": "remediation.check.http_endpoints",
        "schedule": 60,
        "kwargs": {"target": "http"},
    },
    # Runbook 000 "HTTP 403 / CAPTCHA: Rotate Proxies" and runbook 001 "Weekly 2. Proxy Pool
    # Maintenance" (test all proxies, geographic distribution); needs
    # REMEDIATION_PROXIES__TEST_URL and a proxy list.
    "sweep-proxy-pool": {
        "task": "remediation.check.proxy_pool_health",
        "schedule": 300,
        "kwargs": {"target": "self"},
    },
    # Runbook 000 "Increase Delays": back off while proxies are banned, ease off after a
    # sustained healthy period (AIMD on min_delay).
    "sweep-scrape-backoff": {
        "task": "remediation.check.scrape_backoff",
        "schedule": 60,
        "kwargs": {"target": "self"},
    },
    # Runbook 000 Shopify 429 / OpenAI quota and runbook 004 "Rate Limit Exhaustion"
    # (usage > 80 %); also restores throttled sync intervals when their time is up.
    "sweep-api-rate-limits": {
        "task": "remediation.check.api_rate_limits",
        "schedule": 120,
        "kwargs": {"target": "self"},
    },
    # Runbook 001 "Reduce load": resumes a paused low-priority queue when its time is up.
    "sweep-celery-paused-queues": {
        "task": "remediation.check.celery_paused_queues",
        "schedule": 60,
        "kwargs": {"target": "self"},
    },
    # Runbook 000 "Docker Management" and 001 "Daily 1. System Health Check" (docker
    # compose ps, docker stats); needs REMEDIATION_CONTAINERS__PROJECT.
    "sweep-containers": {
        "task": "remediation.check.docker_containers",
        "schedule": 60,
        "kwargs": {"target": "docker"},
    },
    # Runbooks 002 and 003 "Redis/Cache Issues": connectivity, memory, evictions, hit rate.
    "sweep-redis-cache": {
        "task": "remediation.check.redis_cache",
        "schedule": 60,
        "kwargs": {"target": "self"},
    },
    # Runbook 002 "Disk Space Issues" (80 / 90 / 95 %) and "Memory Issues" (> 90 %), on the
    # host of whichever worker takes the task: route these per host on multi-host set-ups.
    "sweep-host-disk": {
        "task": "remediation.check.host_disk",
        "schedule": 300,
        "kwargs": {"target": "self"},
    },
    "sweep-host-memory": {
        "task": "remediation.check.host_memory",
        "schedule": 60,
        "kwargs": {"target": "self"},
    },
    # Runbook 002 "Celery Worker Issues" and 004 "Worker Queue Backlog": workers answering,
    # queue depth (> 50 / > 1000) and growth, stuck tasks; scale_workers within bounds.
    "sweep-celery-workers": {
        "task": "remediation.check.celery_workers",
        "schedule": 60,
        "kwargs": {"target": "celery"},
    },
    "sweep-celery-queues": {
        "task": "remediation.check.celery_queues",
        "schedule": 60,
        "kwargs": {"target": "celery"},
    },
    "sweep-celery-stuck-tasks": {
        "task": "remediation.check.celery_stuck_tasks",
        "schedule": 300,
        "kwargs": {"target": "celery"},
    },
    # Daily: severe bloat only (half the rows dead) gets vacuumed before the weekly pass.
    "daily-severe-bloat": {
        "task": "remediation.check.postgres_dead_tuples",
        "schedule": "30 4 * * *",
        "kwargs": {"target": "self", "min_dead_ratio": 0.5},
    },
    # Weekly: runbook 001 "Weekly Operations 1. Database Maintenance" (VACUUM ANALYZE),
    # Sunday 03:00 UTC, tables with more than 20 % dead rows.
    "weekly-vacuum-analyze": {
        "task": "remediation.check.postgres_dead_tuples",
        "schedule": "0 3 * * 0",
        "kwargs": {"target": "self", "min_dead_ratio": 0.2},
    },
    # Weekly: runbook 001 "Check index health", after the Sunday vacuum; reported only.
    "weekly-index-health": {
        "task": "remediation.check.postgres_unused_indexes",
        "schedule": "30 3 * * 0",
        "kwargs": {"target": "self"},
    },
    # Monthly: runbook 001 "Monthly Operations" capacity review; a thorough pass that also
    # catches smaller tables (10 % dead, 100 rows) on the 1st at 05:00 UTC.
    "monthly-thorough-vacuum": {
        "task": "remediation.check.postgres_dead_tuples",
        "schedule": "0 5 1 * *",
        "kwargs": {"target": "self", "min_dead_ratio": 0.1, "min_dead_rows": 100},
    },
    # --- issue 13: access ---
    # Runbook 003 "Security Procedures: review access logs" (401/403/429 per client, like
    # fail2ban's findtime / maxretry) -> runbook 001 "Block suspicious IPs" (block_ip).
    # Reads REMEDIATION_ACCESS__LOGS; with none configured it finds nothing.
    "sweep-access-logs": {
        "task": "remediation.check.access_log_clients",
        "schedule": 60,
        "kwargs": {"target": "self"},
    },
    # --- issue 13: images ---
    # Monthly: runbook 001 "Monthly Operations 1. Security Updates" (docker-compose pull,
    # up -d --build): the 1st at 04:30 UTC; services updated 25+ days ago are due.
    "monthly-image-updates": {
        "task": "remediation.check.image_updates",
        "schedule": "30 4 1 * *",
        "kwargs": {"target": "docker"},
    },
    # --- issue 13: dependencies ---
    # Runbook 004 "Dependency Vulnerabilities" (pip-audit) / 003 "Update Dependencies":
    # daily at 06:15 UTC; vulnerable packages are notified, never upgraded.
    "daily-python-dependencies": {
        "task": "remediation.check.python_dependencies",
        "schedule": "15 6 * * *",
        "kwargs": {"target": "dependencies"},
    },
    # --- issue 13: certificates ---
    # Runbook 001 "Monthly Operations 1. Security Updates" (certbot renew): certificates read
    # daily at 06:45 UTC; the renewal runs when this finds one within 30 days of expiry, so the
    # monthly renewal happens when it is due (and never a month late).
    "daily-tls-certificates": {
        "task": "remediation.check.tls_certificates",
        "schedule": "45 6 * * *",
        "kwargs": {"target": "certificates"},
    },
    # --- issue 13: monitoring ---
    # Runbook 001 "Security Incident Response 3. Enable enhanced monitoring": a log level raised
    # in an application's file is put back once its time is up (a Redis key expires by itself).
    "log-level-expiry": {
        "task": "remediation.check.log_level_expiry",
        "schedule": 60,
        "kwargs": {"target": "self"},
    },
    # --- issue 13: api_keys ---
    # Runbooks 004 "API Key Validation Failure" (which keys are missing or refused) and 003
    # "Monthly: review and rotate API keys" (rotation due past max_age_days): hourly.
    "api-keys": {
        "task": "remediation.check.api_keys",
        "schedule": 3600,
        "kwargs": {"target": "self"},
    },
    # --- issue 13: secrets ---
    # Runbook 004 "Security Check Failures": grep -i "fa=" in the logs, every 5 minutes
    # (incremental: only what was written since the last run is read).
    "log-secrets": {
        "task": "remediation.check.log_secrets",
        "schedule": 300,
        "kwargs": {"target": "self"},
    },
}
