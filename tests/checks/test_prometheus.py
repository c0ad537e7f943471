"""prometheus_slo and the Prometheus client against a real Prometheus (Debian's 2.42) that
scrapes a real exporter in the test process every second."""

from __future__ import annotations

import gzip
import json
import math
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from remediation.checks.prometheus import PrometheusSloParams, prometheus_slo
from remediation.clients.prometheus import (
    MAX_BODY_BYTES,
    PrometheusClient,
    PrometheusHTTPError,
    PrometheusQueryError,
    PrometheusUnreachable,
    PrometheusValueError,
    Sample,
)
from remediation.context import CheckContext
from remediation.findings import Finding
from remediation.logging import get_logger
from remediation.settings import DEFAULT_PROMETHEUS_RULES
from tests.support.alerting import PROMETHEUS, Process, prometheus
from tests.support.base import free_port, wait_for
from tests.support.env import missing

SCRAPE_WAIT = 20
"""Seconds a test waits for a change to be scraped (1 s interval) and show in a query."""


class Exporter:
    """The application's metrics, served by prometheus_client from a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "http_requests", "requests", ["app", "status"], registry=self.registry
        )
        self.duration = Histogram(
            "http_request_duration_seconds",
            "latency",
            ["app"],
            buckets=(0.1, 0.5, 1, 2, 5, 10),
            registry=self.registry,
        )
        self.scraper = Counter(
            "scraper_requests", "scrapes", ["app", "outcome"], registry=self.registry
        )
        self.sources = Counter(
            "source_requests", "source calls", ["app", "source", "outcome"], registry=self.registry
        )
        self.llm = Counter("llm_errors", "LLM errors", ["app", "reason"], registry=self.registry)
        self.port = free_port()
        self.server, _ = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Stack:
    prometheus: Process
    exporter: Exporter

    @property
    def url(self) -> str:
        return self.prometheus.url

    def value(self, query: str) -> float | None:
        """The single value of query now, or None when it has no data."""
        with PrometheusClient(self.url) as client:
            samples = client.query(query)
        return samples[0].value if samples else None

    def wait_value(self, query: str, expected: float) -> None:
        """Until Prometheus has scraped the change: query equals expected."""
        wait_for(
            lambda: _close(self.value(query), expected), SCRAPE_WAIT, 0.2, f"{query} == {expected}"
        )


def _close(value: float | None, expected: float) -> bool:
    return value is not None and math.isclose(value, expected, rel_tol=1e-9, abs_tol=1e-12)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One Prometheus and one exporter for the module; each test uses its own `app` label."""
    if not Path(PROMETHEUS).exists():
        missing("prometheus (apt-get install prometheus)")
    exporter = Exporter()
    server = prometheus(tmp_path_factory.mktemp("prometheus"), [exporter.target])
    try:
        server.start()
        query = f'up{{job="app",instance="{exporter.target}"}}'
        stack = Stack(server, exporter)
        stack.wait_value(query, 1)
        yield stack
    finally:
        server.stop()
        exporter.stop()


def rule(name: str, query: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "query": query, **kw}


def configure(settings_env: Any, url: str, rules: list[dict[str, Any]] | None, **env: str) -> Any:
    if rules is not None:
        env["REMEDIATION_PROMETHEUS__RULES"] = json.dumps(rules)
    return settings_env(REMEDIATION_PROMETHEUS__URL=url, **env)


def run(s: Any, **params: Any) -> list[Finding]:
    return prometheus_slo(CheckContext(s, get_logger()), PrometheusSloParams(**params))


def seen(found: list[Finding]) -> set[tuple[str, str, str]]:
    return {(f.subject, f.kind, f.severity.value) for f in found}


ERROR_RATE = (
    'sum(http_requests_total{app="bands",status=~"5.."}) / sum(http_requests_total{app="bands"})'
)


