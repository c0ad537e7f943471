"""The one place configuration is read: environment variables prefixed REMEDIATION_.

Nested settings use ``__`` (``REMEDIATION_BREAKER__MINIMUM_CALLS=4``); mappings can be
given as JSON (``REMEDIATION_POSTGRES_TARGETS='{"app": "postgresql://..."}'``) or one
key at a time (``REMEDIATION_POSTGRES_TARGETS__APP=postgresql://...``). Anything that can
hold a password is a ``SecretStr``. ``.env.example`` lists every variable.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from remediation.errors import ConfigError, TargetError

ENV_PREFIX = "REMEDIATION_"
NESTED = "__"
MIN_SIGNING_KEY = 32
"""Characters a signing key needs at least (`secrets.token_hex(32)` gives 64)."""
# Variables the test-suite and set-up scripts use; they are not settings.
_NOT_SETTINGS = ("REMEDIATION_TEST_", "REMEDIATION_BENCH_", "REMEDIATION_CHAOS_")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BreakerSettings(_Section):
    """Circuit breaker defaults (resilience4j semantics), per action + target."""

    failure_rate_threshold: float = Field(0.5, gt=0, le=1, description="failed share that opens")
    minimum_calls: int = Field(4, ge=1, le=1000, description="calls in window before rate counts")
    window_seconds: int = Field(900, ge=1, description="sliding window of recorded calls")
    wait_seconds: int = Field(300, ge=1, description="time open before half-open trials")
    half_open_permits: int = Field(1, ge=1, le=100, description="concurrent half-open trials")
    permit_lease_seconds: int = Field(900, ge=1, description="a trial permit expires after this")


class BlastCap(_Section):
    """At most ``units`` (containers, workers, keys, sessions...) per ``window_seconds``."""

    units: int = Field(ge=0, le=10_000_000)
    window_seconds: int = Field(3600, ge=1, le=7 * 86400)


# Blast-radius caps across all workers (issue 6): what one action may touch per window.
DEFAULT_BLAST_RADIUS = {
    "restart_container": BlastCap(units=5, window_seconds=600),
    "scale_workers": BlastCap(units=4, window_seconds=600),
    "recreate_service": BlastCap(units=16, window_seconds=3600),
    "flush_cache": BlastCap(units=200_000, window_seconds=3600),
    "terminate_idle_transactions": BlastCap(units=20, window_seconds=600),
    "cancel_long_queries": BlastCap(units=10, window_seconds=600),
    "revoke_stuck_tasks": BlastCap(units=20, window_seconds=600),
    "dead_letter_stale_jobs": BlastCap(units=50_000, window_seconds=3600),
    "dedupe_job_queue": BlastCap(units=50_000, window_seconds=3600),
}


class GuardSettings(_Section):
    """Guards that stand between a finding and a side effect."""

    dry_run: bool = Field(False, description="global dry-run: decide and audit, never act")
    dry_run_actions: list[str] = Field(default_factory=list, description="per-action dry-run")
    lock_ttl_seconds: int = Field(900, ge=1, description="per-target lock lease")
    incident_ttl_seconds: int = Field(3600, ge=60, description="an unresolved incident lives this")
    cooldown_overrides: dict[str, int] = Field(default_factory=dict)
    budget_overrides: dict[str, int] = Field(default_factory=dict)
    flap_max_runs: int = Field(6, ge=2, le=1000, description="runs on one target that count as")
    flap_window_minutes: int = Field(30, ge=1, le=1440, description="...flapping within this")
    flap_suspend_minutes: int = Field(120, ge=1, le=10080, description="suspension once flapping")
    flap_overrides: dict[str, int] = Field(default_factory=dict, description="max runs per action")
    consecutive_runs: int = Field(1, ge=1, le=100, description="runs a condition must persist")
    consecutive_overrides: dict[str, int] = Field(default_factory=dict, description="per check")
    blast_radius: dict[str, BlastCap] = Field(
        default_factory=lambda: dict(DEFAULT_BLAST_RADIUS),
        description="units per action per window, across all workers",
    )
    max_kwargs_bytes: int = Field(
        32768, ge=1024, le=16 * 1024 * 1024, description="a task's kwargs, serialized, at most"
    )


class AuditSettings(_Section):
    """Where audit rows wait while PostgreSQL does not answer (replayed in order later)."""

    spool_dir: str = Field(".data/audit-spool", min_length=1, description="local, fsync'd")
    spool_max_mb: int = Field(512, ge=1, le=1_000_000, description="refuse to act past this")


class MetricsSettings(_Section):
    """The worker's own Prometheus endpoint (prometheus_client multiprocess mode)."""

    enabled: bool = True
    host: str = Field("127.0.0.1", min_length=1)
    port: int = Field(9808, ge=0, le=65535, description="0 = pick a free port")
    multiproc_dir: str = Field(".data/metrics", min_length=1, description="wiped at start")


