"""Access-log lines to refusals per client: combined log format and JSON lines (pure logic)."""

from __future__ import annotations

import json
import time

from remediation.security.access_logs import Parser, allowed, json_time, parse_ip
from remediation.settings.access import AccessSettings

NOW = 1_790_000_000.0
FIELDS = ("remote_addr", "status", "time")


def clf(ip: str, status: int, when: float = NOW, request: str = "GET / HTTP/1.1") -> bytes:
    stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(when))
    return f'{ip} - - [{stamp}] "{request}" {status} 12 "-" "curl/8"\n'.encode()


def test_combined_lines_count_only_the_configured_statuses() -> None:
    """401, 403 and 429 count; 200, 404 and a 401 in the size field do not."""
    data = b"".join(
        [
            clf("192.0.2.1", 401),
            clf("192.0.2.1", 403),
            clf("192.0.2.1", 429),
            clf("192.0.2.1", 200),
            clf("192.0.2.2", 404),
            b'192.0.2.3 - - [01/Jan/2026:00:00:00 +0000] "GET / HTTP/1.1" 200 401 "-" "x"\n',
        ]
    )
    hits = Parser("combined", [401, 403, 429], FIELDS).parse(data, NOW, NOW - 600)
    assert (hits.lines, hits.matched) == (6, 3)
    assert dict(hits.statuses["192.0.2.1"]) == {401: 1, 403: 1, 429: 1}
    assert set(hits.times) == {"192.0.2.1"}


def test_escaped_quotes_ipv6_and_bad_addresses() -> None:
    """A request with escaped quotes still parses; IPv6 is compressed, an IPv4-mapped address
    is its IPv4 form; a host name or garbage in the client field is skipped, not counted."""
    data = b"".join(
        [
            clf("192.0.2.9", 401, request='GET /a\\"b HTTP/1.1'),
            clf("2001:DB8::0:1", 403),
            clf("::ffff:198.51.100.7", 429),
            clf("evil.example", 401),
            clf("999.1.1.1", 401),
        ]
    )
    hits = Parser("combined", [401, 403, 429], FIELDS).parse(data, NOW, NOW - 600)
    assert set(hits.times) == {"192.0.2.9", "2001:db8::1", "198.51.100.7"}
    assert hits.bad_ip == 2


def test_lines_older_than_the_window_and_future_lines() -> None:
    """A refusal older than findtime does not count; one stamped in the future counts now."""
    data = clf("192.0.2.1", 401, NOW - 700) + clf("192.0.2.1", 401, NOW + 50)
    hits = Parser("combined", [401], FIELDS).parse(data, NOW, NOW - 600)
    assert hits.old == 1 and hits.times["192.0.2.1"] == [NOW]


def test_json_lines_with_configured_nested_fields() -> None:
    """JSON lines read the configured (dotted) fields; the status may be a string; epoch
    seconds, milliseconds and ISO 8601 times all read; broken lines are skipped."""
    lines = [
        {"client": {"ip": "192.0.2.5"}, "http": {"status": 401}, "ts": NOW},
        {"client": {"ip": "192.0.2.5"}, "http": {"status": "403"}, "ts": NOW * 1000},
        {"client": {"ip": "192.0.2.5"}, "http": {"status": 429}, "ts": "2026-09-21T14:13:20Z"},
        {"client": {"ip": "192.0.2.6"}, "http": {"status": 200}, "ts": NOW},
        {"client": "192.0.2.7", "http": {"status": 401}},
    ]
    data = b"\n".join(json.dumps(x).encode() for x in lines) + b"\n{broken 401\n"
    parser = Parser("json", [401, 403, 429], ("client.ip", "http.status", "ts"))
    hits = parser.parse(data, NOW, 0)
    assert set(hits.times) == {"192.0.2.5"}
    assert hits.times["192.0.2.5"][:2] == [NOW, NOW]
    assert hits.times["192.0.2.5"][2] == NOW
    assert json_time("2026-09-21T14:13:20", 0) == NOW  # no zone: UTC
    assert json_time("yesterday", 7.0) == 7.0


def test_allow_list_always_holds_loopback() -> None:
    """Loopback (v4, v6, v4-mapped) is allowed whatever ALLOW_NETWORKS says, plus its nets."""
    nets = AccessSettings(allow_networks=["10.1.0.0/16"]).networks()
    for ip in ("127.0.0.1", "127.255.0.9", "::1", "::ffff:127.0.0.1", "10.1.2.3"):
        parsed = parse_ip(ip)
        assert parsed is not None and allowed(parsed, nets), ip
    other = parse_ip("10.2.0.1")
    assert other is not None and not allowed(other, nets)
