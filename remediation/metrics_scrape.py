"""What the worker's metrics endpoint reads at scrape time (remediation/metrics.py serves it):
circuit breaker states from the state Redis, liveness, build info; and the clean-up of
live-gauge files of children killed before their exit hook ran. Also the label rule and
file names metrics.py shares with it."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import multiprocess
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from remediation.clients import redis as redis_clients
from remediation.clients.redis import text
from remediation.guards import keys
from remediation.logging import get_logger
from remediation.settings import Settings

BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}
_LABEL = re.compile(r"^[A-Za-z0-9_.:\-]{1,80}$")
OWN_FILE = re.compile(r"^(counter|histogram|summary|gauge_[a-z]+)_(\d+)\.db$")

_mp: Any = multiprocess  # untyped module
log = get_logger("remediation.metrics")


def label(value: str) -> str:
    """A label value from the code, or "other" for anything that is not a plain name."""
    text = str(value)
    return text if _LABEL.match(text) else "other"


class StateCollector(Collector):
    """Read at scrape time: breakers from the state Redis, liveness, build info."""

    def __init__(self, settings: Settings, directory: Path) -> None:
        self.url = settings.state_redis_url.get_secret_value()
        self.directory = directory

    def collect(self) -> Iterator[Metric]:
        reap_dead_children(self.directory)
        up = GaugeMetricFamily("remediation_worker_up", "1 while the worker serves metrics")
        up.add_metric([], 1)
        build = GaugeMetricFamily(
            "remediation_build_info", "Version of the running worker", labels=["version", "python"]
        )
        build.add_metric([_version(), sys.version.split()[0]], 1)
        breakers = GaugeMetricFamily(
            "remediation_breaker_state",
            "Circuit breaker state: 0 closed, 1 half_open, 2 open",
            labels=["breaker"],
        )
        state_up = GaugeMetricFamily(
            "remediation_state_redis_up", "1 if the state Redis answered this scrape"
        )
        try:
            for name, state in read_breakers(self.url):
                breakers.add_metric([label(name)], BREAKER_STATES.get(state, 2))
            state_up.add_metric([], 1)
        except Exception as exc:
            log.warning("metrics: breaker states unreadable", error=repr(exc))
            state_up.add_metric([], 0)
        yield from (up, build, breakers, state_up)
        yield from ApprovalCollector(self.url).collect()


APPROVAL_EVENTS = ("requested", "approved", "denied", "expired", "withdrawn")
DECISION_BUCKETS = (10, 30, 60, 300, 900, 1800, 3600, 7200, 21600, 86400, 604800)
"""Seconds from request to decision (remediation.approvals.record_event counts them)."""


class ApprovalCollector(Collector):
    """Approval metrics, read at scrape time from the state Redis, where every process that
    decides (worker, `remediation serve`, the CLI) counts: pending now, events so far, time
    to a decision."""

    def __init__(self, url: str) -> None:
        self.url = url

    def collect(self) -> Iterator[Metric]:
        try:
            r = redis_clients.client(self.url, timeout=2.0)
            pending = int(r.zcard(keys.APPROVALS_PENDING))
            stats = {text(k): float(v) for k, v in r.hgetall(keys.APPROVALS_STATS).items()}
        except Exception as exc:
            log.warning("metrics: approvals unreadable", error=repr(exc))
            return
        gauge = GaugeMetricFamily(
            "remediation_approvals_pending", "Approvals waiting for a decision now"
        )
        gauge.add_metric([], pending)
        events = CounterMetricFamily(
            "remediation_approvals",
            "Approval events: requested, approved, denied, expired, withdrawn",
            labels=["event"],
        )
        for event in APPROVAL_EVENTS:
            events.add_metric([event], stats.get(f"event:{event}", 0.0))
        buckets = [(str(b), stats.get(f"le:{b}", 0.0)) for b in DECISION_BUCKETS]
        count = stats.get("count", 0.0)
        waited = HistogramMetricFamily(
            "remediation_approval_decision_seconds",
            "Time from an approval's request to its decision (approved, denied, expired,"
            " withdrawn)",
            buckets=[*buckets, ("+Inf", count)],
            sum_value=stats.get("sum", 0.0),
        )
        yield from (gauge, events, waited)


def read_breakers(url: str) -> list[tuple[str, str]]:
    """(name, state) of every breaker in ``rem:breakers``, as `remediation breakers` shows."""
    r = redis_clients.client(url, timeout=2.0)
    names = sorted(text(n) for n in r.smembers(keys.BREAKER_INDEX))
    pipe = r.pipeline(transaction=False)
    for name in names:
        pipe.hget(keys.breaker(name), "state")
    states = pipe.execute()
    return [(n, text(s) if s is not None else "closed") for n, s in zip(names, states, strict=True)]


def reap_dead_children(directory: Path) -> None:
    """Children killed with SIGKILL never ran their exit hook: mark them dead here."""
    for path in directory.glob("gauge_live*_*.db"):
        match = OWN_FILE.match(path.name)
        if match and not _alive(int(match[2])):
            with contextlib.suppress(OSError):
                _mp.mark_process_dead(int(match[2]), str(directory))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@functools.cache
def _version() -> str:
    from remediation import __version__

    return __version__