class NotifySettings(_Section):
    """Where notifications go (Slack-compatible incoming webhook)."""

    webhook_url: SecretStr | None = None
    timeout_seconds: float = Field(5.0, gt=0, le=60)
    window_seconds: int = Field(3600, ge=1, description="same incident not sent twice within")


class JobQueueSettings(_Section):
    """Runbook 000 "Redis queue management": the application's job list."""

    key: str = Field("job_queue", min_length=1, max_length=512)
    keys: list[str] = Field(
        default_factory=list,
        max_length=10_000,
        description="more job lists the actions may touch; 'prefix*' entries match a prefix",
    )
    dead_letter_key: str = Field("job_queue:dead_letter", min_length=1)
    id_field: str | None = Field(None, description="JSON field naming a job; None = whole payload")
    enqueued_at_field: str = Field("enqueued_at", description="JSON field, epoch seconds")
    max_age_seconds: int = Field(3600, ge=1, description="older jobs go to the dead-letter list")
    backlog_warning: int = Field(50, ge=1, description="runbook 004: pending jobs > 50")
    backlog_high: int = Field(1000, ge=1, description="runbook 002: queue depth > 1000")
    scan_limit: int = Field(10_000, ge=1, le=1_000_000, description="jobs examined per run")
    max_changes_per_run: int = Field(1000, ge=1, description="jobs removed or moved per run")


class CelerySettings(_Section):
    """Worker safety defaults."""

    soft_time_limit: int = Field(300, ge=1)
    time_limit: int = Field(360, ge=2)
    max_retries_on_worker_lost: int = Field(3, ge=0, le=20)
    result_expires: int = Field(86400, ge=60)
    concurrency: int = Field(2, ge=1, le=64)
    redbeat_lock_timeout: int = Field(60, ge=2, description="standby beat takes over after this")
    beat_max_loop_interval: int = Field(5, ge=1)


class DataQualityRule(_Section):
    """A named SQL check: the query returns rows of (subject, value); a value past the
    threshold in the given direction is a finding. Read-only: it runs in a read-only
    transaction with a statement timeout."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    sql: str = Field(min_length=1)
    threshold: float
    direction: Literal["below", "above"] = "below"
    severity: Literal["info", "warning", "high", "critical"] = "high"
    description: str = ""


class FreshnessRule(_Section):
    """Runbook 004 data freshness: the newest value of a timestamp column must be younger
    than max_age_seconds."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    table: str = Field(min_length=1, description="'schema.table' or 'table' (public)")
    column: str = Field(min_length=1, max_length=63)
    max_age_seconds: int = Field(ge=1)
    severity: Literal["info", "warning", "high", "critical"] = "high"


# Runbook 001 "Data Quality Issues" and "Daily Operations 3. Data Quality Check".
DEFAULT_DATA_QUALITY = [
    DataQualityRule(
        name="extraction_confidence",
        sql=(
            "SELECT mu.domain, avg(ph.extraction_confidence) FROM price_history ph"
            " JOIN monitored_urls mu ON ph.url_id = mu.id"
            " WHERE ph.checked_at > now() - interval '1 hour' GROUP BY mu.domain"
        ),
        threshold=0.8,
        direction="below",
        severity="high",
        description="runbook 001: hourly extraction confidence per domain below 0.8",
    ),
    DataQualityRule(
        name="missing_price_share",
        sql=(
            "SELECT 'price_history', (count(*) FILTER (WHERE price IS NULL))::float8"
            " / nullif(count(*), 0) FROM price_history"
            " WHERE checked_at > now() - interval '24 hours'"
        ),
        threshold=0.2,
        direction="above",
        severity="warning",
        description="runbook 001: share of rows in the last 24 h with a null price",
    ),
]


