"""Health endpoints and target sites over HTTP (runbook 002 "System Startup: curl
/health", runbook 001 "Check target site availability", runbook 004 "Data Freshness").

Endpoints come from REMEDIATION_HTTP__ENDPOINTS and are probed concurrently, at most
REMEDIATION_HTTP__WORKERS at a time, each within REMEDIATION_HTTP__TIMEOUT_SECONDS.
Header values (API keys) are sent and never written anywhere: not in findings, not in
logs. URLs in evidence have their password and every query value masked.
"""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

import requests
import urllib3
from pydantic import Field

from remediation.context import CheckContext
from remediation.findings import Finding, Severity
from remediation.params import CheckParams, TargetName
from remediation.redact import MASK, redact_text
from remediation.registry import check
from remediation.settings import HttpEndpoint
from remediation.timing import ms_since

CHECK = "http_endpoints"
MAX_BODY_BYTES = 1 << 20
"""Body read for the JSON fields (and for the timing); a larger body is cut here."""
HEALTHY = frozenset({"ok", "healthy", "up", "pass", "true"})
"""Values of json_status_field that mean healthy, compared case-insensitively."""
DOWN_KIND = {"health": "http_endpoint_down", "site": "site_unavailable"}
MS_EPOCH = 1e11
"""An epoch above this (the year 5138 in seconds) is taken to be in milliseconds."""


class HttpEndpointsParams(CheckParams):
    target: TargetName = Field("http", description="names the findings")
    names: list[Annotated[str, Field(max_length=64)]] | None = Field(
        None, max_length=100, description="endpoint names to probe; default: all"
    )


class ProbeTimeout(requests.Timeout):
    """The whole exchange took longer than the timeout (a body trickling in byte by byte)."""


@dataclass
class Probe:
    """What one request saw: a status and body, or the class of the error it ended with."""

    status: int | None = None
    body: bytes = b""
    truncated: bool = False
    latency_ms: float = 0.0
    error: str | None = None


def safe_url(url: str) -> str:
    """The URL without secrets: password masked, every query value masked (API keys often
    travel as ?key=... under names no redaction list knows)."""
    parts = urlsplit(redact_text(url))
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    query = "&".join(f"{quote(k, safe='')}={MASK}" for k, _ in pairs)
    return urlunsplit(parts._replace(query=query))


def _error_name(exc: BaseException) -> str:
    """'ConnectionError (ConnectionRefusedError)': the class and its root cause's class, never
    the message (it repeats the URL with its query string)."""
    seen: list[BaseException] = [exc]
    current: BaseException | None = exc
    while current is not None and len(seen) < 10:
        nxt = getattr(current, "reason", None)
        current = (
            nxt if isinstance(nxt, BaseException) else current.__cause__ or current.__context__
        )
        if current is not None:
            seen.append(current)
    root = seen[-1]
    name = type(exc).__name__
    return name if root is exc else f"{name} ({type(root).__name__})"


def probe(endpoint: HttpEndpoint, timeout: float) -> Probe:
    """GET the endpoint once; never raises. Redirects are not followed (like curl), so the
    secret headers never go to another host and expect_status can be a 3xx."""
    headers = {k: v.get_secret_value() for k, v in endpoint.headers.items()}
    started = time.perf_counter()
    deadline = time.monotonic() + timeout
    try:
        with (
            requests.Session() as session,
            session.get(
                endpoint.url, headers=headers, timeout=timeout, allow_redirects=False, stream=True
            ) as resp,
        ):
            body, truncated = _read(resp, deadline)
            return Probe(
                resp.status_code,
                body,
                truncated,
                ms_since(started, digits=1, clock=time.perf_counter),
            )
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
        return Probe(
            latency_ms=ms_since(started, digits=1, clock=time.perf_counter), error=_error_name(exc)
        )


