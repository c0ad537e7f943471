"""API rate limits read from response headers (runbook 004 "Rate Limit Exhaustion: usage >
80 %", runbook 000 Shopify 429 and OpenAI quota), and throttled syncs that are due to be
undone (remediation.throttles; paused Celery queues: checks/celery_workers.py).
"""

from __future__ import annotations

import email.utils
import re
import time
import urllib.parse
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

import requests

from remediation.context import CheckContext
from remediation.findings import Finding, Severity
from remediation.params import CheckParams
from remediation.registry import check
from remediation.settings import RateLimitEndpoint, RateLimitSettings
from remediation.throttles import THROTTLE_INDEX, due, records, throttle_key

HIGH_USAGE = 0.95
"""Usage at or above this (or a 429) is high severity."""
MAX_PROBES = 16
"""Endpoints probed at the same time."""
BODY_BYTES = 4096
"""How much of a 429's body is read to tell an exhausted quota from a rate limit."""
_LIMIT = re.compile(r"^(x-)?ratelimit-limit(-[a-z0-9-]+)?$")
_NUMBER = re.compile(r"^\s*(\d+(?:\.\d+)?)")
_SHOPIFY = "x-shopify-shop-api-call-limit"
_SHOPIFY_VALUE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass
class Usage:
    """How much of a limit is used, and which header said so."""

    usage: float
    source: str
    used: float | None = None
    limit: float | None = None
    remaining: float | None = None


@dataclass
class Probe:
    """One endpoint's answer (or why there was none)."""

    endpoint: str
    url: str
    status: int | None = None
    usage: Usage | None = None
    retry_after_seconds: float | None = None
    quota_exhausted: bool = False
    error: str | None = None
    headers_seen: list[str] = field(default_factory=list)


def _number(text: str | None) -> float | None:
    match = _NUMBER.match(text or "")
    return float(match.group(1)) if match else None


def usage_from_headers(headers: Mapping[str, str]) -> Usage | None:
    """The highest usage any rate-limit header pair reports; None when there is none.

    Generic ``X-RateLimit-Limit`` / ``-Remaining`` (and suffixed pairs such as OpenAI's
    ``x-ratelimit-limit-requests``, and IETF ``RateLimit-Limit``): 1 - remaining / limit.
    Shopify's ``X-Shopify-Shop-Api-Call-Limit: n/40``: n / 40."""
    lower = {k.lower(): v for k, v in headers.items()}
    found: list[Usage] = []
    for name, value in lower.items():
        match = _LIMIT.match(name)
        if not match:
            continue
        remaining_name = f"{match.group(1) or ''}ratelimit-remaining{match.group(2) or ''}"
        limit, remaining = _number(value), _number(lower.get(remaining_name))
        if limit and remaining is not None:
            share = min(1.0, max(0.0, 1 - remaining / limit))
            found.append(Usage(share, name, limit - remaining, limit, remaining))
    shopify = _SHOPIFY_VALUE.match(lower.get(_SHOPIFY, ""))
    if shopify and int(shopify.group(2)) > 0:
        used, limit = float(shopify.group(1)), float(shopify.group(2))
        found.append(Usage(min(1.0, used / limit), _SHOPIFY, used, limit, limit - used))
    return max(found, key=lambda u: u.usage, default=None)


def retry_after(value: str | None, now: float) -> float | None:
    """Retry-After in seconds: delta-seconds or an HTTP date; None when absent or garbage."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, round(when.timestamp() - now, 3))


def safe_url(url: str) -> str:
    """scheme://host:port/path: no credentials, no query string (API keys live there too)."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(unparsable URL)"
    return f"{parts.scheme}://{host}{port}{parts.path}"


def probe(endpoint: RateLimitEndpoint, timeout: float) -> Probe:
    """GET the endpoint once with its (secret) headers; never follows redirects."""
    result = Probe(endpoint.name, safe_url(endpoint.url))
    headers = {k: v.get_secret_value() for k, v in endpoint.headers.items()}
    try:  # redirects could carry the API key headers to another host
        with requests.get(
            endpoint.url, headers=headers, timeout=timeout, stream=True, allow_redirects=False
        ) as resp:
            result.status = resp.status_code
            result.usage = usage_from_headers(resp.headers)
            result.headers_seen = sorted(
                k.lower() for k in resp.headers if "ratelimit" in k.lower() or k.lower() == _SHOPIFY
            )
            if resp.status_code == 429:
                result.retry_after_seconds = retry_after(
                    resp.headers.get("Retry-After"), time.time()
                )
                body = next(resp.iter_content(BODY_BYTES), b"")
                result.quota_exhausted = b"insufficient_quota" in body
    except (requests.RequestException, ValueError) as exc:  # messages embed the URL
        result.error = type(exc).__name__
    return result