def test_error_rate_crosses_each_band(settings_env: Any, stack: Stack) -> None:
    """The 5xx share at 3 / 6.7 / 14.9 / 23.6 % is nothing, then warning, high, critical
    (runbook 002 bands), each with the band it passed and the scraped value."""
    ok = stack.exporter.requests.labels(app="bands", status="200")
    errors = stack.exporter.requests.labels(app="bands", status="503")
    s = configure(
        settings_env,
        stack.url,
        [
            rule(
                "error_rate",
                ERROR_RATE,
                kind="error_rate_high",
                warning=0.05,
                high=0.10,
                critical=0.20,
            )
        ],
    )
    ok.inc(97)
    expected: list[tuple[int, int, str | None, float | None]] = [
        (3, 3, None, None),  # add 3 errors: 3 / 100
        (4, 7, "warning", 0.05),  # 7 / 104
        (10, 17, "high", 0.10),  # 17 / 114
        (13, 30, "critical", 0.20),  # 30 / 127
    ]
    for add, total_errors, severity, band in expected:
        errors.inc(add)
        ratio = total_errors / (97 + total_errors)
        stack.wait_value(ERROR_RATE, ratio)
        found = run(s)
        if severity is None:
            assert found == []
            continue
        (finding,) = found
        assert (finding.subject, finding.kind, finding.severity.value) == (
            "error_rate",
            "error_rate_high",
            severity,
        )
        assert finding.threshold == band and finding.observed == pytest.approx(ratio)
        assert finding.evidence["query"] == ERROR_RATE
        assert finding.evidence["bands"] == {"warning": 0.05, "high": 0.10, "critical": 0.20}


def test_below_bands_and_one_finding_per_series(settings_env: Any, stack: Stack) -> None:
    """A `below` rule reports each breaching series on its own, labels in a stable subject;
    a healthy series and a rule's unset bands report nothing."""
    for source, good, bad in (
        ("coingecko", 99, 1),
        ("dexscreener", 90, 10),
        ("blockscout", 40, 60),
    ):
        stack.exporter.sources.labels(app="sla", source=source, outcome="success").inc(good)
        stack.exporter.sources.labels(app="sla", source=source, outcome="error").inc(bad)
    stack.exporter.scraper.labels(app="sla", outcome="success").inc(45)
    stack.exporter.scraper.labels(app="sla", outcome="blocked").inc(55)
    sla = (
        'sum by (source) (source_requests_total{app="sla",outcome="success"})'
        ' / sum by (source) (source_requests_total{app="sla"})'
    )
    scraper = (
        'sum(scraper_requests_total{app="sla",outcome="success"})'
        ' / sum(scraper_requests_total{app="sla"})'
    )
    s = configure(
        settings_env,
        stack.url,
        [
            rule("sla_success_rate", sla, direction="below", high=0.95),
            rule(
                "scraper_success_rate",
                scraper,
                kind="error_rate_high",
                direction="below",
                high=0.80,
                critical=0.50,
            ),
        ],
    )
    stack.wait_value(scraper, 0.45)
    wait_for(lambda: stack.value(f"count({sla})") == 3, SCRAPE_WAIT, 0.2, "three sources")
    found = {f.subject: f for f in run(s)}
    assert seen(list(found.values())) == {
        ('sla_success_rate{source="blockscout"}', "slo_breach", "high"),
        ('sla_success_rate{source="dexscreener"}', "slo_breach", "high"),
        ("scraper_success_rate", "error_rate_high", "critical"),
    }
    dex = found['sla_success_rate{source="dexscreener"}']
    assert dex.observed == pytest.approx(0.9) and dex.threshold == 0.95
    assert dex.evidence["labels"] == {"source": "dexscreener"}
    assert found["scraper_success_rate"].threshold == 0.5


def test_histogram_p95(settings_env: Any, stack: Stack) -> None:
    """histogram_quantile over the latency buckets: fast traffic passes, a slow half moves
    P95 to 4.7 s, which is high (> 2 s) and not critical (> 5 s)."""
    p95 = 'histogram_quantile(0.95, sum by (le) (http_request_duration_seconds_bucket{app="p95"}))'
    s = configure(
        settings_env, stack.url, [rule("latency_p95", p95, warning=1, high=2, critical=5)]
    )
    hist = stack.exporter.duration.labels(app="p95")
    for _ in range(100):
        hist.observe(0.05)
    stack.wait_value(p95, 0.095)  # interpolated inside the first bucket (0, 0.1]
    assert run(s) == []
    for _ in range(100):
        hist.observe(3)
    stack.wait_value(p95, 4.7)  # rank 190 of 200: 2 + (190 - 100) / 100 * (5 - 2)
    (finding,) = run(s)
    assert (finding.kind, finding.severity.value, finding.threshold) == ("slo_breach", "high", 2)


