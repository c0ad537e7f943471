"""Scraping traffic: proxies, pacing, headers, rate limits, Prometheus SLOs, HTTP endpoints."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from remediation.settings.base import Section, unique_names


class ProxySettings(Section):
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


class BackoffSettings(Section):
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


class HeadersSettings(Section):
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


class RateLimitEndpoint(Section):
    """An API whose rate-limit headers are read (generic X-RateLimit-*, Shopify's n/40)."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    url: str = Field(min_length=1)
    headers: dict[str, SecretStr] = Field(default_factory=dict, description="e.g. API keys")


class RateLimitSettings(Section):
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


class PrometheusRule(Section):
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


class PrometheusSettings(Section):
    """Where Prometheus answers and which SLO rules are checked."""

    url: str | None = Field(None, description="e.g. http://127.0.0.1:9090; unset = not checked")
    timeout_seconds: float = Field(5.0, gt=0, le=60)
    rules: list[PrometheusRule] = Field(default_factory=lambda: list(DEFAULT_PROMETHEUS_RULES))

    @field_validator("rules")
    @classmethod
    def _unique(cls, rules: list[PrometheusRule]) -> list[PrometheusRule]:
        unique_names(r.name for r in rules)
        return rules


class HttpEndpoint(Section):
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


class HttpSettings(Section):
    """Health endpoints and target sites checked by http_endpoints."""

    endpoints: list[HttpEndpoint] = Field(default_factory=list)

    @field_validator("endpoints")
    @classmethod
    def _unique(cls, endpoints: list[HttpEndpoint]) -> list[HttpEndpoint]:
        unique_names(e.name for e in endpoints)
        return endpoints

    timeout_seconds: float = Field(5.0, gt=0, le=60)
    workers: int = Field(16, ge=1, le=256)
