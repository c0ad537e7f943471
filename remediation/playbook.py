"""The runbooks as data: which finding kind leads to which action, with which params.

Each rule cites the runbook step it automates (files in ../shared/runbooks/). Printed by
`remediation playbook` together with each action's guards and docstring.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from remediation.findings import Finding, Severity
from remediation.registry import ACTION_PREFIX, CHECK_PREFIX
from remediation.settings import get_settings


@dataclass(frozen=True)
class Rule:
    """finding kind -> an action, or (run="check") a follow-up check to look closer."""

    kind: str
    action: str
    params: Callable[[Finding], dict[str, Any]]
    runbook: str
    min_severity: Severity = Severity.WARNING
    run: Literal["act", "check"] = "act"
    when: Callable[[Finding], bool] | None = None  # a further condition on the finding

    def applies(self, finding: Finding) -> bool:
        return (
            finding.kind == self.kind
            and finding.severity.rank >= self.min_severity.rank
            and (self.when is None or self.when(finding))
        )

    @property
    def task_name(self) -> str:
        return (ACTION_PREFIX if self.run == "act" else CHECK_PREFIX) + self.action


def _target(f: Finding) -> dict[str, Any]:
    return {"target": f.target}


def _job_list(f: Finding) -> dict[str, Any]:
    return {"target": f.target, "key": f.subject}


def _dump_file(f: Finding) -> dict[str, Any]:
    return {"target": f.target, "file": f.subject}


def _integration(f: Finding) -> dict[str, Any]:
    return {"target": f.target, "integration": f.subject}


def _state_self(f: Finding) -> dict[str, Any]:
    return {"target": "self"}


def _backoff(direction: str) -> Callable[[Finding], dict[str, Any]]:
    def params(f: Finding) -> dict[str, Any]:
        out: dict[str, Any] = {
            "target": get_settings().backoff.redis_target,
            "direction": direction,
        }
        # Only a ban finding's observed value is a ban rate (a relaxable finding's is the delay).
        if direction == "increase" and isinstance(f.observed, float) and 0 <= f.observed <= 1:
            out["observed_rate"] = f.observed
        return out

    return params


def _headers_target(f: Finding) -> dict[str, Any]:
    return {"target": get_settings().headers.redis_target}


def _rate_limit_target(f: Finding) -> dict[str, Any]:
    return {"target": get_settings().rate_limits.redis_target}


def _proxy_target(f: Finding) -> dict[str, Any]:
    """The Redis holding the proxy pool (an SLO finding's target is Prometheus, not it)."""
    return {"target": get_settings().proxies.redis_target}


def _container(f: Finding) -> dict[str, Any]:
    return {"target": "docker", "container": f.subject}


def _hard_reboot_on(f: Finding) -> bool:
    """The operator opted in to the hard reboot (REMEDIATION_CONTAINERS__HARD_REBOOT)."""
    return get_settings().containers.hard_reboot


def _has_scale_target(f: Finding) -> bool:
    return bool(f.evidence.get("scale_targets"))


def _scale_up(f: Finding) -> dict[str, Any]:
    return {"target": f.evidence["scale_targets"][0], "direction": "up"}


def _scale_down(f: Finding) -> dict[str, Any]:
    return {"target": f.subject, "direction": "down"}


def _compose_target(f: Finding) -> str | None:
    """The compose scale target running the overloaded container's service, if any."""
    for t in get_settings().workers.scale_targets:
        if t.backend == "compose" and (t.project, t.service) == (
            f.evidence.get("project"),
            f.evidence.get("service"),
        ):
            return t.name
    return None


def _celery(f: Finding) -> dict[str, Any]:
    return {"target": "celery"}


def _table(f: Finding) -> dict[str, Any]:
    return {"target": f.target, "tables": [f.evidence["table"]]}


def notify_params(f: Finding) -> dict[str, Any]:
    """A notification about a finding nobody can fix automatically."""
    return {
        "text": f"[{f.severity.value}] {f.check} on {f.resource}: {f.summary or f.kind}",
        "incident": f.fingerprint,
        "kind": f.kind,
        "severity": f.severity.value,
    }


RULES: list[Rule] = [
    Rule(
        "postgres_dead_tuples_high",
        "vacuum_analyze",
        _table,
        "001 Weekly Operations 1. Database Maintenance: VACUUM ANALYZE",
    ),
    Rule(
        "postgres_stats_stale",
        "analyze_tables",
        _table,
        "001 Weekly Operations 1. Database Maintenance: ANALYZE",
    ),
    Rule(
        "postgres_idle_in_transaction",
        "terminate_idle_transactions",
        _target,
        "002 Database Issues 3. Connection Pool: check for connection leaks",
    ),
    Rule(
        "postgres_long_query",
        "cancel_long_queries",
        _target,
        "002 Database Issues 2. Slow Queries; 001 System Overload Response (opt-in)",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "postgres_unreachable",
        "notify",
        notify_params,
        "002 Escalation: database is down: Critical - contact DBA immediately",
        min_severity=Severity.CRITICAL,
    ),
    Rule(
        "postgres_connections_high",
        "notify",
        notify_params,
        "002 Database Issues: connection pool exhaustion; 004 usage > 80 %",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "postgres_pool_exhausted",
        "notify",
        notify_params,
        "002 Escalation: pool exhausted: High - increase pool size",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "postgres_latency_high",
        "notify",
        notify_params,
        "002 Database Issues: high query times",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "postgres_slow_queries_found",
        "notify",
        notify_params,
        "002 Escalation: queries are slow: High; Performance Degradation P95 > 2 s / 5 s",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "postgres_database_growth",
        "notify",
        notify_params,
        "002 Disk Space Issues: check database size",
    ),
    Rule(
        "postgres_backup_stale",
        "backup_database",
        _target,
        "000 4. Database Maintenance: pg_dump backup; 001 Scheduled Maintenance: backup database",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "postgres_backup_unverified",
        "verify_backup",
        _dump_file,
        "001 Monthly Operations 2. Backup Verification: test restoration, validate integrity",
    ),
    Rule(
        "postgres_backup_quarantined",
        "backup_database",
        _target,
        "001 Monthly Operations 2. Backup Verification: a rotten dump is replaced at once",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "postgres_backup_failed",
        "notify",
        notify_params,
        "001 Monthly Operations 2. Backup Verification: a dump that does not restore",
        min_severity=Severity.CRITICAL,
    ),
    Rule(
        "postgres_data_quality_breach",
        "notify",
        notify_params,
        "001 Data Quality Issues: check extraction accuracy (fixes are human: extractors)",
    ),
    Rule(
        "postgres_data_stale",
        "notify",
        notify_params,
        "004 Data Freshness Issues: data age exceeds update frequency",
    ),
    Rule(
        "slo_breach",
        "notify",
        notify_params,
        "002 Performance Degradation P95 > 2 s / 5 s; 004 SLA Violations: success < 95 %, P99",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "prometheus_unreachable",
        "notify",
        notify_params,
        "002 Check error metrics: GET /metrics (the SLO checks are blind without it)",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "prometheus_query_error",
        "notify",
        notify_params,
        "a configured SLO rule cannot run: a blind spot",
    ),
    Rule(
        "http_endpoint_down",
        "notify",
        notify_params,
        "002 System Startup: check health endpoints (curl /health)",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "http_endpoint_unhealthy",
        "notify",
        notify_params,
        "002 Check health: GET /health reports a degraded status",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "http_endpoint_slow",
        "notify",
        notify_params,
        "002 Performance Degradation: slow API response times",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "http_data_stale",
        "notify",
        notify_params,
        "004 Data Freshness Issues: data age exceeds update frequency",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "site_unavailable",
        "notify",
        notify_params,
        "001 High Error Rate Response 3. Check target site availability: notify, no rotation",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "proxy_banned",
        "rotate_proxies",
        _target,
        "000 HTTP 403 Forbidden / CAPTCHA 1. Rotate Proxies",
    ),
    Rule(
        "proxy_banned",
        "tune_backoff",
        _backoff("increase"),
        "000 HTTP 403 Forbidden / CAPTCHA 2. Increase Delays: min_delay in scraping_config.json",
        min_severity=Severity.HIGH,  # the ban rate reached REMEDIATION_BACKOFF__BAN_RATE_THRESHOLD
    ),
    Rule(
        "proxy_banned",
        "regenerate_headers",
        _headers_target,
        "000 HTTP 403 Forbidden / CAPTCHA 3. Browser Fingerprints: regenerate user-agent headers",
    ),
    Rule(
        "proxy_dead",
        "rotate_proxies",
        _target,
        "001 High Error Rate Response: if proxy issues, rotate proxy pool",
    ),
    Rule(
        "proxy_recovered",
        "rotate_proxies",
        _target,
        "001 Weekly 2. Proxy Pool Maintenance: update proxy list (promote recovered proxies)",
        min_severity=Severity.INFO,
    ),
    Rule(
        "proxy_pool_low",
        "notify",
        notify_params,
        "000 Rotate Proxies: verify provider (BrightData/Smartproxy) bandwidth",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "proxy_region_low",
        "notify",
        notify_params,
        "001 Weekly 2. Proxy Pool Maintenance: verify geographic distribution",
    ),
    Rule(
        "proxy_config_invalid",
        "notify",
        notify_params,
        "000 Rotate Proxies: check PROXY_LIST env var",
    ),
    Rule(
        "error_rate_high",
        "proxy_pool_health",
        _proxy_target,
        "001 High Error Rate Response 2. Verify proxy status (check_proxy_health.py)",
        run="check",
    ),
    Rule(
        "error_rate_high",
        "rotate_proxies",
        _proxy_target,
        "001 High Error Rate Response, Resolution 1. If proxy issues: rotate proxy pool",
    ),
    Rule(
        "error_rate_high",
        "tune_backoff",
        _backoff("increase"),
        "001 High Error Rate Response, Resolution 2. If rate limiting: adjust request rates",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "scrape_ban_rate_high",
        "tune_backoff",
        _backoff("increase"),
        "000 HTTP 403 / CAPTCHA 2. Increase Delays: min_delay in scraping_config.json",
    ),
    Rule(
        "scrape_ban_rate_high",
        "notify",
        notify_params,
        "000 Increase Delays: min_delay at its cap, pacing cannot help any more",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "scrape_backoff_relaxable",
        "tune_backoff",
        _backoff("decrease"),
        "000 Increase Delays, eased back step by step after a sustained healthy period",
        min_severity=Severity.INFO,
    ),
    Rule(
        "api_rate_limit_high",
        "throttle_sync",
        _integration,
        "000 Shopify 429: SHOPIFY_SYNC_INTERVAL; 004 Rate Limit Exhaustion: usage > 80 %",
    ),
    Rule(
        "api_sync_throttle_expired",
        "restore_sync",
        _integration,
        "004 Rate Limit Exhaustion: reduce update frequency temporarily (restored)",
        min_severity=Severity.INFO,
    ),
    Rule(
        "api_rate_limit_unreachable",
        "notify",
        notify_params,
        "004 Rate Limit Exhaustion: check the API key and the endpoint",
    ),
    Rule(
        "api_quota_exhausted",
        "switch_fallback_model",
        _target,
        "000 OpenAI 429 / insufficient quota: switch to a fallback model temporarily",
    ),
    Rule(
        "api_quota_exhausted",
        "notify",
        notify_params,
        "000 OpenAI: check billing status on the dashboard",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "llm_quota_exhausted",
        "switch_fallback_model",
        _rate_limit_target,
        "000 OpenAI 429 / insufficient quota: switch to a fallback model temporarily",
    ),
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
        _state_self,
        "001 System Overload 2. Reduce load: pause non-critical scraping (a consumer came back)",
    ),
    Rule(
        "container_down",
        "restart_container",
        _container,
        "000 Docker Management: containers crashed: docker compose restart [service_name]",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "container_unhealthy",
        "restart_container",
        _container,
        "000 Docker Management: containers unresponsive: restart the service",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "container_given_up",
        "recreate_service",
        _container,
        "000 Docker Management 4. Hard reboot (if stuck): docker compose down && docker compose"
        " up -d (opt-in: REMEDIATION_CONTAINERS__HARD_REBOOT)",
        min_severity=Severity.HIGH,
        when=_hard_reboot_on,
    ),
    Rule(
        "docker_unreachable",
        "notify",
        notify_params,
        "001 Daily 1. System Health Check: docker-compose ps (the engine does not answer)",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "redis_unreachable",
        "notify",
        notify_params,
        "002 Redis/Cache Issues: connection issues (Redis down)",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "redis_memory_high",
        "notify",
        notify_params,
        "002 Redis/Cache Issues: check Redis memory usage (a LRU cache may sit near maxmemory)",
    ),
    Rule(
        "redis_cache_miss_high",
        "notify",
        notify_params,
        "002 Escalation: cache misses > 50 %: High - investigate",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "redis_evictions",
        "notify",
        notify_params,
        "002 Redis/Cache Issues: review caching strategies (keys evicted)",
    ),
    Rule(
        "host_disk_full",
        "cleanup_disk",
        _state_self,
        "002 Disk Space Issues: clean up old log files, remove temporary files",
    ),
    Rule(
        "host_disk_full",
        "notify",
        notify_params,
        "002 Escalation: disk > 95 %: Critical - immediate cleanup",
        min_severity=Severity.CRITICAL,
    ),
    Rule(
        "host_inodes_full",
        "cleanup_disk",
        _state_self,
        "002 Disk Space Issues: remove temporary files (inodes)",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "host_memory_high",
        "notify",
        notify_params,
        "002 Escalation: memory > 90 %: High - investigate immediately",
        min_severity=Severity.HIGH,
    ),
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
        _scale_up,
        "004 Worker Queue Backlog: pending jobs > 50: scale workers; 002 queue depth > 1000",
        when=_has_scale_target,
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
        _scale_down,
        "004 Worker Queue Backlog: scaled back after the backlog drains (stabilization window)",
        min_severity=Severity.INFO,
    ),
    Rule(
        "celery_pool_at_max",
        "pause_low_priority",
        _state_self,
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
        lambda f: {"target": _compose_target(f) or "", "direction": "up"},
        "001 System Overload Response 1. Scale resources: docker-compose up -d --scale",
        when=lambda f: _compose_target(f) is not None,
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
        _celery,
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
    Rule(
        "redis_job_queue_duplicates",
        "dedupe_job_queue",
        _job_list,
        "000 Redis Queue Management: job queue processing duplicate jobs",
    ),
    Rule(
        "redis_job_queue_stale",
        "dead_letter_stale_jobs",
        _job_list,
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


def rules_for(finding: Finding) -> list[Rule]:
    return [rule for rule in RULES if rule.applies(finding)]