def test_rate_window_counts_llm_quota_errors(settings_env: Any, stack: Stack) -> None:
    """A counter jump inside a short increase() window is llm_quota_exhausted (runbook 000)."""
    quota = (
        'sum(increase(llm_errors_total{app="llm",reason=~"rate_limited|insufficient_quota"}[10s]))'
    )
    s = configure(
        settings_env,
        stack.url,
        [rule("llm_quota_errors", quota, kind="llm_quota_exhausted", high=5)],
    )
    limited = stack.exporter.llm.labels(app="llm", reason="rate_limited")
    stack.wait_value('sum(llm_errors_total{app="llm"})', 0)  # the counter's start is scraped
    assert run(s) == []
    limited.inc(12)

    def breached() -> list[Finding]:
        return [f for f in run(s) if f.kind == "llm_quota_exhausted"]

    (finding,) = wait_for(breached, SCRAPE_WAIT, 0.5, "llm_quota_exhausted")
    assert finding.severity.value == "high" and finding.observed >= 12


def test_default_rules_are_valid_promql(settings_env: Any, stack: Stack) -> None:
    """Prometheus accepts every shipped rule's query; without matching data they report
    nothing, and never a query error."""
    with PrometheusClient(stack.url) as client:
        for default in DEFAULT_PROMETHEUS_RULES:
            client.query(default.query)  # raises PrometheusQueryError naming the problem
    s = configure(settings_env, stack.url, None)
    assert len(s.prometheus.rules) == len(DEFAULT_PROMETHEUS_RULES)
    kinds = {f.kind for f in run(s)}
    assert kinds <= {"error_rate_high", "slo_breach", "llm_quota_exhausted"}


def test_bad_query_is_reported_and_other_rules_still_run(settings_env: Any, stack: Stack) -> None:
    """A rule Prometheus rejects is prometheus_query_error (warning) with Prometheus' own
    error; the rule after it is still evaluated and reports its breach."""
    s = configure(
        settings_env,
        stack.url,
        [
            rule("broken", "sum(rate(http_requests_total[5m]", warning=1),
            rule("text", '"hello"', warning=1),
            rule("always", "vector(3)", warning=1, high=2),
        ],
    )
    found = {f.subject: f for f in run(s)}
    assert seen(list(found.values())) == {
        ("broken", "prometheus_query_error", "warning"),
        ("text", "prometheus_query_error", "warning"),
        ("always", "slo_breach", "high"),
    }
    assert found["broken"].evidence["error_type"] == "bad_data"
    assert "unclosed left parenthesis" in found["broken"].evidence["error"]
    assert found["text"].evidence["error_class"] == "PrometheusValueError"


def test_client_values_nan_inf_and_result_types(stack: Stack) -> None:
    """NaN is no data (left out), +Inf is a value, and string or range-vector results and bad
    PromQL each raise their own exception."""
    with PrometheusClient(stack.url, timeout=5) as client:
        assert client.query("0/0") == []
        assert client.query("1/0") == [Sample({}, math.inf)]
        assert client.query('label_replace(vector(2), "a", "b", "", "")') == [Sample({"a": "b"}, 2)]
        assert client.query("absent_metric_nobody_exports") == []
        with pytest.raises(PrometheusValueError, match="string"):
            client.query('"hello"')
        with pytest.raises(PrometheusValueError, match="range-vector"):
            client.query("up[1m]")
        with pytest.raises(PrometheusQueryError) as info:
            client.query("sum(")
        assert info.value.error_type == "bad_data"


