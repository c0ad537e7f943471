"""api_rate_limits against a real local HTTP server that answers with rate-limit headers."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis

from remediation.checks.rate_limits import (
    RateLimitsParams,
    api_rate_limits,
    retry_after,
    usage_from_headers,
)
from remediation.context import CheckContext
from remediation.findings import Finding
from remediation.logging import configure_logging, get_logger
from remediation.throttles import THROTTLE_INDEX, throttle_key
from tests.support.base import free_port

API_KEY = "shpat_SuperSecretKey123"


@dataclass
class Route:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"{}"
    delay: float = 0.0


class ApiServer:
    """A real HTTP server on 127.0.0.1: each path answers as its Route says; records requests."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.seen: list[tuple[str, dict[str, str]]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                api.seen.append((self.path, dict(self.headers)))
                route = api.routes.get(self.path.split("?")[0], Route(404))
                time.sleep(route.delay)
                self.send_response(route.status)
                for name, value in route.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                self.wfile.write(route.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"


@pytest.fixture(scope="module")
def api() -> Iterator[ApiServer]:
    server = ApiServer()
    yield server
    server.server.shutdown()
    server.server.server_close()


def configure(settings_env: Any, api: ApiServer, routes: dict[str, Route], **env: str) -> Any:
    api.routes = routes
    endpoints = [{"name": path.strip("/"), "url": api.url(path)} for path in routes]
    return settings_env(REMEDIATION_RATE_LIMITS__ENDPOINTS=json.dumps(endpoints), **env)


def run(s: Any) -> list[Finding]:
    return api_rate_limits(CheckContext(s, get_logger()), RateLimitsParams())


def by_subject(findings: list[Finding]) -> dict[str, tuple[str, str, Any]]:
    return {f.subject: (f.kind, f.severity.value, f.observed) for f in findings}


def generic(limit: int, remaining: int) -> Route:
    return Route(headers={"X-RateLimit-Limit": str(limit), "X-RateLimit-Remaining": str(remaining)})


def test_generic_and_shopify_headers_give_usage_bands(
    settings_env: Any, r: redis.Redis, api: ApiServer
) -> None:
    """1 - remaining/limit and Shopify n/40: >= 80 % warning, >= 95 % high, below nothing."""
    shopify = "X-Shopify-Shop-Api-Call-Limit"
    s = configure(
        settings_env,
        api,
        {
            "/calm": generic(100, 50),
            "/busy": generic(100, 10),
            "/hot": generic(100, 3),
            "/shop-calm": Route(headers={shopify: "20/40"}),
            "/shop-busy": Route(headers={shopify: "32/40"}),
            "/shop-hot": Route(headers={shopify: "39/40"}),
        },
    )
    assert by_subject(run(s)) == {
        "busy": ("api_rate_limit_high", "warning", 0.9),
        "hot": ("api_rate_limit_high", "high", 0.97),
        "shop-busy": ("api_rate_limit_high", "warning", 0.8),
        "shop-hot": ("api_rate_limit_high", "high", 0.975),
    }


def test_a_429_is_full_usage_with_retry_after_and_quota_is_told_apart(
    settings_env: Any, r: redis.Redis, api: ApiServer
) -> None:
    """HTTP 429 counts as usage 1.0 (high) with Retry-After; insufficient_quota is its own kind."""
    quota = json.dumps({"error": {"code": "insufficient_quota", "type": "insufficient_quota"}})
    s = configure(
        settings_env,
        api,
        {
            "/limited": Route(429, {"Retry-After": "7"}),
            "/openai": Route(429, {"Retry-After": "20"}, quota.encode()),
        },
    )
    found = {f.subject: f for f in run(s)}
    assert by_subject(list(found.values())) == {
        "limited": ("api_rate_limit_high", "high", 1.0),
        "openai": ("api_quota_exhausted", "high", 1.0),
    }
    assert found["limited"].evidence["retry_after_seconds"] == 7.0
    assert found["limited"].evidence["status"] == 429


def test_unreachable_endpoints_are_findings_never_crashes(
    settings_env: Any, r: redis.Redis, api: ApiServer
) -> None:
    """A closed port, an error status and a server slower than the timeout are all reported,
    and the check returns within its bound."""
    api.routes = {"/denied": Route(401), "/slow": Route(delay=3), "/fine": generic(10, 9)}
    endpoints = [{"name": p.strip("/"), "url": api.url(p)} for p in api.routes]
    endpoints.append({"name": "closed", "url": f"http://127.0.0.1:{free_port()}/x"})
    endpoints.append({"name": "garbage", "url": "not a url"})
    s = settings_env(
        REMEDIATION_RATE_LIMITS__ENDPOINTS=json.dumps(endpoints),
        REMEDIATION_RATE_LIMITS__TIMEOUT_SECONDS="0.5",
    )
    started = time.monotonic()
    found = {f.subject: f for f in run(s)}
    assert time.monotonic() - started < 2.5
    assert {k: f.kind for k, f in found.items()} == {
        "denied": "api_rate_limit_unreachable",
        "slow": "api_rate_limit_unreachable",
        "closed": "api_rate_limit_unreachable",
        "garbage": "api_rate_limit_unreachable",
    }
    assert found["denied"].evidence["status"] == 401
    assert found["closed"].evidence["error"] == "ConnectionError"
    assert found["slow"].evidence["error"] in ("ReadTimeout", "ConnectionError", "timed out")


def test_endpoints_are_probed_concurrently(
    settings_env: Any, r: redis.Redis, api: ApiServer
) -> None:
    """Eight endpoints that each take 0.5 s are all read in well under 8 x 0.5 s."""
    routes = {f"/p{i}": Route(headers=generic(10, 1).headers, delay=0.5) for i in range(8)}
    s = configure(settings_env, api, routes)
    started = time.monotonic()
    assert len(run(s)) == 8
    assert time.monotonic() - started < 2.0


def test_api_keys_reach_the_api_but_never_findings_or_logs(
    settings_env: Any, r: redis.Redis, api: ApiServer
) -> None:
    """The endpoint's secret headers are sent; no finding and no log line contains them."""
    api.routes = {"/admin/shop.json": Route(429, {"Retry-After": "1"})}
    endpoints = [
        {
            "name": "shopify",
            "url": api.url(f"/admin/shop.json?k={API_KEY}"),
            "headers": {"X-Shopify-Access-Token": API_KEY},
        }
    ]
    s = settings_env(REMEDIATION_RATE_LIMITS__ENDPOINTS=json.dumps(endpoints))
    stream = io.StringIO()
    configure_logging("DEBUG", "json", stream)
    (finding,) = run(s)
    get_logger().info("check done", findings=[finding.model_dump(mode="json")])
    assert ("X-Shopify-Access-Token", API_KEY) in api.seen[-1][1].items()
    assert finding.evidence["url"].endswith("/admin/shop.json")
    assert API_KEY not in finding.model_dump_json()
    assert API_KEY not in stream.getvalue() and "shopify" in stream.getvalue()


def test_expired_throttles_are_reported_for_restore(settings_env: Any, r: redis.Redis) -> None:
    """A throttle record whose expiry passed is api_sync_throttle_expired; a running one is not."""
    s = settings_env()
    for name, expires in (("shopify", time.time() - 1), ("coingecko", time.time() + 600)):
        r.hset(
            throttle_key(name),
            mapping={"original": "300", "throttled": "600", "expires_at": repr(expires)},
        )
        r.sadd(THROTTLE_INDEX, name)
    (finding,) = run(s)
    assert (finding.kind, finding.subject, finding.severity.value) == (
        "api_sync_throttle_expired",
        "shopify",
        "info",
    )


def test_header_parsing_edge_cases() -> None:
    """Suffixed pairs (OpenAI), IETF RateLimit-*, the worst pair wins; Retry-After as a date."""
    headers = {
        "x-ratelimit-limit-requests": "100",
        "x-ratelimit-remaining-requests": "90",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "100",
    }
    usage = usage_from_headers(headers)
    assert usage is not None and (usage.source, usage.usage) == ("x-ratelimit-limit-tokens", 0.9)
    ietf = usage_from_headers({"RateLimit-Limit": "50, 50;w=60", "RateLimit-Remaining": "0"})
    assert ietf is not None and ietf.usage == 1.0
    assert usage_from_headers({"X-RateLimit-Limit": "0", "X-RateLimit-Remaining": "0"}) is None
    assert usage_from_headers({"X-Shopify-Shop-Api-Call-Limit": "garbage"}) is None
    assert retry_after("Wed, 21 Oct 2015 07:28:10 GMT", 1445412480.0) == 10.0
    assert retry_after("soon", 0) is None