class PostgresSettings(_Section):
    """Thresholds of the PostgreSQL checks and bounds of the session actions."""

    connect_timeout_seconds: int = Field(5, ge=1, le=120)
    latency_warning_ms: float = Field(100, gt=0, description="round trip of SELECT 1")
    latency_high_ms: float = Field(1000, gt=0)
    connections_warning_ratio: float = Field(0.8, gt=0, le=1, description="runbook 004: > 80 %")
    connections_high_ratio: float = Field(0.9, gt=0, le=1)
    connections_critical_ratio: float = Field(0.95, gt=0, le=1, description="pool exhaustion")
    pool_size: int | None = Field(None, ge=1, description="the application's pool size")
    pool_application_name: str | None = Field(None, description="application_name of the pool")
    long_query_seconds: int = Field(300, ge=1, description="active queries running longer")
    idle_in_transaction_seconds: int = Field(600, ge=1, description="idle in transaction longer")
    session_allow_roles: list[str] = Field(default_factory=list, description="may be ended")
    session_allow_applications: list[str] = Field(default_factory=list, description="may be ended")
    max_sessions_per_run: int = Field(5, ge=1, le=100, description="terminations/cancels per run")
    cancel_long_queries: bool = Field(False, description="opt-in: cancel_long_queries may act")
    stale_stats_days: float = Field(7, gt=0, description="last (auto)analyze older than this")
    size_growth_warning_percent: float = Field(20, gt=0, description="growth since last run")
    slow_query_warning_ms: float = Field(1000, gt=0, description="runbook 002: P95 > 1 s medium")
    slow_query_high_ms: float = Field(2000, gt=0, description="runbook 002: P95 > 2 s high")
    slow_query_critical_ms: float = Field(5000, gt=0, description="runbook 002: P95 > 5 s critical")
    data_quality: list[DataQualityRule] = Field(default_factory=lambda: list(DEFAULT_DATA_QUALITY))
    freshness: list[FreshnessRule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _bands_in_order(self) -> PostgresSettings:
        for name, bands in (
            ("connections", (self.connections_warning_ratio, self.connections_high_ratio,
                             self.connections_critical_ratio)),
            ("latency", (self.latency_warning_ms, self.latency_high_ms)),
            ("slow_query", (self.slow_query_warning_ms, self.slow_query_high_ms,
                            self.slow_query_critical_ms)),
        ):  # fmt: skip
            if list(bands) != sorted(bands):
                raise ValueError(f"{name} bands must rise from warning to high to critical")
        if (self.pool_size is None) != (self.pool_application_name is None):
            raise ValueError("pool_size and pool_application_name go together")
        return self


class BackupSettings(_Section):
    """Backups (runbooks 000, 001, 003): where, how often, how many to keep."""

    dir: str = Field(".data/backups", description="dumps, manifests and file archives")
    interval_hours: float = Field(24, gt=0, description="newest verified backup must be younger")
    keep_daily: int = Field(7, ge=1, le=365)
    keep_weekly: int = Field(4, ge=0, le=520)
    keep_monthly: int = Field(6, ge=0, le=240)
    timeout_seconds: int = Field(
        3600,
        ge=10,
        le=6600,
        description="pg_dump / pg_restore time limit (under the 2 h task limit)",
    )
    file_paths: list[str] = Field(default_factory=list, description="backup_files: what to archive")
    keep_file_archives: int = Field(14, ge=1, le=1000)


class ProxySettings(_Section):
    """The proxy pool (runbook 000 "Rotate Proxies", runbook 001 "Proxy Pool Maintenance")."""

    proxy_list: list[str] = Field(
        default_factory=list, description="PROXY_LIST entries: 'URL [REGION]', one per item"
    )
    file: str | None = Field(None, description="a file of entries, one per line, # comments")
    redis_target: str = Field("self", description="the Redis holding the pool")
    active_key: str = Field("proxies:active", min_length=1, description="set scrapers read")
    test_url: str | None = Field(None, description="fetched through each proxy by the check")
    timeout_seconds: float = Field(5.0, gt=0, le=60, description="per request")
    workers: int = Field(64, ge=1, le=512, description="concurrent proxy tests")
    slow_ms: float = Field(2000, gt=0, description="slower than this counts as degraded")
    captcha_markers: list[str] = Field(
        default_factory=lambda: ["captcha", "cf-chl", "are you a robot", "unusual traffic"]
    )
    min_active: int = Field(2, ge=0, description="rotation never shrinks the active set below")
    quarantine_base_seconds: int = Field(60, ge=1, description="first back-off; doubles")
    quarantine_max_seconds: int = Field(3600, ge=1)
    dead_after_failures: int = Field(5, ge=1, description="consecutive failures -> dead")
    region_targets: dict[str, float] = Field(
        default_factory=dict, description="minimum healthy share per region, e.g. {'us': 0.3}"
    )


class BackoffSettings(_Section):
    """Request pacing of the scrapers (runbook 000 "Increase Delays": min_delay), AIMD."""

    redis_target: str = Field("self")
    config_key: str = Field("scraping:config", min_length=1, description="hash scrapers read")
    mirror_file: str | None = Field(None, description="also written as JSON (scraping_config.json)")
    floor_seconds: float = Field(1.0, gt=0, description="min_delay never goes below")
    cap_seconds: float = Field(60.0, gt=0, description="min_delay never goes above")
    increase_factor: float = Field(2.0, gt=1, le=10, description="multiplicative increase")
    decrease_step_seconds: float = Field(0.5, gt=0, description="additive decrease")
    ban_rate_threshold: float = Field(0.1, gt=0, le=1, description="403/429 share that backs off")
    healthy_seconds: int = Field(600, ge=1, description="sustained health before easing off")
    default_concurrency: int = Field(4, ge=1, le=1000)


HeaderBrowser = Literal["chrome", "edge", "firefox", "safari"]
HeaderOs = Literal["windows", "macos", "linux", "android", "ios"]
HEADER_BROWSERS: list[HeaderBrowser] = ["chrome", "edge", "firefox", "safari"]
"""Browser families regenerate_headers can publish (browserforge's data)."""
DESKTOP_OS: list[HeaderOs] = ["windows", "macos", "linux"]
"""The default: android and ios make sites serve their mobile pages."""


class HeadersSettings(_Section):
    """Browser headers the scrapers send (runbook 000 "Browser Fingerprints: regenerate
    user-agent headers"), published by regenerate_headers."""

    enabled: bool = Field(True, description="regenerate_headers may publish")
    redis_target: str = Field("self", description="the Redis the scrapers read the headers from")
    key: str = Field(
        "scraping:headers", min_length=1, max_length=512, description="hash scrapers read"
    )
    json_file: str | None = Field(None, description="also written as JSON (scraping_config.json)")
    browsers: list[HeaderBrowser] = Field(
        default_factory=lambda: list(HEADER_BROWSERS),
        min_length=1,
        max_length=4,
        description="browser families allowed",
    )
    os: list[HeaderOs] = Field(
        default_factory=lambda: list(DESKTOP_OS),
        min_length=1,
        max_length=5,
        description="operating systems allowed (android, ios: mobile pages)",
    )
    locales: list[str] = Field(
        default_factory=lambda: ["en-US"],
        min_length=1,
        max_length=10,
        description="Accept-Language, most preferred first",
    )

    @field_validator("locales")
    @classmethod
    def _locales(cls, value: list[str]) -> list[str]:
        for locale in value:
            if not re.fullmatch(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})?", locale):
                raise ValueError(f"{locale!r} is not a language tag like 'en-US' or 'de'")
        return value


