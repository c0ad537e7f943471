"""http_endpoints: health endpoints and target sites against real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from remediation.checks.http import HttpEndpointsParams, http_endpoints
from remediation.context import CheckContext
from remediation.findings import Finding
from remediation.logging import get_logger
from tests.support.base import free_port


@dataclass
class Route:
    status: int = 200
    body: Any = b""
    delay: float = 0.0
    trickle_seconds: float = 0.0  # send headers at once, then one byte every 0.1 s this long
    headers: dict[str, str] = field(default_factory=dict)


class Site:
    """A real threaded HTTP server whose paths answer as each test says, recording what it got."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: dict[str, list[dict[str, str]]] = defaultdict(list)
        self.inflight = self.max_inflight = 0
        self._lock = threading.Lock()
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                site.requests[path].append(dict(self.headers.items()))
                with site._lock:
                    site.inflight += 1
                    site.max_inflight = max(site.max_inflight, site.inflight)
                try:
                    site.answer(self, site.routes.get(path, Route(404)))
                except OSError:
                    pass  # the client gave up (timeout tests): nothing to answer
                finally:
                    with site._lock:
                        site.inflight -= 1

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 64  # concurrent probes must not overflow the accept backlog

        self.server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    @staticmethod
    def answer(handler: BaseHTTPRequestHandler, route: Route) -> None:
        time.sleep(route.delay)
        body = route.body
        if isinstance(body, dict | list):
            body = json.dumps(body).encode()
        elif isinstance(body, str):
            body = body.encode()
        handler.send_response(route.status)
        for name, value in route.headers.items():
            handler.send_header(name, value)
        if route.trickle_seconds:
            handler.end_headers()
            for _ in range(int(route.trickle_seconds / 0.1)):
                handler.wfile.write(b" ")
                handler.wfile.flush()
                time.sleep(0.1)
            return
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def site() -> Iterator[Site]:
    server = Site()
    yield server
    server.stop()


def configure(settings_env: Any, endpoints: list[dict[str, Any]], **extra: str) -> Any:
    return settings_env(REMEDIATION_HTTP__ENDPOINTS=json.dumps(endpoints), **extra)


def run(s: Any, **params: Any) -> list[Finding]:
    return http_endpoints(CheckContext(s, get_logger()), HttpEndpointsParams(**params))


def by_subject(found: list[Finding]) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for f in found:
        out[f.subject].append((f.kind, f.severity.value))
    return dict(out)


def iso(seconds_ago: float, suffix: str = "Z") -> str:
    when = datetime.fromtimestamp(time.time() - seconds_ago, UTC).replace(tzinfo=None)
    return when.isoformat() + suffix


def test_healthy_endpoint_has_no_findings(settings_env: Any, site: Site) -> None:
    """A 200 with status ok and fresh data, in time, is no finding at all."""
    site.routes["/health"] = Route(body={"status": "OK", "updated_at": time.time()})
    s = configure(
        settings_env,
        [
            {
                "name": "api",
                "url": site.url("/health"),
                "json_status_field": "status",
                "freshness_field": "updated_at",
                "max_age_seconds": 60,
            }
        ],
    )
    assert run(s) == []


def test_wrong_status_is_down_for_health_and_unavailable_for_site(
    settings_env: Any, site: Site
) -> None:
    """A status other than expect_status is http_endpoint_down (health) or site_unavailable
    (site), and a redirect is not followed."""
    site.routes["/health"] = Route(503, {"status": "down"})
    site.routes["/shop"] = Route(500, "<html>oops</html>")
    site.routes["/moved"] = Route(302, headers={"Location": "/ok"})
    site.routes["/ok"] = Route(200)
    s = configure(
        settings_env,
        [
            {"name": "api", "url": site.url("/health")},
            {"name": "shop", "url": site.url("/shop"), "kind": "site"},
            {"name": "moved", "url": site.url("/moved")},
            {"name": "moved-expected", "url": site.url("/moved"), "expect_status": 302},
        ],
    )
    found = {f.subject: f for f in run(s)}
    assert by_subject(list(found.values())) == {
        "api": [("http_endpoint_down", "high")],
        "shop": [("site_unavailable", "high")],
        "moved": [("http_endpoint_down", "high")],
    }
    assert (found["api"].observed, found["api"].threshold) == (503, 200)
    assert found["moved"].observed == 302 and "/ok" not in site.requests


