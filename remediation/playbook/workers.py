"""Worker and container rules: pauses, containers, Celery pools, the job queue."""

from __future__ import annotations

from remediation.findings import Severity
from remediation.playbook.rule import (
    Rule,
    celery,
    compose_target,
    container,
    hard_reboot_on,
    has_scale_target,
    job_list,
    notify_params,
    scale_down,
    scale_up,
    state_self,
)

PAUSES: list[Rule] = [
    Rule(
        "celery_queue_pause_expired",
        "resume_low_priority",
        lambda f: {"target": "self", "queue": f.subject},
        "001 System Overload 2. Reduce load: the pause of non-critical work is temporary",
        min_severity=Severity.INFO,
    ),
    Rule(
        "celery_queue_pause_incomplete",
        "pause_low_priority",
        state_self,
        "001 System Overload 2. Reduce load: pause non-critical scraping (a consumer came back)",
    ),
]
"""The temporary pause of non-critical work."""


CONTAINERS: list[Rule] = [
    Rule(
        "container_down",
        "restart_container",
        container,
        "000 Docker Management: containers crashed: docker compose restart [service_name]",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "container_unhealthy",
        "restart_container",
        container,
        "000 Docker Management: containers unresponsive: restart the service",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "container_given_up",
        "recreate_service",
        container,
        "000 Docker Management 4. Hard reboot (if stuck): docker compose down && docker compose"
        " up -d (opt-in: REMEDIATION_CONTAINERS__HARD_REBOOT)",
        min_severity=Severity.HIGH,
        when=hard_reboot_on,
    ),
    Rule(
        "docker_unreachable",
        "notify",
        notify_params,
        "001 Daily 1. System Health Check: docker-compose ps (the engine does not answer)",
        min_severity=Severity.HIGH,
    ),
]
"""Docker containers of the compose project."""


CELERY: list[Rule] = [
    Rule(
        "celery_workers_down",
        "notify",
        notify_params,
        "002 Escalation: no workers running: High - start workers immediately",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "celery_broker_unreachable",
        "notify",
        notify_params,
        "002 Celery Worker Issues: verify Redis connectivity",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "celery_queue_backlog",
        "scale_workers",
        scale_up,
        "004 Worker Queue Backlog: pending jobs > 50: scale workers; 002 queue depth > 1000",
        when=has_scale_target,
    ),
    Rule(
        "celery_queue_backlog",
        "notify",
        notify_params,
        "002 Escalation: queue depth > 1000: High - scale workers",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "celery_pool_oversized",
        "scale_workers",
        scale_down,
        "004 Worker Queue Backlog: scaled back after the backlog drains (stabilization window)",
        min_severity=Severity.INFO,
    ),
    Rule(
        "celery_pool_at_max",
        "pause_low_priority",
        state_self,
        "001 System Overload Response 2. Reduce load: pause non-critical scraping (pool at max)",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "celery_pool_at_max",
        "notify",
        notify_params,
        "001 System Overload Response: scaled to the maximum; capacity needs a human",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "container_overloaded",
        "scale_workers",
        lambda f: {"target": compose_target(f) or "", "direction": "up"},
        "001 System Overload Response 1. Scale resources: docker-compose up -d --scale",
        when=lambda f: compose_target(f) is not None,
    ),
    Rule(
        "container_overloaded",
        "notify",
        notify_params,
        "001 System Overload Response: check resource usage (docker stats)",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "celery_queue_growing",
        "notify",
        notify_params,
        "002 Celery Worker Issues: job queue backing up",
    ),
    Rule(
        "celery_task_stuck",
        "revoke_stuck_tasks",
        celery,
        "002 Celery Worker Issues: check for stuck jobs (opt-in, capped)",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "celery_task_stuck",
        "notify",
        notify_params,
        "002 Celery Worker Issues: check for stuck jobs",
        min_severity=Severity.HIGH,
    ),
]
"""Celery workers, queues and pools of the monitored application."""


JOB_QUEUE: list[Rule] = [
    Rule(
        "redis_job_queue_duplicates",
        "dedupe_job_queue",
        job_list,
        "000 Redis Queue Management: job queue processing duplicate jobs",
    ),
    Rule(
        "redis_job_queue_stale",
        "dead_letter_stale_jobs",
        job_list,
        "000 Redis Queue Management: job queue is stuck (instead of FLUSHALL); "
        "004 Worker Queue Backlog: clear stale jobs",
    ),
    Rule(
        "redis_job_queue_backlog",
        "notify",
        notify_params,
        "004 Worker Queue Backlog: pending jobs > 50; 002 Celery: queue depth > 1000",
        min_severity=Severity.HIGH,
    ),
]
"""The application's Redis job list."""