def test_infinite_and_missing_values_in_findings(settings_env: Any, stack: Stack) -> None:
    """+Inf breaches and is written as "+Inf" (JSON and jsonb have no infinity); NaN and an
    empty result are no data, not a breach."""
    s = configure(
        settings_env,
        stack.url,
        [
            rule("infinite", "1/0", warning=1),
            rule("nan", "0/0", warning=1),
            rule("empty", "absent_metric_nobody_exports", warning=1),
        ],
    )
    (finding,) = run(s)
    assert (finding.subject, finding.observed, finding.evidence["value"]) == (
        "infinite",
        "+Inf",
        "+Inf",
    )
    json.loads(json.dumps(finding.model_dump(), allow_nan=False))


def test_stopped_prometheus_is_one_unreachable_finding(settings_env: Any, tmp_path: Path) -> None:
    """With Prometheus stopped, all seven default rules make one prometheus_unreachable (high),
    and the URL's password is masked."""
    if not Path(PROMETHEUS).exists():
        missing("prometheus (apt-get install prometheus)")
    server = prometheus(tmp_path, []).start()
    url = server.url.replace("http://", "http://ops:pw-HUNTER2@")
    try:
        s = configure(settings_env, url, None)
        assert {f.kind for f in run(s)} <= {"error_rate_high", "slo_breach", "llm_quota_exhausted"}
    finally:
        server.stop()
    (finding,) = run(s)
    assert (finding.kind, finding.severity.value) == ("prometheus_unreachable", "high")
    assert finding.evidence["error_class"] == "PrometheusUnreachable"
    assert "HUNTER2" not in json.dumps(finding.model_dump())
    assert "ops:***@" in finding.evidence["url"]