class RateLimitEndpoint(_Section):
    """An API whose rate-limit headers are read (generic X-RateLimit-*, Shopify's n/40)."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    url: str = Field(min_length=1)
    headers: dict[str, SecretStr] = Field(default_factory=dict, description="e.g. API keys")


class RateLimitSettings(_Section):
    """Rate limits and quotas (runbook 000 Shopify 429 and OpenAI quota, runbook 004 > 80 %)."""

    endpoints: list[RateLimitEndpoint] = Field(default_factory=list)
    usage_threshold: float = Field(0.8, gt=0, le=1, description="runbook 004: usage > 80 %")
    timeout_seconds: float = Field(5.0, gt=0, le=60)
    redis_target: str = Field("self")
    sync_interval_key: str = Field("sync:interval", description="hash: integration -> seconds")
    default_sync_interval_seconds: int = Field(300, ge=1, description="runbook 000: 5 min")
    throttle_factor: float = Field(2.0, gt=1, le=20, description="sync interval multiplied by")
    throttle_seconds: int = Field(3600, ge=60, description="restored after this")
    fallback_model: str = Field("gpt-3.5-turbo", min_length=1, description="runbook 000")
    fallback_key: str = Field("llm:fallback_model", description="flag the application reads")
    fallback_seconds: int = Field(3600, ge=60, description="the flag expires: reverts itself")
    low_priority_queue: str = Field("low_priority", min_length=1, description="not 'celery'")
    pause_seconds: int = Field(900, ge=60, description="resume after this")

    @field_validator("low_priority_queue")
    @classmethod
    def _not_our_own_queue(cls, value: str) -> str:
        if value == "celery":
            raise ValueError(
                "'celery' is the remediation worker's own queue: nothing could resume it"
            )
        return value


class PrometheusRule(_Section):
    """A PromQL expression with warning/high/critical bands; each result series is checked."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    query: str = Field(min_length=1)
    kind: str = Field("slo_breach", pattern=r"^[a-z][a-z0-9_]*$", description="finding kind")
    warning: float | None = None
    high: float | None = None
    critical: float | None = None
    direction: Literal["above", "below"] = "above"
    description: str = ""

    @model_validator(mode="after")
    def _bands(self) -> PrometheusRule:
        bands = [b for b in (self.warning, self.high, self.critical) if b is not None]
        if not bands:
            raise ValueError(f"rule {self.name}: set at least one of warning, high, critical")
        if bands != sorted(bands, reverse=self.direction == "below"):
            worse = "rise" if self.direction == "above" else "fall"
            raise ValueError(f"rule {self.name}: bands must {worse} from warning to critical")
        return self