def _read(resp: requests.Response, deadline: float) -> tuple[bytes, bool]:
    """The body, at most MAX_BODY_BYTES, read by whatever arrives (read1), so a body that
    trickles in is cut at the deadline: a probe lasts at most about twice the timeout."""
    chunks: list[bytes] = []
    size = 0
    while size < MAX_BODY_BYTES:
        if time.monotonic() > deadline:
            raise ProbeTimeout("response body not read within the timeout")
        chunk = resp.raw.read1(MAX_BODY_BYTES - size, decode_content=True)
        if not chunk:
            return b"".join(chunks), False
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks), True


def field_value(body: Any, path: str) -> tuple[bool, Any]:
    """(found, value) of a dotted path ('checks.db.status') in parsed JSON."""
    current = body
    for part in path.split("."):
        if not isinstance(current, dict) or part not in current:
            return False, None
        current = current[part]
    return True, current


def timestamp(value: Any) -> float | None:
    """Epoch seconds (milliseconds above MS_EPOCH) or ISO 8601 (naive = UTC) -> epoch seconds."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float) or (isinstance(value, str) and _is_number(value)):
        epoch = float(value)
        if not math.isfinite(epoch):
            return None
        return epoch / 1000 if epoch > MS_EPOCH else epoch
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


_NOT_JSON = object()


class _Judge:
    """Turns one endpoint's probe into findings."""

    def __init__(self, params: HttpEndpointsParams, endpoint: HttpEndpoint, seen: Probe) -> None:
        self.params, self.ep, self.seen = params, endpoint, seen
        self.where = {
            "endpoint": endpoint.name,
            "url": safe_url(endpoint.url),
            "endpoint_kind": endpoint.kind,
        }

    def finding(self, kind: str, severity: Severity, summary: str, **kw: Any) -> Finding:
        evidence = {**self.where, "latency_ms": self.seen.latency_ms, **kw.pop("evidence", {})}
        return Finding(
            check=CHECK,
            target=self.params.target,
            subject=self.ep.name,
            kind=kind,
            severity=severity,
            evidence=evidence,
            summary=f"{self.ep.name} ({self.where['url']}): {summary}",
            **kw,
        )

    def findings(self) -> list[Finding]:
        down = self.down()
        if down is not None:
            return [down]
        body = self.json_body() if self.ep.json_status_field or self.ep.freshness_field else None
        found = [self.slow(), self.unhealthy(body), self.stale(body)]
        return [f for f in found if f is not None]

    def down(self) -> Finding | None:
        kind = DOWN_KIND[self.ep.kind]
        if self.seen.error is not None:
            return self.finding(
                kind,
                Severity.HIGH,
                f"no answer: {self.seen.error}",
                observed=self.seen.error,
                threshold=self.ep.expect_status,
                evidence={"error": self.seen.error},
            )
        if self.seen.status != self.ep.expect_status:
            return self.finding(
                kind,
                Severity.HIGH,
                f"HTTP {self.seen.status}, expected {self.ep.expect_status}",
                observed=self.seen.status,
                threshold=self.ep.expect_status,
                evidence={"status": self.seen.status, "expect_status": self.ep.expect_status},
            )
        return None

    def slow(self) -> Finding | None:
        ms = self.seen.latency_ms
        for limit, severity in (
            (self.ep.latency_high_ms, Severity.HIGH),
            (self.ep.latency_warning_ms, Severity.WARNING),
        ):
            if ms > limit:
                return self.finding(
                    "http_endpoint_slow",
                    severity,
                    f"answered in {ms:.0f} ms (limit {limit:g} ms)",
                    observed=ms,
                    threshold=limit,
                )
        return None

    def json_body(self) -> Any:
        try:
            return json.loads(self.seen.body)
        except ValueError:
            return _NOT_JSON

    def unhealthy(self, body: Any) -> Finding | None:
        path = self.ep.json_status_field
        if path is None:
            return None
        found, value = field_value(body, path)
        if not found:
            why = "body is not JSON" if body is _NOT_JSON else f"no field {path!r} in the body"
            return self.finding(
                "http_endpoint_unhealthy",
                Severity.WARNING,
                f"health status unknown: {why}",
                observed=None,
                evidence={"field": path, "truncated": self.seen.truncated},
            )
        reported = str(value).strip().lower() if not isinstance(value, dict | list) else "?"
        if reported in HEALTHY:
            return None
        shown = redact_text(str(value))[:100]
        return self.finding(
            "http_endpoint_unhealthy",
            Severity.HIGH,
            f"{path} is {shown!r} (healthy: ok, healthy, up, pass)",
            observed=shown,
            threshold="ok|healthy|up|pass",
            evidence={"field": path, "reported": shown},
        )

    def stale(self, body: Any) -> Finding | None:
        path, max_age = self.ep.freshness_field, self.ep.max_age_seconds
        if path is None or max_age is None:
            return None
        found, value = field_value(body, path)
        when = timestamp(value) if found else None
        if when is None:
            shown = redact_text(str(value))[:100] if found else None
            why = f"{path} is not a time: {shown!r}" if found else f"no field {path!r}"
            return self.finding(
                "http_data_stale",
                Severity.WARNING,
                f"data age unknown: {why}",
                observed=None,
                threshold=max_age,
                evidence={"field": path, "value": shown},
            )
        age = time.time() - when
        if age <= max_age:
            return None
        newest = datetime.fromtimestamp(when, UTC).isoformat()
        return self.finding(
            "http_data_stale",
            Severity.HIGH,
            f"newest data is {age:.0f}s old (expected under {max_age}s)",
            observed=round(age),
            threshold=max_age,
            evidence={"field": path, "newest": newest},
        )


