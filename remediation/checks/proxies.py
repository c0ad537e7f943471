"""Runbook 000 "HTTP 403 Forbidden / CAPTCHA: Rotate Proxies" and runbook 001 "Weekly
2. Proxy Pool Maintenance": test every proxy, keep the pool and its published set in Redis."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from remediation.context import CheckContext
from remediation.findings import Finding, Severity
from remediation.params import CheckParams
from remediation.proxies import (
    BANNED,
    DEAD,
    HEALTHY,
    OK,
    SLOW,
    Changes,
    ProbeResult,
    ProxyPool,
    ProxyRecord,
    load_entries,
    result_fields,
)
from remediation.registry import check
from remediation.settings import ProxySettings
from remediation.timing import ms_since

CHECK = "proxy_pool_health"
POOL = "pool"
MAX_BODY_BYTES = 64 * 1024
"""Bytes of a test page searched for CAPTCHA markers."""
MAX_LISTED = 50
"""Proxies listed by name in one finding's evidence; the rest are counted."""
USER_AGENT = "remediation-proxy-check/1"


class ProxyPoolParams(CheckParams):
    """``target`` is the Redis target that holds the pool (REMEDIATION_REDIS_TARGETS)."""


def probe(proxy_url: str, cfg: ProxySettings) -> ProbeResult:
    """Fetch cfg.test_url through one proxy and classify the answer (never raises)."""
    started = time.monotonic()
    deadline = started + cfg.timeout_seconds
    proxies = {"http": proxy_url, "https": proxy_url}
    with requests.Session() as session:
        session.trust_env = False  # NO_PROXY / HTTP_PROXY must not bypass the proxy under test
        try:
            with session.get(
                str(cfg.test_url),
                proxies=proxies,
                timeout=cfg.timeout_seconds,
                stream=True,
                allow_redirects=False,
                headers={"User-Agent": USER_AGENT},
            ) as resp:
                body = _read_head(resp, deadline)
                code, location = resp.status_code, resp.headers.get("Location", "")
        except requests.RequestException as exc:
            return ProbeResult(
                DEAD,
                _failure_reason(exc, cfg.timeout_seconds),
                ms_since(started, digits=1),
            )
    return classify(code, body + location.encode(), ms_since(started, digits=1), cfg)


def _read_head(resp: requests.Response, deadline: float) -> bytes:
    chunks, size = [], 0
    for chunk in resp.iter_content(8192):
        chunks.append(chunk)
        size += len(chunk)
        if size >= MAX_BODY_BYTES or time.monotonic() > deadline:
            break
    return b"".join(chunks)[:MAX_BODY_BYTES]


def _failure_reason(exc: requests.RequestException, timeout: float) -> str:
    """A short cause; the exception text is not used because it can carry the proxy URL."""
    text = str(exc).lower()
    if isinstance(exc, requests.ConnectTimeout):
        return f"connect timeout after {timeout:g}s"
    if isinstance(exc, requests.Timeout):
        return f"no answer within {timeout:g}s"
    if "refused" in text:
        return "connection refused"
    if "reset" in text or "aborted" in text or "remotedisconnected" in text:
        return "connection reset"
    if isinstance(exc, requests.exceptions.ProxyError):
        return "proxy error"
    return f"request failed ({type(exc).__name__})"


def classify(code: int, body: bytes, latency_ms: float, cfg: ProxySettings) -> ProbeResult:
    """ok (2xx/3xx), slow (ok but over slow_ms), banned (403, 429, CAPTCHA page), dead."""
    if code in (403, 429):
        return ProbeResult(BANNED, f"HTTP {code}", latency_ms, code)
    if code in (401, 407):  # tinyproxy answers a wrong proxy password with 401
        return ProbeResult(DEAD, f"authentication failed (HTTP {code})", latency_ms, code)
    if not 200 <= code < 400:
        return ProbeResult(DEAD, f"HTTP {code}", latency_ms, code)
    text = body.decode("utf-8", "replace").lower()
    marker = next((m for m in cfg.captcha_markers if m.lower() in text), None)
    if marker:
        return ProbeResult(BANNED, f"CAPTCHA marker {marker!r}", latency_ms, code)
    if latency_ms > cfg.slow_ms:
        return ProbeResult(SLOW, f"{latency_ms:.0f} ms > {cfg.slow_ms:g} ms", latency_ms, code)
    return ProbeResult(OK, f"HTTP {code}", latency_ms, code)