DEFAULT_PROMETHEUS_RULES = [
    PrometheusRule(
        name="error_rate",
        kind="error_rate_high",
        query="sum(rate(http_requests_total{status=~'5..'}[5m])) / sum(rate(http_requests_total[5m]))",
        warning=0.05,
        high=0.10,
        critical=0.20,
        description="runbook 002 High Error Rates: > 5 % medium, > 10 % high, > 20 % critical",
    ),
    PrometheusRule(
        name="latency_p95",
        kind="slo_breach",
        query="histogram_quantile(0.95, sum(rate(http_request_duration_seconds_bucket[5m])) by (le))",
        warning=1,
        high=2,
        critical=5,
        description="runbook 002 Performance Degradation: P95 > 1 s / 2 s / 5 s",
    ),
    PrometheusRule(
        name="scraper_success_rate",
        kind="error_rate_high",
        direction="below",
        query="sum(rate(scraper_requests_total{outcome='success'}[15m])) / sum(rate(scraper_requests_total[15m]))",
        high=0.80,
        critical=0.50,
        description="runbook 002 Scraper Failures: success < 80 % high, < 50 % critical",
    ),
    PrometheusRule(
        name="sla_success_rate",
        kind="slo_breach",
        direction="below",
        query="sum(rate(source_requests_total{outcome='success'}[15m])) by (source) / sum(rate(source_requests_total[15m])) by (source)",
        high=0.95,
        description="runbook 004 SLA Violations: success rate below 95 %",
    ),
    PrometheusRule(
        name="latency_p99",
        kind="slo_breach",
        query="histogram_quantile(0.99, sum(rate(source_request_duration_seconds_bucket[5m])) by (le, source))",
        high=5,
        description="runbook 004 SLA Violations: P99 latency over threshold",
    ),
    PrometheusRule(
        name="scraper_errors",
        kind="error_rate_high",
        query="sum(rate(scraper_errors_total[1h]))",
        warning=0.1,
        description="runbook 001 Daily health check: rate(scraper_errors_total[1h]) (errors/s)",
    ),
    PrometheusRule(
        name="llm_quota_errors",
        kind="llm_quota_exhausted",
        query="sum(increase(llm_errors_total{reason=~'rate_limited|insufficient_quota'}[10m]))",
        high=5,
        description="runbook 000 OpenAI API 429 / insufficient quota",
    ),
]


