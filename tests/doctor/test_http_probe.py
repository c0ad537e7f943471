"""The HTTP probe: endpoints against a local origin, proxies as real tinyproxy processes."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from remediation.doctor import http as http_probe
from remediation.settings import Settings
from tests.support.base import free_port
from tests.support.http_doubles import Behaviour, Origin, ProxyProcess


def _endpoint(name: str, url: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "url": url, **kw}


def test_nothing_configured_is_one_ok_row() -> None:
    """No endpoints and no proxies: one ok row."""
    rows = http_probe.probe(Settings())
    assert [(r.status, r.what) for r in rows] == [("ok", "configured")]


def test_endpoint_answers_ok_and_closed_port_fails(origin: Origin) -> None:
    """The local origin answers 200 (ok); a closed port is a fail row naming the exact
    variable to correct; a query-string key is never shown."""
    closed = f"http://127.0.0.1:{free_port()}/health?key=SECRETKEY"
    endpoints = [_endpoint("shop", origin.url), _endpoint("api", closed)]
    rows = http_probe.probe(Settings(http={"endpoints": endpoints, "timeout_seconds": 2}))
    by = {r.target: r for r in rows}
    assert by["shop"].status == "ok" and by["shop"].detail.startswith("HTTP 200"), by["shop"]
    assert by["api"].status == "fail"
    assert (
        by["api"].fix
        == "start the service or correct REMEDIATION_HTTP__ENDPOINTS[1].url (endpoint api)"
    )
    assert "SECRETKEY" not in json.dumps([r.as_dict() for r in rows])


def test_endpoint_wrong_status_cannot_tell(origin: Origin) -> None:
    """An endpoint answering another status than expected is "cannot tell", naming expect_status."""
    origin.behaviour["-"] = Behaviour(status=503)
    rows = http_probe.probe(Settings(http={"endpoints": [_endpoint("shop", origin.url)]}))
    assert [(r.status, r.detail.split(" in ")[0]) for r in rows] == [("unknown", "HTTP 503")]
    assert "REMEDIATION_HTTP__ENDPOINTS[0].expect_status" in rows[0].fix


def test_proxies_through_tinyproxy(origin: Origin, proxy: Callable[..., ProxyProcess]) -> None:
    """With a test URL, a running tinyproxy (with credentials) relays the GET (ok); a dead
    port fails with the fix naming the setting; the proxy password is never shown."""
    good = proxy("p1", auth=("user", "proxy-pw-123"))
    dead = f"http://127.0.0.1:{free_port()}"
    cfg = {"proxy_list": [good.url(), dead], "test_url": origin.url, "timeout_seconds": 2}
    rows = http_probe.probe(Settings(proxies=cfg))
    assert [r.status for r in rows] == ["ok", "fail"], rows
    assert rows[0].target == f"http://127.0.0.1:{good.port}"
    assert rows[1].fix == (
        f"start the proxy {dead} or correct (or remove) it in"
        " REMEDIATION_PROXIES__PROXY_LIST / REMEDIATION_PROXIES__FILE"
    )
    assert all(r.needed_by == ("rotate_proxies",) for r in rows)
    assert "proxy-pw-123" not in json.dumps([r.as_dict() for r in rows])


def test_proxies_without_test_url_tcp_connect(proxy: Callable[..., ProxyProcess]) -> None:
    """Without a test URL each proxy gets a TCP connect: tinyproxy ok, a closed port fails;
    a malformed entry is a fail row of its own."""
    good = proxy("p2")
    dead = f"http://127.0.0.1:{free_port()}"
    cfg = {"proxy_list": [good.url(), dead, "socks5://127.0.0.1:1080"]}
    rows = http_probe.probe(Settings(proxies=cfg))
    got = [(r.status, r.what.split(" ")[0]) for r in rows]
    assert got == [("fail", "entry"), ("ok", "TCP"), ("fail", "TCP")], rows
    assert "PROXY_LIST item 3" in rows[0].detail