def probe_all(cfg: RateLimitSettings) -> list[Probe]:
    """Probe every endpoint, MAX_PROBES at a time; one that has not answered by the
    deadline is reported as timed out and its thread is left to its own timeout."""
    if not cfg.endpoints:
        return []
    pool = ThreadPoolExecutor(min(MAX_PROBES, len(cfg.endpoints)), thread_name_prefix="ratelimit")
    try:
        futures: list[Future[Probe]] = [
            pool.submit(probe, e, cfg.timeout_seconds) for e in cfg.endpoints
        ]
        rounds = -(-len(cfg.endpoints) // MAX_PROBES)
        wait(futures, timeout=rounds * (2 * cfg.timeout_seconds + 1))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return [
        f.result()
        if f.done() and not f.cancelled()
        else Probe(e.name, safe_url(e.url), error="timed out")
        for f, e in zip(futures, cfg.endpoints, strict=True)
    ]


def _evidence(p: Probe) -> dict[str, Any]:
    evidence: dict[str, Any] = {"url": p.url, "status": p.status}
    if p.usage:
        evidence.update(
            source=p.usage.source,
            used=p.usage.used,
            limit=p.usage.limit,
            remaining=p.usage.remaining,
        )
    if p.retry_after_seconds is not None:
        evidence["retry_after_seconds"] = p.retry_after_seconds
    if p.error:
        evidence["error"] = p.error
    return evidence


def finding_for(p: Probe, cfg: RateLimitSettings, target: str) -> Finding | None:
    """What one probe means: high usage, exhausted quota, unreachable, unknown or nothing."""
    base = {
        "check": "api_rate_limits",
        "target": target,
        "subject": p.endpoint,
        "evidence": _evidence(p),
    }
    if p.error:
        return Finding(
            **base,
            kind="api_rate_limit_unreachable",
            severity=Severity.WARNING,
            summary=f"{p.endpoint}: no answer ({p.error})",
        )
    if p.status == 429:
        kind = "api_quota_exhausted" if p.quota_exhausted else "api_rate_limit_high"
        wait_s = (
            "" if p.retry_after_seconds is None else f", retry after {p.retry_after_seconds:g}s"
        )
        return Finding(
            **base,
            kind=kind,
            severity=Severity.HIGH,
            observed=1.0,
            threshold=cfg.usage_threshold,
            summary=f"{p.endpoint}: HTTP 429{wait_s}",
        )
    if p.usage is not None:
        if p.usage.usage < cfg.usage_threshold:
            return None
        sev = Severity.HIGH if p.usage.usage >= HIGH_USAGE else Severity.WARNING
        return Finding(
            **base,
            kind="api_rate_limit_high",
            severity=sev,
            observed=round(p.usage.usage, 4),
            threshold=cfg.usage_threshold,
            summary=f"{p.endpoint}: {p.usage.usage:.0%} of its rate limit used",
        )
    if p.status is not None and p.status >= 400:
        return Finding(
            **base,
            kind="api_rate_limit_unreachable",
            severity=Severity.WARNING,
            summary=f"{p.endpoint}: HTTP {p.status}, no rate-limit headers",
        )
    return Finding(
        **base,
        kind="api_rate_limit_unknown",
        severity=Severity.INFO,
        summary=f"{p.endpoint}: answered without rate-limit headers",
    )


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class RateLimitsParams(CheckParams):
    """target: the Redis holding REMEDIATION_RATE_LIMITS__SYNC_INTERVAL_KEY (throttles)."""


@check("api_rate_limits")
def api_rate_limits(ctx: CheckContext, params: RateLimitsParams) -> list[Finding]:
    """Rate-limit usage of each REMEDIATION_RATE_LIMITS__ENDPOINTS API, from its headers.

    X-RateLimit-Limit/-Remaining (1 - remaining/limit) or Shopify's
    X-Shopify-Shop-Api-Call-Limit n/40. Usage at or above USAGE_THRESHOLD (runbook 004:
    80 %) -> api_rate_limit_high (subject: the endpoint name; high from 95 % or on a 429,
    with Retry-After); a 429 whose body says insufficient_quota -> api_quota_exhausted; no
    answer or an error status -> api_rate_limit_unreachable. Endpoints are probed
    concurrently, each with TIMEOUT_SECONDS; their headers (API keys) are never logged.
    Also reports throttle_sync changes whose time is up: api_sync_throttle_expired."""
    cfg = ctx.settings.rate_limits
    findings = [f for p in probe_all(cfg) if (f := finding_for(p, cfg, params.target))]
    now = time.time()
    for name, rec in records(ctx.redis(params.target), THROTTLE_INDEX, throttle_key):
        if due(rec, now):
            findings.append(
                Finding(
                    check="api_rate_limits",
                    target=params.target,
                    subject=name,
                    kind="api_sync_throttle_expired",
                    severity=Severity.INFO,
                    observed=_float(rec.get("throttled")),
                    threshold=_float(rec.get("original")),
                    evidence={k: rec.get(k) for k in ("original", "throttled", "expires_at", "by")},
                    summary=f"{name} sync throttle ended; interval back to {rec.get('original')}s",
                )
            )
    return findings