class PrometheusSettings(_Section):
    """Where Prometheus answers and which SLO rules are checked."""

    url: str | None = Field(None, description="e.g. http://127.0.0.1:9090; unset = not checked")
    timeout_seconds: float = Field(5.0, gt=0, le=60)
    rules: list[PrometheusRule] = Field(default_factory=lambda: list(DEFAULT_PROMETHEUS_RULES))

    @field_validator("rules")
    @classmethod
    def _unique(cls, rules: list[PrometheusRule]) -> list[PrometheusRule]:
        _unique_names(r.name for r in rules)
        return rules


class HttpEndpoint(_Section):
    """A health endpoint or target site (runbook 002 `GET /health`, 001 verify sites)."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    url: str = Field(min_length=1)
    kind: Literal["health", "site"] = "health"
    expect_status: int = Field(200, ge=100, le=599)
    json_status_field: str | None = Field(None, description="e.g. 'status'; must be ok/healthy/up")
    freshness_field: str | None = Field(None, description="JSON field with an epoch or ISO time")
    max_age_seconds: int | None = Field(None, ge=1)
    latency_warning_ms: float = Field(1000, gt=0)
    latency_high_ms: float = Field(2000, gt=0)
    headers: dict[str, SecretStr] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> HttpEndpoint:
        if (self.freshness_field is None) != (self.max_age_seconds is None):
            raise ValueError(
                f"endpoint {self.name}: freshness_field and max_age_seconds go together"
            )
        if self.latency_warning_ms > self.latency_high_ms:
            raise ValueError(f"endpoint {self.name}: latency_warning_ms above latency_high_ms")
        return self


class HttpSettings(_Section):
    """Health endpoints and target sites checked by http_endpoints."""

    endpoints: list[HttpEndpoint] = Field(default_factory=list)

    @field_validator("endpoints")
    @classmethod
    def _unique(cls, endpoints: list[HttpEndpoint]) -> list[HttpEndpoint]:
        _unique_names(e.name for e in endpoints)
        return endpoints

    timeout_seconds: float = Field(5.0, gt=0, le=60)
    workers: int = Field(16, ge=1, le=256)


class ScaleTarget(_Section):
    """A pool of workers scale_workers may resize, within bounds (runbook 004 / 002)."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    backend: Literal["celery", "compose"] = "celery"
    queues: list[str] = Field(default_factory=lambda: ["celery"], min_length=1)
    min: int = Field(1, ge=0, le=256)
    max: int = Field(4, ge=1, le=256)
    step: int = Field(1, ge=1, le=32)
    worker: str | None = Field(None, description="celery: worker hostname; None = all")
    project: str | None = Field(None, description="compose: com.docker.compose.project")
    service: str | None = Field(None, description="compose: com.docker.compose.service")

    @model_validator(mode="after")
    def _bounds(self) -> ScaleTarget:
        if self.min > self.max:
            raise ValueError(f"scale target {self.name}: min above max")
        if self.backend == "compose" and not (self.project and self.service):
            raise ValueError(f"scale target {self.name}: compose needs project and service")
        return self


class WorkersSettings(_Section):
    """Celery workers and queues of the monitored application (runbooks 002, 004)."""

    broker_url: SecretStr | None = Field(None, description="the app's broker; unset = ours")
    queues: list[str] = Field(default_factory=lambda: ["celery"], min_length=1)
    backlog_warning: int = Field(50, ge=1, description="runbook 004: pending jobs > 50")
    backlog_high: int = Field(1000, ge=1, description="runbook 002: queue depth > 1000")
    growth_warning_per_minute: float = Field(10, gt=0, description="backlog growth rate")
    expected_seconds: dict[str, float] = Field(default_factory=dict, description="per task")
    default_expected_seconds: float = Field(300, gt=0)
    stuck_factor: float = Field(3, ge=1, description="active longer than factor x expected")
    revoke_stuck: bool = Field(False, description="opt-in: revoke_stuck_tasks may act")
    max_revokes_per_run: int = Field(5, ge=1, le=100)
    scale_targets: list[ScaleTarget] = Field(default_factory=list)
    scale_down_stabilization_seconds: int = Field(300, ge=0, description="Kubernetes HPA: 300")