def _unconfigured(params: HttpEndpointsParams, subject: str, summary: str, **kw: Any) -> Finding:
    return Finding(
        check=CHECK,
        target=params.target,
        subject=subject,
        kind="http_unconfigured",
        severity=Severity.INFO,
        evidence=kw,
        summary=summary,
    )


@check(CHECK)
def http_endpoints(ctx: CheckContext, params: HttpEndpointsParams) -> list[Finding]:
    """GET every configured health endpoint and target site (REMEDIATION_HTTP__ENDPOINTS),
    concurrently, each within REMEDIATION_HTTP__TIMEOUT_SECONDS.

    A status other than expect_status, a refused connection or a timeout is
    http_endpoint_down for "health" endpoints (runbook 002 "curl /health") and
    site_unavailable for "site" endpoints (runbook 001 "Check target site availability"),
    both high. Slower than latency_warning_ms / latency_high_ms: http_endpoint_slow.
    json_status_field (a dotted path) not ok / healthy / up / pass / true:
    http_endpoint_unhealthy (high; warning when the field is missing). freshness_field
    (epoch seconds or ISO 8601) older than max_age_seconds: http_data_stale (runbook 004
    "Data Freshness"). Redirects are not followed. Header values are never reported.
    Without endpoints: one http_unconfigured (info)."""
    cfg = ctx.settings.http
    if not cfg.endpoints:
        return [_unconfigured(params, "", "REMEDIATION_HTTP__ENDPOINTS is empty")]
    known = sorted(ep.name for ep in cfg.endpoints)
    findings = [
        _unconfigured(params, name, f"no HTTP endpoint named {name!r}", known=known)
        for name in params.names or []
        if name not in known
    ]
    wanted = [ep for ep in cfg.endpoints if params.names is None or ep.name in params.names]
    if wanted:
        workers = min(cfg.workers, len(wanted))
        with ThreadPoolExecutor(workers, thread_name_prefix="http-probe") as pool:
            probes = list(pool.map(lambda ep: probe(ep, cfg.timeout_seconds), wanted))
        for endpoint, seen in zip(wanted, probes, strict=True):
            findings += _Judge(params, endpoint, seen).findings()
    return findings