def test_connection_refused_names_the_error_class(settings_env: Any) -> None:
    """Nothing listening is down with the error's class (and its cause), never a crash."""
    s = configure(
        settings_env,
        [
            {"name": "gone", "url": f"http://127.0.0.1:{free_port()}/health"},
            {"name": "gone-site", "kind": "site", "url": f"http://127.0.0.1:{free_port()}/"},
        ],
    )
    found = {f.subject: f for f in run(s)}
    assert found["gone"].kind == "http_endpoint_down"
    assert found["gone-site"].kind == "site_unavailable"
    assert found["gone"].evidence["error"] == "ConnectionError (ConnectionRefusedError)"


def test_latency_bands_and_timeouts(settings_env: Any, site: Site) -> None:
    """Slow answers are banded; no answer within the timeout, or a body still trickling in
    at the timeout, is down; the whole run stays bounded by the timeout."""
    site.routes["/slow"] = Route(body="ok", delay=0.4)
    site.routes["/hang"] = Route(body="late", delay=5)
    site.routes["/trickle"] = Route(trickle_seconds=5)
    s = configure(
        settings_env,
        [
            {
                "name": "slow-high",
                "url": site.url("/slow"),
                "latency_warning_ms": 100,
                "latency_high_ms": 300,
            },
            {
                "name": "slow-warning",
                "url": site.url("/slow"),
                "latency_warning_ms": 100,
                "latency_high_ms": 900,
            },
            {"name": "hang", "url": site.url("/hang")},
            {"name": "trickle", "url": site.url("/trickle")},
        ],
        REMEDIATION_HTTP__TIMEOUT_SECONDS="1.5",
    )
    started = time.monotonic()
    found = {f.subject: f for f in run(s)}
    elapsed = time.monotonic() - started
    assert by_subject(list(found.values())) == {
        "slow-high": [("http_endpoint_slow", "high")],
        "slow-warning": [("http_endpoint_slow", "warning")],
        "hang": [("http_endpoint_down", "high")],
        "trickle": [("http_endpoint_down", "high")],
    }
    assert 400 <= found["slow-high"].observed < 1500 and found["slow-high"].threshold == 300
    assert found["hang"].evidence["error"].startswith("ReadTimeout")
    assert found["trickle"].evidence["error"] == "ProbeTimeout"
    assert elapsed < 4, f"a run with a 1.5 s timeout took {elapsed:.1f} s"


def test_json_status_field(settings_env: Any, site: Site) -> None:
    """A status other than ok/healthy/up/pass is unhealthy (high); a missing field or a body
    that is not JSON is unhealthy (warning); dotted paths reach nested fields."""
    site.routes["/degraded"] = Route(body={"status": "degraded"})
    site.routes["/healthy"] = Route(body={"status": "Healthy"})
    site.routes["/nested"] = Route(body={"checks": {"db": {"status": "FAIL"}}})
    site.routes["/nofield"] = Route(body={"state": "ok"})
    site.routes["/html"] = Route(body="<html>fine</html>")
    endpoints = [
        {"name": "degraded", "path": "/degraded", "field": "status"},
        {"name": "healthy", "path": "/healthy", "field": "status"},
        {"name": "nested", "path": "/nested", "field": "checks.db.status"},
        {"name": "nofield", "path": "/nofield", "field": "status"},
        {"name": "html", "path": "/html", "field": "status"},
    ]
    s = configure(
        settings_env,
        [
            {"name": e["name"], "url": site.url(e["path"]), "json_status_field": e["field"]}
            for e in endpoints
        ],
    )
    found = {f.subject: f for f in run(s)}
    assert by_subject(list(found.values())) == {
        "degraded": [("http_endpoint_unhealthy", "high")],
        "nested": [("http_endpoint_unhealthy", "high")],
        "nofield": [("http_endpoint_unhealthy", "warning")],
        "html": [("http_endpoint_unhealthy", "warning")],
    }
    assert found["degraded"].observed == "degraded" and found["nested"].observed == "FAIL"
    assert "not JSON" in found["html"].summary