class ContainerSettings(_Section):
    """Docker containers of a compose project (runbook 000 Docker management, 001)."""

    docker_url: str = Field("unix:///var/run/docker.sock")
    project: str | None = Field(None, description="compose project watched; unset = none")
    cpu_high_percent: float = Field(90, gt=0, le=10_000)
    memory_high_percent: float = Field(90, gt=0, le=100)
    restart_backoff_base_seconds: int = Field(10, ge=1, description="CrashLoopBackOff: 10 s")
    restart_backoff_max_seconds: int = Field(300, ge=1, description="doubling up to 5 min")
    flap_max_restarts: int = Field(5, ge=1, description="restarts within the window, then stop")
    flap_window_seconds: int = Field(600, ge=1)
    hard_reboot: bool = Field(
        False, description="recreate_service may recreate a service restarts gave up on"
    )
    hard_reboot_scope: Literal["service", "project"] = Field(
        "service", description="what a hard reboot recreates: the one service, or every one"
    )
    hard_reboot_wait_seconds: int = Field(
        60, ge=1, le=600, description="how long recreated containers get to run (and be healthy)"
    )


class CacheSettings(_Section):
    """Redis as a cache (runbooks 002 "Redis/Cache Issues", 003 "Clear Cache")."""

    latency_warning_ms: float = Field(50, gt=0)
    memory_warning_ratio: float = Field(0.8, gt=0, le=1, description="used / maxmemory")
    memory_high_ratio: float = Field(0.9, gt=0, le=1)
    miss_ratio_high: float = Field(0.5, gt=0, le=1, description="runbook 002: misses > 50 %")
    min_lookups: int = Field(1000, ge=1, description="hits + misses before the ratio counts")
    flush_patterns: list[str] = Field(
        default_factory=list, description="keys flush_cache may delete"
    )
    flush_batch: int = Field(500, ge=1, le=10_000)
    flush_max_keys_per_run: int = Field(100_000, ge=1)


class HostSettings(_Section):
    """Disk and memory of the host the worker runs on (runbook 002)."""

    mounts: list[str] = Field(default_factory=lambda: ["/"])
    disk_warning_percent: float = Field(80, gt=0, le=100, description="runbook 002: > 80 % medium")
    disk_high_percent: float = Field(90, gt=0, le=100, description="> 90 % high")
    disk_critical_percent: float = Field(95, gt=0, le=100, description="> 95 % critical")
    memory_high_percent: float = Field(90, gt=0, le=100, description="runbook 002: > 90 % high")
    cleanup_dirs: list[str] = Field(default_factory=list, description="cleanup_disk may touch")
    cleanup_patterns: list[str] = Field(
        default_factory=lambda: ["*.log", "*.log.*", "*.tmp", "*.gz"]
    )
    cleanup_retention_days: float = Field(7, gt=0)
    cleanup_mode: Literal["delete", "gzip"] = "delete"
    cleanup_max_bytes_per_run: int = Field(1 << 30, ge=1)


class VerifySettings(_Section):
    """How an action's effect is verified: re-run the check, bounded."""

    attempts: int = Field(5, ge=1, le=30)
    delay_seconds: float = Field(1.0, ge=0, le=60)