def probe_all(records: list[ProxyRecord], cfg: ProxySettings) -> dict[str, ProbeResult]:
    """Test proxies concurrently, at most cfg.workers at a time; results by proxy id."""
    if not records:
        return {}
    with ThreadPoolExecutor(min(cfg.workers, len(records)), "proxy-probe") as pool:
        results = pool.map(lambda rec: probe(rec.url, cfg), records)
        return {rec.id: res for rec, res in zip(records, results, strict=True)}


@check(CHECK)
def proxy_pool_health(ctx: CheckContext, params: ProxyPoolParams) -> list[Finding]:
    """Test every proxy of the pool through REMEDIATION_PROXIES__TEST_URL (runbook 000, 001).

    Loads REMEDIATION_PROXIES__PROXY_LIST and __FILE ('URL [REGION]') into the pool in the
    target's Redis (new proxies join active, removed ones leave the published set), then
    fetches the test page through every active proxy and every quarantined one whose
    back-off is over, __WORKERS at a time, __TIMEOUT_SECONDS each. 403/429 or a CAPTCHA
    page is a ban (rotate_proxies quarantines, tune_backoff slows down); connection
    errors, timeouts and 5xx are dead; a passing quarantined proxy is recovered (promoted).
    Fewer healthy active proxies than __MIN_ACTIVE, or a region under its
    __REGION_TARGETS share, is reported for a human."""
    cfg = ctx.settings.proxies
    loaded = load_entries(cfg)
    findings = [_config_invalid(params, loaded.errors)] if loaded.errors else []
    for error in loaded.errors:
        ctx.log.warning("proxy entry rejected", error=error)
    if not loaded.entries or not cfg.test_url:
        return findings + _unconfigured(params, cfg, bool(loaded.entries))
    pool = ProxyPool(ctx.redis(params.target), cfg.active_key)
    now = time.time()
    sync = pool.sync(loaded.entries, remove_missing=loaded.complete, now=now)
    if not sync.empty:
        ctx.log.info("proxy pool synced", added=len(sync.new), removed=sync.gone)
    # Slowest first (by last latency): long tests overlap the many short ones instead of
    # trailing behind them, so a run takes about the longest test, not a queue plus it.
    due = sorted(
        (rec for rec in pool.records().values() if rec.due(now)),
        key=lambda rec: rec.last_latency_ms or 0.0,
        reverse=True,
    )
    results = probe_all(due, cfg)
    records = _record(pool, results, time.time())
    counts = Counter(res.status for res in results.values())
    rate = pool.record_run(dict(counts), time.time())
    ctx.log.info("proxies tested", tested=len(results), ban_rate=rate, **dict(counts))
    return findings + _findings(
        params, cfg, ctx.settings.backoff.ban_rate_threshold, records, results, rate or 0.0
    )


def _record(pool: ProxyPool, results: dict[str, ProbeResult], now: float) -> dict[str, ProxyRecord]:
    """Write each result into its proxy's hash; return the pool as it is afterwards."""

    def plan(records: dict[str, ProxyRecord]) -> Changes:
        changes = Changes()
        changes.fields = {
            pid: result_fields(records[pid], res, now)
            for pid, res in results.items()
            if pid in records
        }
        return changes

    pool.update(plan)
    return pool.records()


def _finding(params: ProxyPoolParams, subject: str, kind: str, sev: Severity, **kw: Any) -> Finding:
    return Finding(
        check=CHECK, target=params.target, subject=subject, kind=kind, severity=sev, **kw
    )


def _listed(records: list[ProxyRecord]) -> dict[str, Any]:
    return {
        "proxies": [rec.brief() for rec in records[:MAX_LISTED]],
        "more": max(0, len(records) - MAX_LISTED),
    }


