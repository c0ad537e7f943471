"""Traffic rules: SLOs and endpoints, proxies and pacing, rate limits and quotas."""

from __future__ import annotations

from remediation.findings import Severity
from remediation.playbook.rule import (
    Rule,
    backoff,
    headers_target,
    integration,
    notify_params,
    proxy_target,
    rate_limit_target,
    target,
)

ENDPOINTS: list[Rule] = [
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
]
"""SLOs from Prometheus and the HTTP health endpoints and target sites."""


PROXIES: list[Rule] = [
    Rule(
        "proxy_banned",
        "rotate_proxies",
        target,
        "000 HTTP 403 Forbidden / CAPTCHA 1. Rotate Proxies",
    ),
    Rule(
        "proxy_banned",
        "tune_backoff",
        backoff("increase"),
        "000 HTTP 403 Forbidden / CAPTCHA 2. Increase Delays: min_delay in scraping_config.json",
        min_severity=Severity.HIGH,  # the ban rate reached REMEDIATION_BACKOFF__BAN_RATE_THRESHOLD
    ),
    Rule(
        "proxy_banned",
        "regenerate_headers",
        headers_target,
        "000 HTTP 403 Forbidden / CAPTCHA 3. Browser Fingerprints: regenerate user-agent headers",
    ),
    Rule(
        "proxy_dead",
        "rotate_proxies",
        target,
        "001 High Error Rate Response: if proxy issues, rotate proxy pool",
    ),
    Rule(
        "proxy_recovered",
        "rotate_proxies",
        target,
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
        proxy_target,
        "001 High Error Rate Response 2. Verify proxy status (check_proxy_health.py)",
        run="check",
    ),
    Rule(
        "error_rate_high",
        "rotate_proxies",
        proxy_target,
        "001 High Error Rate Response, Resolution 1. If proxy issues: rotate proxy pool",
    ),
    Rule(
        "error_rate_high",
        "tune_backoff",
        backoff("increase"),
        "001 High Error Rate Response, Resolution 2. If rate limiting: adjust request rates",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "scrape_ban_rate_high",
        "tune_backoff",
        backoff("increase"),
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
        backoff("decrease"),
        "000 Increase Delays, eased back step by step after a sustained healthy period",
        min_severity=Severity.INFO,
    ),
]
"""Bans, the proxy pool, headers and request pacing."""


RATE_LIMITS: list[Rule] = [
    Rule(
        "api_rate_limit_high",
        "throttle_sync",
        integration,
        "000 Shopify 429: SHOPIFY_SYNC_INTERVAL; 004 Rate Limit Exhaustion: usage > 80 %",
    ),
    Rule(
        "api_sync_throttle_expired",
        "restore_sync",
        integration,
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
        target,
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
        rate_limit_target,
        "000 OpenAI 429 / insufficient quota: switch to a fallback model temporarily",
    ),
]
"""API rate limits and LLM quotas."""
