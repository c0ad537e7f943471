"""HTTP endpoints (REMEDIATION_HTTP__ENDPOINTS) and proxies (REMEDIATION_PROXIES__*).

Each endpoint gets one GET with the configured timeout (the check's own probe: redirects not
followed, the body read to a deadline). Each proxy gets one GET of REMEDIATION_PROXIES__TEST_URL
through it when that is set (the pool check's own probe), else a TCP connect. Rows show URLs
without user, password or query values.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from remediation.checks.http import probe as get_endpoint
from remediation.checks.http import safe_url
from remediation.checks.proxies import probe as through_proxy
from remediation.doctor import PROBE_TIMEOUT, Result, fail, ok, unknown
from remediation.doctor.needs import actions_for
from remediation.doctor.webhook import resolve
from remediation.proxies.entries import display_url, load_entries
from remediation.proxies.pool import DEAD
from remediation.settings import HttpEndpoint, ProxySettings, Settings

ENDPOINTS_VAR = "REMEDIATION_HTTP__ENDPOINTS"
PROXY_LIST_VAR = "REMEDIATION_PROXIES__PROXY_LIST"
PROXY_FILE_VAR = "REMEDIATION_PROXIES__FILE"
PROXY_ACTIONS = ("rotate_proxies",)


def probe(settings: Settings) -> list[Result]:
    """One row per endpoint and per proxy; one ok row when neither is configured."""
    rows = [
        _endpoint(i, e, settings.http.timeout_seconds)
        for i, e in enumerate(settings.http.endpoints)
    ]
    rows += _proxies(settings.proxies)
    if not rows:
        return [ok("http", "http", "configured", "no HTTP endpoints or proxies configured")]
    return rows


def _endpoint(i: int, endpoint: HttpEndpoint, timeout: float) -> Result:
    needed_by = actions_for("http_endpoint_down", "site_unavailable")
    shown = safe_url(endpoint.url)
    what = f"GET {shown} answers"
    var = f"{ENDPOINTS_VAR}[{i}]"
    seen = get_endpoint(endpoint, timeout)
    if seen.status is None:
        detail = f"{seen.error} after {seen.latency_ms:g} ms (timeout {timeout:g} s)"
        fix = f"start the service or correct {var}.url (endpoint {endpoint.name})"
        return fail("http", endpoint.name, what, detail, fix, needed_by=needed_by)
    detail = f"HTTP {seen.status} in {seen.latency_ms:g} ms"
    if seen.status != endpoint.expect_status:
        fix = (
            f"unhealthy now, or {var}.url / {var}.expect_status ({endpoint.expect_status}) is wrong"
        )
        return unknown("http", endpoint.name, what, detail, fix, needed_by=needed_by)
    return ok("http", endpoint.name, what, detail, needed_by=needed_by)


def _proxies(cfg: ProxySettings) -> list[Result]:
    loaded = load_entries(cfg)
    where = f"{PROXY_LIST_VAR} / {PROXY_FILE_VAR}"
    rows = [
        fail(
            "proxy",
            "proxies",
            "entry parses",
            err,
            f"correct it in {where}",
            needed_by=PROXY_ACTIONS,
        )
        for err in loaded.errors
    ]
    for entry in loaded.entries:
        rows.append(_proxy(entry.url, cfg, where))
    return rows


def _proxy(url: str, cfg: ProxySettings, where: str) -> Result:
    shown = display_url(url)
    fix = f"start the proxy {shown} or correct (or remove) it in {where}"
    if cfg.test_url:
        what = f"GET {safe_url(cfg.test_url)} through {shown}"
        seen = through_proxy(url, cfg)
        if seen.status == DEAD:
            return fail("proxy", shown, what, seen.reason, fix, needed_by=PROXY_ACTIONS)
        return ok("proxy", shown, what, f"{seen.status}: {seen.reason}", needed_by=PROXY_ACTIONS)
    what = f"TCP connect to {shown}"
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    timeout = min(cfg.timeout_seconds, PROBE_TIMEOUT)
    addrs = resolve(parts.hostname or "", port, timeout)
    if isinstance(addrs, str):
        return fail(
            "proxy", shown, what, f"host does not resolve: {addrs}", fix, needed_by=PROXY_ACTIONS
        )
    try:
        socket.create_connection((addrs[0], port), timeout=timeout).close()
    except OSError as exc:
        why = f"{type(exc).__name__}: {exc.strerror or 'no answer'}"
        return fail("proxy", shown, what, why, fix, needed_by=PROXY_ACTIONS)
    detail = "connected (REMEDIATION_PROXIES__TEST_URL unset: nothing fetched through it)"
    return ok("proxy", shown, what, detail, needed_by=PROXY_ACTIONS)