def _findings(
    params: ProxyPoolParams,
    cfg: ProxySettings,
    ban_limit: float,
    records: dict[str, ProxyRecord],
    results: dict[str, ProbeResult],
    rate: float,
) -> list[Finding]:
    tested = [records[pid] for pid in results if pid in records]
    banned = [rec for rec in tested if rec.last_status == BANNED]
    dead = [rec for rec in tested if rec.last_status == DEAD]
    recovered = [rec for rec in tested if rec.retested and rec.last_status in HEALTHY]
    pool = _pool_counts(records, cfg)
    out = []
    if banned:
        sev = Severity.HIGH if rate >= ban_limit else Severity.WARNING
        out.append(
            _finding(
                params,
                POOL,
                "proxy_banned",
                sev,
                observed=rate,
                threshold=ban_limit,
                evidence={
                    "ban_rate": rate,
                    "tested": len(tested),
                    "banned": len(banned),
                    **_listed(banned),
                    "pool": pool,
                },
                summary=(
                    f"{len(banned)} of {len(tested)} proxies banned "
                    f"(403/429/CAPTCHA), ban rate {rate:.0%}"
                ),
            )
        )
    if dead:
        out.append(
            _finding(
                params,
                POOL,
                "proxy_dead",
                Severity.WARNING,
                observed=len(dead),
                threshold=0,
                evidence={"tested": len(tested), "dead": len(dead), **_listed(dead), "pool": pool},
                summary=(
                    f"{len(dead)} of {len(tested)} proxies failed "
                    "(connection error, timeout or 5xx)"
                ),
            )
        )
    if recovered:
        out.append(
            _finding(
                params,
                POOL,
                "proxy_recovered",
                Severity.INFO,
                observed=len(recovered),
                threshold=0,
                evidence={"recovered": len(recovered), **_listed(recovered)},
                summary=f"{len(recovered)} parked proxies passed their re-test",
            )
        )
    return out + _pool_low(params, cfg, pool) + _regions(params, cfg, records)


def _pool_counts(records: dict[str, ProxyRecord], cfg: ProxySettings) -> dict[str, Any]:
    states = Counter(rec.state for rec in records.values())
    return {
        "total": len(records),
        "healthy_active": sum(r.healthy for r in records.values()),
        "active": states["active"],
        "quarantined": states["quarantined"],
        "dead": states["dead"],
        "min_active": cfg.min_active,
    }


def _pool_low(params: ProxyPoolParams, cfg: ProxySettings, pool: dict[str, Any]) -> list[Finding]:
    healthy = pool["healthy_active"]
    if healthy >= cfg.min_active:
        return []
    sev = Severity.CRITICAL if healthy == 0 else Severity.HIGH
    return [
        _finding(
            params,
            POOL,
            "proxy_pool_low",
            sev,
            observed=healthy,
            threshold=cfg.min_active,
            evidence=pool,
            summary=f"{healthy} healthy active proxies, minimum {cfg.min_active}",
        )
    ]


def _regions(
    params: ProxyPoolParams, cfg: ProxySettings, records: dict[str, ProxyRecord]
) -> list[Finding]:
    """Geographic distribution (runbook 001): a region's share of the healthy active proxies."""
    healthy = Counter(rec.region for rec in records.values() if rec.healthy)
    total = sum(healthy.values())
    out = []
    for region, target in sorted(cfg.region_targets.items()):
        share = round(healthy[region.lower()] / total, 4) if total else 0.0
        if share < target:
            out.append(
                _finding(
                    params,
                    region.lower(),
                    "proxy_region_low",
                    Severity.WARNING,
                    observed=share,
                    threshold=target,
                    evidence={
                        "region": region.lower(),
                        "healthy": healthy[region.lower()],
                        "healthy_total": total,
                        "share": share,
                    },
                    summary=f"region {region}: {share:.0%} of healthy proxies, target {target:.0%}",
                )
            )
    return out


def _config_invalid(params: ProxyPoolParams, errors: list[str]) -> Finding:
    return _finding(
        params,
        "config",
        "proxy_config_invalid",
        Severity.WARNING,
        observed=len(errors),
        threshold=0,
        evidence={"errors": errors[:MAX_LISTED], "more": max(0, len(errors) - MAX_LISTED)},
        summary=f"{len(errors)} proxy entries rejected: {errors[0]}",
    )


def _unconfigured(params: ProxyPoolParams, cfg: ProxySettings, has_entries: bool) -> list[Finding]:
    missing = [] if has_entries else ["REMEDIATION_PROXIES__PROXY_LIST or __FILE (no valid entry)"]
    if not cfg.test_url:
        missing.append("REMEDIATION_PROXIES__TEST_URL")
    return [
        _finding(
            params,
            POOL,
            "proxy_pool_unconfigured",
            Severity.INFO,
            evidence={"missing": missing},
            summary="proxy pool not tested: set " + " and ".join(missing),
        )
    ]