def test_stale_freshness_epoch_and_iso(settings_env: Any, site: Site) -> None:
    """An epoch or ISO 8601 time older than max_age_seconds is http_data_stale with its age;
    fresh times (seconds, milliseconds, offsets) pass; an unreadable time is a warning."""
    now = time.time()
    cases = {
        "epoch-old": now - 7200,
        "iso-old": iso(7200),
        "iso-naive-old": iso(7200, suffix=""),
        "epoch-fresh": now - 5,
        "epoch-ms-fresh": int((now - 5) * 1000),
        "iso-fresh": iso(5, suffix="+00:00"),
        "garbage": "yesterday-ish",
    }
    for name, value in cases.items():
        site.routes[f"/{name}"] = Route(body={"data": {"last_update": value}})
    s = configure(
        settings_env,
        [
            {
                "name": name,
                "url": site.url(f"/{name}"),
                "freshness_field": "data.last_update",
                "max_age_seconds": 600,
            }
            for name in cases
        ],
    )
    found = {f.subject: f for f in run(s)}
    assert by_subject(list(found.values())) == {
        "epoch-old": [("http_data_stale", "high")],
        "iso-old": [("http_data_stale", "high")],
        "iso-naive-old": [("http_data_stale", "high")],
        "garbage": [("http_data_stale", "warning")],
    }
    for name in ("epoch-old", "iso-old", "iso-naive-old"):
        assert 7190 <= found[name].observed <= 7260 and found[name].threshold == 600
    assert found["garbage"].observed is None


def test_secret_headers_are_sent_but_never_reported(
    settings_env: Any, site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    """Header values reach the server, yet no finding, summary or log line carries them, nor
    the URL's password or query values."""
    site.routes["/health"] = Route(500, {"status": "error"})
    headers = {"X-Api-Key": "sk-live-SECRET-123", "Authorization": "Bearer tok-SECRET-456"}
    basic = site.url("/health").replace("http://", "http://ops:pw-HUNTER2@")
    s = configure(
        settings_env,
        [
            {"name": "keyed", "url": site.url("/health") + "?key=QSECRET-77", "headers": headers},
            {"name": "basic", "url": basic},
        ],
    )
    found = {f.subject: f for f in run(s)}
    assert set(found) == {"keyed", "basic"}
    sent = {h.get("X-Api-Key"): h for h in site.requests["/health"]}["sk-live-SECRET-123"]
    assert sent["Authorization"] == "Bearer tok-SECRET-456"
    captured = capsys.readouterr()
    dumped = json.dumps([f.model_dump() for f in found.values()]) + captured.out + captured.err
    for secret in ("SECRET-123", "SECRET-456", "HUNTER2", "QSECRET"):
        assert secret not in dumped
    assert found["keyed"].evidence["url"].endswith("/health?key=***")
    assert "ops:***@" in found["basic"].evidence["url"]


def test_concurrency_is_bounded_by_workers(settings_env: Any, site: Site) -> None:
    """Eight 0.5 s endpoints take about 0.5 s with eight workers, and two workers never have
    more than two requests in flight."""
    site.routes["/slow"] = Route(body="ok", delay=0.5)
    endpoints = [
        {
            "name": f"ep{i}",
            "url": site.url("/slow"),
            "latency_warning_ms": 5000,
            "latency_high_ms": 9000,
        }
        for i in range(8)
    ]
    s = configure(settings_env, endpoints, REMEDIATION_HTTP__WORKERS="8")
    started = time.monotonic()
    assert run(s) == []
    assert time.monotonic() - started < 3
    assert site.max_inflight > 2

    site.max_inflight = 0
    s = configure(settings_env, endpoints, REMEDIATION_HTTP__WORKERS="2")
    started = time.monotonic()
    assert run(s) == []
    assert time.monotonic() - started >= 1.9  # four rounds of 0.5 s
    assert site.max_inflight == 2


def test_names_filter_and_unconfigured(settings_env: Any, site: Site) -> None:
    """`names` probes only the named endpoints; an unknown name, or no endpoints at all, is
    one http_unconfigured (info)."""
    site.routes["/a"] = Route(500)
    site.routes["/b"] = Route(500)
    s = configure(
        settings_env, [{"name": "a", "url": site.url("/a")}, {"name": "b", "url": site.url("/b")}]
    )
    assert by_subject(run(s, names=["a", "typo"])) == {
        "a": [("http_endpoint_down", "high")],
        "typo": [("http_unconfigured", "info")],
    }
    assert "/b" not in site.requests
    s = configure(settings_env, [])
    assert [(f.kind, f.severity.value) for f in run(s)] == [("http_unconfigured", "info")]
