"""proxy_pool_health against real HTTP proxies (tinyproxy, proxy.py) and a real origin.

The origin tells proxies apart by the X-Proxy header each tinyproxy adds (AddHeader) and
answers per proxy: normally, slowly, 403/429, a CAPTCHA page, 500, or 403 after N requests.
The proxy and origin helpers live in tests/support (http_doubles, proxy_pool).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import structlog

from remediation.proxies import BAN_RATE_KEY, INDEX_KEY, LAST_BAN_AT_KEY, proxy_id
from tests.support.http_doubles import Behaviour, Origin, ProxyProcess
from tests.support.proxy_pool import (
    expire_quarantine,
    kinds,
    pool_settings,
    published,
    record,
    rotate,
    run_check,
)

CAPTCHA_PAGE = b"<html><form id='captcha'>Please verify you are human</form></html>"


def test_classifies_ok_slow_banned_captcha_and_dead(
    settings_env: Any, r: redis.Redis, origin: Origin, proxy: Callable[..., ProxyProcess]
) -> None:
    """Each proxy gets the status its origin answer implies; bans and failures are findings."""
    origin.behaviour.update(
        slow=Behaviour(delay=0.5),
        forbidden=Behaviour(status=403),
        limited=Behaviour(status=429),
        captcha=Behaviour(body=CAPTCHA_PAGE),
        error=Behaviour(status=500),
        hang=Behaviour(delay=1.5),
    )
    names = ["fine", "slow", "forbidden", "limited", "captcha", "error", "hang"]
    urls = {name: proxy(name).url() for name in names}
    urls["proxy.py"] = proxy("pp", kind="proxy.py").url()
    stopped = proxy("stopped")
    stopped.stop()  # its port now refuses connections
    urls["stopped"] = stopped.url()
    s = pool_settings(settings_env, list(urls.values()), origin)
    started = time.monotonic()
    found = kinds(run_check(s))
    elapsed = time.monotonic() - started
    status = {
        name: (record(r, url)["last_status"], record(r, url)["last_reason"])
        for name, url in urls.items()
    }
    assert status == {
        "fine": ("ok", "HTTP 200"),
        "proxy.py": ("ok", "HTTP 200"),
        "slow": ("slow", status["slow"][1]),
        "forbidden": ("banned", "HTTP 403"),
        "limited": ("banned", "HTTP 429"),
        "captcha": ("banned", "CAPTCHA marker 'captcha'"),
        "error": ("dead", "HTTP 500"),
        "hang": ("dead", "no answer within 1s"),
        "stopped": ("dead", "connection refused"),
    }
    assert float(record(r, urls["slow"])["last_latency_ms"]) >= 500
    assert sorted(found) == ["proxy_banned", "proxy_dead"]
    banned = found["proxy_banned"]
    assert banned.observed == round(3 / 9, 4) and banned.severity.value == "high"
    assert {p["id"] for p in banned.evidence["proxies"]} == {
        proxy_id(urls[n]) for n in ("forbidden", "limited", "captcha")
    }
    assert found["proxy_dead"].observed == 3
    assert r.get(BAN_RATE_KEY) == b"0.3333"
    assert abs(float(r.get(LAST_BAN_AT_KEY) or 0) - time.time()) < 10
    assert stopped.url() in published(r)  # the check reports; only rotate_proxies takes proxies out
    assert elapsed < 3  # nine tests at once: bounded by the 1 s timeout, not their sum


def test_ban_after_n_requests_updates_ban_rate_and_last_ban(
    settings_env: Any, r: redis.Redis, origin: Origin, proxy: Callable[..., ProxyProcess]
) -> None:
    """A proxy the origin starts banning after one request turns the published ban rate to 0.5."""
    origin.behaviour["flaky"] = Behaviour(ban_after=1)
    urls = [proxy("flaky").url(), proxy("steady").url()]
    s = pool_settings(settings_env, urls, origin)
    assert run_check(s) == []
    assert r.get(BAN_RATE_KEY) == b"0.0" and r.get(LAST_BAN_AT_KEY) is None
    assert published(r) == set(urls)
    found = kinds(run_check(s))
    assert list(found) == ["proxy_banned"] and found["proxy_banned"].observed == 0.5
    assert r.get(BAN_RATE_KEY) == b"0.5" and r.get(LAST_BAN_AT_KEY) is not None
    assert record(r, urls[0])["last_status"] == "banned"
    assert record(r, urls[0])["consecutive_failures"] == "0"  # banned is not dead


def test_concurrency_is_bounded_by_workers(
    settings_env: Any, r: redis.Redis, origin: Origin, proxy: Callable[..., ProxyProcess]
) -> None:
    """Six proxies with two workers: never more than two tests in flight, three rounds long."""
    names = [f"p{i}" for i in range(6)]
    for name in names:
        origin.behaviour[name] = Behaviour(delay=0.3)
    urls = [proxy(name).url() for name in names]
    s = pool_settings(
        settings_env,
        urls,
        origin,
        REMEDIATION_PROXIES__WORKERS="2",
        REMEDIATION_PROXIES__SLOW_MS="5000",
    )
    started = time.monotonic()
    assert run_check(s) == []
    assert origin.max_inflight == 2
    assert time.monotonic() - started >= 0.9
    origin.max_inflight = 0
    s = pool_settings(
        settings_env,
        urls,
        origin,
        REMEDIATION_PROXIES__WORKERS="6",
        REMEDIATION_PROXIES__SLOW_MS="5000",
    )
    started = time.monotonic()
    run_check(s)
    assert origin.max_inflight == 6 and time.monotonic() - started < 0.9


def test_malformed_entries_are_rejected_by_line_and_the_rest_load(
    settings_env: Any,
    r: redis.Redis,
    origin: Origin,
    proxy: Callable[..., ProxyProcess],
    tmp_path: Path,
) -> None:
    """Each bad entry is named by its line or item, without its password; good ones load."""
    a, b = proxy("a").url(), proxy("b").url()
    listing = tmp_path / "proxies.txt"
    listing.write_text(
        "# pool for the scrapers\n"
        f"{a} us\n"
        "\n"
        "http://127.0.0.1 eu\n"
        "ftp://127.0.0.1:21\n"
        "http://user:hunter2@127.0.0.1 us\n"
        "http://127.0.0.1:99999\n"
        f"{b} eu extra\n"
        "socks5://127.0.0.1:1080\n"
        f"{a}\n"
        f"{b} EU   # the second one\n"
        "http://127.0.0.1:3128/path\n"
    )
    s = pool_settings(
        settings_env,
        ["127.0.0.1:3128", "https://:8080"],
        origin,
        REMEDIATION_PROXIES__FILE=str(listing),
    )
    found = kinds(run_check(s))
    assert list(found) == ["proxy_config_invalid"]
    assert found["proxy_config_invalid"].evidence["errors"] == [
        "PROXY_LIST item 1: missing scheme: expected http://host:port or https://host:port",
        "PROXY_LIST item 2: missing host",
        "proxies file line 4: missing port",
        "proxies file line 5: unsupported scheme 'ftp': use http:// or https://",
        "proxies file line 6: missing port",
        "proxies file line 7: port must be a number from 1 to 65535",
        "proxies file line 8: expected 'URL [REGION]', got 3 fields",
        "proxies file line 9: socks5:// is not supported (no SOCKS support installed); use http(s)",
        "proxies file line 10: duplicate of proxies file line 2",
        "proxies file line 12: a proxy URL has no path, query or fragment",
    ]
    assert "hunter2" not in found["proxy_config_invalid"].model_dump_json()
    assert {m.decode() for m in r.smembers(INDEX_KEY)} == {proxy_id(a), proxy_id(b)}
    assert (record(r, a)["region"], record(r, b)["region"]) == ("us", "eu")
    assert record(r, b)["last_status"] == "ok"


def test_passwords_never_reach_findings_or_logs(
    settings_env: Any, r: redis.Redis, origin: Origin, proxy: Callable[..., ProxyProcess]
) -> None:
    """Credentialed proxies are named by id and host:port; scrapers still get the full URL."""
    origin.behaviour["banned"] = Behaviour(status=403)
    good = proxy("auth", auth=("scraper", "s3cret-pw"))
    banned = proxy("banned", auth=("scraper", "other-s3cret"))
    wrong = f"http://intruder:wr0ng-s3cret@127.0.0.1:{good.port}"
    s = pool_settings(settings_env, [good.url(), banned.url(), wrong], origin)
    with structlog.testing.capture_logs() as logs:
        findings = run_check(s)
    assert record(r, good.url())["last_status"] == "ok"
    assert record(r, wrong)["last_reason"] == "authentication failed (HTTP 401)"
    assert sorted(kinds(findings)) == ["proxy_banned", "proxy_dead"]
    text = json.dumps([f.model_dump(mode="json") for f in findings]) + repr(logs)
    for secret in ("s3cret-pw", "other-s3cret", "wr0ng-s3cret"):
        assert secret not in text
    assert f"http://127.0.0.1:{banned.port}" in text
    assert published(r) == {good.url(), banned.url(), wrong}


def test_configuration_changes_sync_the_pool_and_its_published_set(
    settings_env: Any,
    r: redis.Redis,
    origin: Origin,
    proxy: Callable[..., ProxyProcess],
    tmp_path: Path,
) -> None:
    """A removed proxy leaves the pool and the set; an unreadable file removes nothing."""
    a, b, c = (proxy(n).url() for n in "abc")
    run_check(pool_settings(settings_env, [a, b], origin))
    assert published(r) == {a, b}
    run_check(pool_settings(settings_env, [b, c], origin))
    assert published(r) == {b, c} and record(r, a) == {}
    missing = str(tmp_path / "nope.txt")
    found = kinds(
        run_check(pool_settings(settings_env, [c], origin, REMEDIATION_PROXIES__FILE=missing))
    )
    assert found["proxy_config_invalid"].evidence["errors"] == [
        f"proxies file {missing}: cannot read (No such file or directory)"
    ]
    assert published(r) == {b, c}  # b is kept: the file it may be listed in was not read


def test_quarantined_proxy_is_retested_only_after_its_backoff(
    settings_env: Any, r: redis.Redis, origin: Origin, proxy: Callable[..., ProxyProcess]
) -> None:
    """While in quarantine a proxy is not tested; after it, a pass is a proxy_recovered finding."""
    origin.behaviour["flaky"] = Behaviour(status=403)
    flaky, steady = proxy("flaky").url(), proxy("steady").url()
    s = pool_settings(settings_env, [flaky, steady], origin)
    run_check(s)
    rotate(s)
    assert record(r, flaky)["state"] == "quarantined"
    origin.behaviour["flaky"] = Behaviour()
    assert run_check(s) == [] and origin.counts["flaky"] == 1
    expire_quarantine(r, flaky)
    found = kinds(run_check(s))
    assert origin.counts["flaky"] == 2
    assert list(found) == ["proxy_recovered"]
    assert [p["id"] for p in found["proxy_recovered"].evidence["proxies"]] == [proxy_id(flaky)]


def test_pool_low_and_region_low(
    settings_env: Any, r: redis.Redis, origin: Origin, proxy: Callable[..., ProxyProcess]
) -> None:
    """Healthy active proxies under min_active is high (critical at zero); so is a thin region."""
    origin.behaviour.update(eu1=Behaviour(status=403), eu2=Behaviour(status=500))
    us, eu1, eu2 = proxy("us").url(), proxy("eu1").url(), proxy("eu2").url()
    s = pool_settings(
        settings_env,
        [f"{us} us", f"{eu1} eu", f"{eu2} EU"],
        origin,
        REMEDIATION_PROXIES__MIN_ACTIVE="3",
        REMEDIATION_PROXIES__REGION_TARGETS='{"eu": 0.5, "us": 0.3}',
    )
    found = kinds(run_check(s))
    assert sorted(found) == ["proxy_banned", "proxy_dead", "proxy_pool_low", "region:eu"]
    low = found["proxy_pool_low"]
    assert (low.severity.value, low.observed, low.threshold) == ("high", 1, 3)
    assert (found["region:eu"].observed, found["region:eu"].threshold) == (0.0, 0.5)
    origin.behaviour["us"] = Behaviour(status=429)
    assert kinds(run_check(s))["proxy_pool_low"].severity.value == "critical"


def test_unconfigured_pool_is_reported_and_left_alone(
    settings_env: Any, r: redis.Redis, origin: Origin
) -> None:
    """Without a test URL, or without proxies, one info finding and no key written."""
    s = settings_env(REMEDIATION_PROXIES__PROXY_LIST='["http://127.0.0.1:3128"]')
    (finding,) = run_check(s)
    assert (finding.kind, finding.severity.value) == ("proxy_pool_unconfigured", "info")
    assert finding.evidence["missing"] == ["REMEDIATION_PROXIES__TEST_URL"]
    (finding,) = run_check(pool_settings(settings_env, [], origin))
    assert finding.evidence["missing"] == [
        "REMEDIATION_PROXIES__PROXY_LIST or __FILE (no valid entry)"
    ]
    assert r.keys("*") == []