class Settings(BaseSettings):
    """Everything the worker, beat and CLI read. Validated once, at start."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=NESTED,
        env_file=".env",
        extra="ignore",
        frozen=True,
    )

    broker_url: SecretStr = SecretStr("redis://127.0.0.1:6379/1")
    result_backend: SecretStr = SecretStr("redis://127.0.0.1:6379/2")
    state_redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    audit_dsn: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:5432/remediation")
    signing_key: SecretStr | None = Field(
        None, description="HMAC key for trigger headers and backup manifests (32+ characters)"
    )
    postgres_targets: dict[str, SecretStr] = Field(default_factory=dict)
    redis_targets: dict[str, SecretStr] = Field(default_factory=dict)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"
    schedule_module: str = Field("beat_schedule", description="the Python module beat loads")
    breaker: BreakerSettings = BreakerSettings()
    guards: GuardSettings = GuardSettings()
    audit: AuditSettings = AuditSettings()
    metrics: MetricsSettings = MetricsSettings()
    notify: NotifySettings = NotifySettings()
    job_queue: JobQueueSettings = JobQueueSettings()
    celery: CelerySettings = CelerySettings()
    verify: VerifySettings = VerifySettings()
    postgres: PostgresSettings = PostgresSettings()
    backup: BackupSettings = BackupSettings()
    proxies: ProxySettings = ProxySettings()
    backoff: BackoffSettings = BackoffSettings()
    headers: HeadersSettings = HeadersSettings()
    rate_limits: RateLimitSettings = RateLimitSettings()
    prometheus: PrometheusSettings = PrometheusSettings()
    http: HttpSettings = HttpSettings()
    workers: WorkersSettings = WorkersSettings()
    containers: ContainerSettings = ContainerSettings()
    cache: CacheSettings = CacheSettings()
    host: HostSettings = HostSettings()

    @field_validator("broker_url", "result_backend", "state_redis_url")
    @classmethod
    def _redis_or_amqp(cls, value: SecretStr) -> SecretStr:
        scheme = value.get_secret_value().split("://", 1)[0]
        if scheme not in {"redis", "rediss", "amqp", "amqps", "pyamqp", "unix"}:
            raise ValueError(f"unsupported URL scheme {scheme!r}")
        return value

    @field_validator("signing_key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_SIGNING_KEY:
            raise ValueError(
                f"must be at least {MIN_SIGNING_KEY} characters (make run creates one)"
            )
        return value

    @field_validator("audit_dsn")
    @classmethod
    def _postgres_dsn(cls, value: SecretStr) -> SecretStr:
        _require_postgres(value)
        return value

    @field_validator("postgres_targets")
    @classmethod
    def _postgres_targets(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for dsn in value.values():
            _require_postgres(dsn)
        return value

    def postgres_dsn(self, target: str) -> str:
        """The DSN of a monitored database; "self" is the audit database by default."""
        return _lookup(self.postgres_targets, target, "POSTGRES_TARGETS", self.audit_dsn)

    def redis_url(self, target: str) -> str:
        """The URL of a monitored Redis; "self" is the state Redis by default."""
        return _lookup(self.redis_targets, target, "REDIS_TARGETS", self.state_redis_url)

    def postgres_target(self, target: str) -> str:
        """The configured name of a PostgreSQL target, spelled as configured ("APP" -> "app");
        TargetError when none matches."""
        return _canonical(self.postgres_targets, target, "POSTGRES_TARGETS")

    def redis_target(self, target: str) -> str:
        """The configured name of a Redis target, spelled as configured; TargetError if none."""
        return _canonical(self.redis_targets, target, "REDIS_TARGETS")


def _unique_names(names: Any) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"name {name!r} is used twice")
        seen.add(name)


def _require_postgres(value: SecretStr) -> None:
    dsn = value.get_secret_value()
    if not dsn.startswith(("postgresql://", "postgres://")):
        raise ValueError("must be a postgresql:// URL")


def _canonical(table: dict[str, SecretStr], target: str, var: str) -> str:
    """Target names match case-insensitively and resolve to the configured spelling; "self"
    (any case) is always known."""
    for name in table:
        if name.lower() == target.lower():
            return name
    if target.lower() == "self":
        return "self"
    known = ", ".join(sorted(set(table) | {"self"}))
    raise TargetError(f"target {target!r} is not configured in {ENV_PREFIX}{var} (known: {known})")


def _lookup(table: dict[str, SecretStr], target: str, var: str, self_default: SecretStr) -> str:
    name = _canonical(table, target, var)
    return (table[name] if name in table else self_default).get_secret_value()


def env_name(loc: tuple[Any, ...]) -> str:
    """The environment variable a validation error location refers to."""
    return ENV_PREFIX + NESTED.join(str(part).upper() for part in loc)


def _unknown_variables(fields: set[str]) -> list[str]:
    unknown = []
    for name in os.environ:
        if not name.startswith(ENV_PREFIX) or name.startswith(_NOT_SETTINGS):
            continue
        top = name[len(ENV_PREFIX) :].split(NESTED, 1)[0].lower()
        if top not in fields:
            unknown.append(name)
    return sorted(unknown)


def load_settings(**overrides: Any) -> Settings:
    """Read and validate settings; raise ConfigError naming the variable on any problem."""
    unknown = _unknown_variables(set(Settings.model_fields))
    if unknown:
        raise ConfigError(f"{unknown[0]}: not a known setting (see .env.example)")
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"{env_name(first['loc'])}: {first['msg']}") from None


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, loaded on first use."""
    return load_settings()


def env_names() -> list[str]:
    """Every variable the settings read: what .env.example must list."""
    names = []
    for name, info in Settings.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            names += [env_name((name, sub)) for sub in ann.model_fields]
        else:
            names.append(env_name((name,)))
    return names
