"""Issues 4 and 11 end to end through real workers, real tinyproxy processes and a real origin.

An origin starts banning one of three proxies: within one proxy sweep, runbook 000's whole
403 response runs in one incident: that proxy is quarantined (the published active set
shrinks), the scrapers' delay rises and a fresh, consistent set of browser headers replaces
the one they had. When the origin recovers, the proxy is promoted back and, after the
healthy period, the delay eases back to its floor.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from remediation import browser_headers as bh
from tests.support.audit import Audit
from tests.support.base import wait_for
from tests.support.env import process_env
from tests.support.http_doubles import Behaviour, Origin, ProxyProcess
from tests.support.processes import WorkerProcess
from tests.support.rabbitmq import Broker

STATE_DB, BROKER_SLOT = 8, 9  # apart from the other integration workers' databases / vhost


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    server = Origin()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def proxies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ProxyProcess]]:
    if not Path("/usr/bin/tinyproxy").exists():
        pytest.skip("tinyproxy not installed") if not os.environ.get("CI") else pytest.fail(
            "tinyproxy is required in CI"
        )
    folder = tmp_path_factory.mktemp("proxies")
    started = [ProxyProcess(name, folder).start() for name in ("pa", "pb", "pc")]
    yield started
    for p in started:
        p.stop()


@pytest.fixture(scope="module")
def traffic_env(
    broker: Broker,
    audit_db: str,
    origin: Origin,
    proxies: list[ProxyProcess],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, str]:
    config = tmp_path_factory.mktemp("scraper") / "scraping_config.json"
    return process_env(
        broker.redis,
        audit_db,
        REMEDIATION_STATE_REDIS_URL=broker.redis.url(STATE_DB),
        REMEDIATION_BROKER_URL=broker.url(BROKER_SLOT),
        REMEDIATION_PROXIES__PROXY_LIST=json.dumps([f"{p.url()} eu" for p in proxies]),
        REMEDIATION_PROXIES__TEST_URL=origin.url,
        REMEDIATION_PROXIES__TIMEOUT_SECONDS="2",
        REMEDIATION_PROXIES__MIN_ACTIVE="1",
        REMEDIATION_PROXIES__QUARANTINE_BASE_SECONDS="2",
        REMEDIATION_BACKOFF__HEALTHY_SECONDS="2",
        REMEDIATION_BACKOFF__DECREASE_STEP_SECONDS="1",
        REMEDIATION_HEADERS__JSON_FILE=str(config),
        REMEDIATION_VERIFY__ATTEMPTS="2",
    )


@pytest.fixture(scope="module")
def traffic_worker(traffic_env: dict[str, str]) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(traffic_env, "traffic").start()
    yield worker
    worker.stop()


def test_a_ban_runs_the_whole_403_response_in_one_incident_then_all_comes_back(
    traffic_env: dict[str, str],
    traffic_worker: WorkerProcess,
    origin: Origin,
    proxies: list[ProxyProcess],
    audit_db: str,
) -> None:
    """Ban -> one proxy sweep: quarantine, higher delay, fresh headers, one incident;
    recovery -> the proxy promoted, the delay back at its floor after the healthy period."""
    state = redis.Redis.from_url(traffic_env["REMEDIATION_STATE_REDIS_URL"])
    client = Celery(
        broker=traffic_env["REMEDIATION_BROKER_URL"],
        backend=traffic_env["REMEDIATION_RESULT_BACKEND"],
    )
    audit = Audit(audit_db)

    def active() -> set[str]:
        return {m.decode() for m in state.smembers("proxies:active")}

    def delay() -> float:
        raw = state.hget("scraping:config", "min_delay")
        return float(raw) if raw else 1.0

    def sweep(*checks: str) -> None:
        for check in checks or ("proxy_pool_health", "scrape_backoff"):
            client.send_task(f"remediation.check.{check}", kwargs={"target": "self"}).get(
                timeout=60
            )

    def headers(key: str = "scraping:headers") -> dict[str, str] | None:
        raw = state.hget(key, "headers")
        return json.loads(raw) if raw else None

    everyone = {p.url() for p in proxies}
    sweep()  # a healthy pool is loaded and published
    wait_for(lambda: active() == everyone, 30, 0.2, "all three proxies published")
    assert delay() == 1.0
    old = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64; rv:60.0) Gecko/20100101 Firefox/60.0"}
    state.hset("scraping:headers", mapping={"headers": json.dumps(old), "version": "1"})

    origin.behaviour["pb"] = Behaviour(ban_after=0)  # the origin bans proxy pb from now on
    banned_url = next(p.url() for p in proxies if p.name == "pb")
    sweep("proxy_pool_health")  # one sweep of the proxy check: runbook 000's three steps
    wait_for(lambda: active() == everyone - {banned_url}, 30, 0.2, "pb quarantined")
    wait_for(lambda: delay() == 2.0, 30, 0.2, "min_delay doubled")
    wait_for(lambda: state.hget("scraping:headers", "version") == b"2", 30, 0.2, "new headers")
    fresh = headers()
    assert fresh is not None and fresh != old
    assert (
        bh.problems(fresh, ["chrome", "edge", "firefox", "safari"], ["windows", "macos", "linux"])
        == []
    )
    assert headers("scraping:headers:previous") == old  # kept for rollback
    mirrored = json.loads(Path(traffic_env["REMEDIATION_HEADERS__JSON_FILE"]).read_text())
    assert (mirrored["headers"], mirrored["headers_previous"]) == (fresh, old)
    chain = audit.wait_rows(
        "SELECT a.action, f.kind, f.incident_id, f.id AS finding_id FROM action_runs a"
        " JOIN findings f ON f.id = a.finding_id WHERE a.outcome = 'succeeded'"
        " AND a.action IN ('rotate_proxies', 'tune_backoff', 'regenerate_headers')"
        " ORDER BY a.id",
        n=3,
    )
    assert sorted(r["action"] for r in chain) == [
        "regenerate_headers",
        "rotate_proxies",
        "tune_backoff",
    ]
    assert {(r["kind"], r["incident_id"], r["finding_id"]) for r in chain} == {
        ("proxy_banned", chain[0]["incident_id"], chain[0]["finding_id"])
    }
    assert chain[0]["incident_id"]
    keys = state.scan_iter("rem:proxy:p:*")
    banned = next(k for k in keys if state.hget(k, "url") == banned_url.encode())
    record = {k.decode(): v.decode() for k, v in state.hgetall(banned).items()}
    assert record["state"] == "quarantined"
    increases = audit.rows(
        "SELECT result FROM action_runs WHERE action = 'tune_backoff' AND outcome = 'succeeded'"
    )
    assert [
        (r["result"]["detail"]["before"]["min_delay"], r["result"]["detail"]["after"]["min_delay"])
        for r in increases
    ] == [(1.0, 2.0)]
    assert increases[0]["result"]["detail"]["observed_rate"] == pytest.approx(1 / 3, abs=1e-3)

    origin.behaviour["pb"] = Behaviour()  # the origin forgives pb
    time.sleep(2.5)  # past the 2 s quarantine and the 2 s healthy period
    wait_for(lambda: (sweep(), active() == everyone)[1], 60, 1.0, "pb promoted back")
    wait_for(lambda: (sweep(), delay() == 1.0)[1], 60, 1.0, "min_delay back at the floor")
    steps = [
        (r["result"]["detail"]["before"]["min_delay"], r["result"]["detail"]["after"]["min_delay"])
        for r in audit.rows(
            "SELECT result FROM action_runs WHERE action = 'tune_backoff'"
            " AND outcome = 'succeeded' ORDER BY id"
        )
    ]
    assert steps == [(1.0, 2.0), (2.0, 1.0)]  # up once for the ban, down once when healthy