def test_hanging_or_wrong_server_is_unreachable_within_the_timeout(
    settings_env: Any, stack: Stack
) -> None:
    """A server that accepts and never answers costs one timeout, not one per rule; a URL that
    is not Prometheus (the exporter itself) is unreachable with its HTTP status."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        s = configure(
            settings_env,
            f"http://127.0.0.1:{silent.getsockname()[1]}",
            None,
            REMEDIATION_PROMETHEUS__TIMEOUT_SECONDS="1",
        )
        started = time.monotonic()
        (finding,) = run(s)
        assert time.monotonic() - started < 3
    assert finding.kind == "prometheus_unreachable" and "timed out" in finding.summary
    s = configure(settings_env, f"http://{stack.exporter.target}", None)
    (finding,) = run(s)
    assert finding.kind == "prometheus_unreachable" and finding.evidence["http_status"] == 200
    assert "not a Prometheus API answer" in finding.summary


def test_rule_selection(settings_env: Any, stack: Stack) -> None:
    """`rules` runs only the named rules, and an unknown name is one info finding naming it."""
    s = configure(
        settings_env,
        stack.url,
        [rule("one", "vector(1)", warning=0), rule("two", "vector(2)", warning=0)],
    )
    assert seen(run(s, rules=["two", "typo"])) == {
        ("two", "slo_breach", "warning"),
        ("typo", "prometheus_unconfigured", "info"),
    }


def test_without_url_is_one_info_finding(settings_env: Any) -> None:
    """No REMEDIATION_PROMETHEUS__URL: one prometheus_unconfigured (info), nothing queried."""
    s = settings_env()
    assert seen(run(s)) == {("", "prometheus_unconfigured", "info")}


# --- bounded answers: a real local HTTP server that floods or dribbles ----------------------

VALID = b'{"status":"success","data":{"resultType":"scalar","result":[1,"7"]}}'


class Hostile(socketserver.BaseRequestHandler):
    """Answers every request as the server's `mode` says; counts the body bytes it got out."""

    server: HostileServer

    def handle(self) -> None:
        self.request.recv(65536)  # the request: one small GET
        try:
            getattr(self, self.server.mode)()
        except OSError:  # the client hung up: what the caps are for
            pass

    def send(self, data: bytes) -> None:
        self.request.sendall(data)
        self.server.sent += len(data)

    def flood(self) -> None:
        """A valid answer of 64 MiB, without Content-Length (read until the server closes)."""
        self.request.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n")
        self.send(b'{"status":"success","data":{"resultType":"vector","result":[')
        item = b'{"metric":{"pod":"' + b"p" * 1000 + b'"},"value":[1,"1"]},'
        for _ in range(64 * 1024 * 1024 // len(item)):
            self.send(item)
        self.send(b'{"metric":{},"value":[1,"1"]}]}}')

    def declared(self) -> None:
        """A Content-Length of 64 MiB, then nothing."""
        self.request.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 67108864\r\n\r\n")
        self.server.idle.wait(30)

    def dribble_body(self) -> None:
        """Headers at once, then a valid body one byte every 0.1 s (about 7 s in all)."""
        head = f"HTTP/1.0 200 OK\r\nContent-Length: {len(VALID)}\r\n\r\n".encode()
        self.request.sendall(head)
        for byte in VALID:
            self.send(bytes([byte]))
            time.sleep(0.1)

    def dribble_head(self) -> None:
        """The status line and headers one byte every 0.1 s, then a valid body."""
        head = f"HTTP/1.0 200 OK\r\nX-Pad: {'x' * 40}\r\nContent-Length: {len(VALID)}\r\n\r\n"
        for byte in head.encode():
            self.request.sendall(bytes([byte]))
            time.sleep(0.1)
        self.send(VALID)

    def gzip(self) -> None:
        """A compressed answer the client did not ask for."""
        body = gzip.compress(VALID)
        self.request.sendall(
            b"HTTP/1.0 200 OK\r\nContent-Encoding: gzip\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )


class HostileServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Hostile)
        self.mode = "flood"
        self.sent = 0
        self.idle = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    """A local HTTP server on a free port, serving in a thread until the test ends."""
    server = HostileServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.idle.set()
    server.shutdown()
    server.server_close()


def test_a_flooding_answer_is_cut_at_the_cap(hostile: HostileServer) -> None:
    """A 64 MiB answer is a PrometheusValueError after at most the 8 MiB cap is read, with or
    without a Content-Length; the client hangs up instead of reading on."""
    with PrometheusClient(hostile.url, timeout=30) as client:
        with pytest.raises(PrometheusValueError, match="over the 8 MiB cap"):
            client.query("up")
        hostile.mode = "declared"
        with pytest.raises(PrometheusValueError, match="67108864 bytes is over the 8 MiB cap"):
            client.query("up")
    assert MAX_BODY_BYTES == 8 * 1024 * 1024
    assert hostile.sent < 32 * 1024 * 1024  # the flood stopped when the client hung up


@pytest.mark.parametrize("mode", ["dribble_body", "dribble_head"])
def test_a_dribbling_server_runs_into_the_deadline(hostile: HostileServer, mode: str) -> None:
    """A server that sends a valid answer a byte at a time (never idle for a whole read
    timeout) is unreachable once the one deadline over the query passes."""
    hostile.mode = mode
    with PrometheusClient(hostile.url, timeout=1) as client:
        with pytest.raises(PrometheusUnreachable, match="no complete answer within 1 s"):
            client.query("up")


def test_dribbling_server_is_one_unreachable_finding(
    settings_env: Any, hostile: HostileServer
) -> None:
    """Through the check, a dribbling server is one prometheus_unreachable for the run."""
    hostile.mode = "dribble_body"
    s = configure(settings_env, hostile.url, None, REMEDIATION_PROMETHEUS__TIMEOUT_SECONDS="1")
    (finding,) = run(s)
    assert finding.kind == "prometheus_unreachable" and "within 1 s" in finding.summary


def test_an_answer_within_bounds_and_an_unasked_encoding(hostile: HostileServer) -> None:
    """The same server's honest answer is read (the bounds cost nothing), and a gzip body the
    client did not ask for is a PrometheusHTTPError naming the encoding."""
    hostile.mode = "dribble_body"
    with PrometheusClient(hostile.url, timeout=30) as client:
        assert client.query("up") == [Sample({}, 7.0)]
        hostile.mode = "gzip"
        with pytest.raises(PrometheusHTTPError, match="Content-Encoding 'gzip'"):
            client.query("up")
