"""Alertmanager intake: webhook received -> verified fix, against the polled path's check
sent -> verified fix; same run, same broker, same worker.

A private redis-server, a scratch audit database on the configured PostgreSQL, one
`celery worker -c 2` and one `remediation serve` process (as tests/support/alerting.py
starts it), all on this machine.

* intake: for each sample a fresh job list holding one duplicate and a distinct alert
  (own fingerprint, `queue` label naming the list) mapped to `redis_job_queue_duplicates`
  with the `redis_job_queue` check as verifier; POST /alerts (Alertmanager's v4 payload),
  then poll (5 ms) the audit database until the action run on that list has
  `verification = recovered`. Timed from just before the POST is sent.
* polled (baseline): a fresh list with one duplicate, `send_task` of the
  `redis_job_queue` check as beat would, the same poll. Timed from just before send_task.

Samples alternate (intake, polled, intake, ...) so drift in the machine hits both alike.
* end to end (separately, a handful of samples): a real Prometheus (scrape and rule
  evaluation every 1 s, alert resend delay 1 s) scraping a tiny exporter that reports each
  list's duplicates, one real Alertmanager (no cluster; group wait 0 s, group interval 1 s)
  posting to the same `remediation serve`; timed from the moment the duplicate is pushed
  (the fault) to the verified fix. Compare with the polled path's one-minute beat sweep,
  whose wait is analytic (30 s mean, 60 s worst) and not measured.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import redis
import requests
from celery import Celery

from bench import stats
from bench.pipeline import admin_dsn, wait_verified, worker_env
from tests.support.alerting import (
    QUEUE_RULE,
    TextExporter,
    alertmanager,
    prometheus,
    serve,
    webhook_payload,
)
from tests.support.processes import WorkerProcess
from tests.support.services import RedisServer, as_url, scratch_database

SAMPLES = int(os.environ.get("REMEDIATION_BENCH_INTAKE_N", "50"))
E2E = int(os.environ.get("REMEDIATION_BENCH_INTAKE_E2E", "5"))
TOKEN = "bench-intake-token-" + "0123456789abcdef" * 2
RULES = [QUEUE_RULE]


def exporter(state: redis.Redis) -> TextExporter:
    """Serves app_job_queue_duplicates{queue=K} for every list K named in the set e2e_keys."""

    def render() -> str:
        lines = ["# TYPE app_job_queue_duplicates gauge"]
        for raw in sorted(state.smembers("e2e_keys")):
            key = raw.decode()
            jobs = state.lrange(key, 0, -1)
            lines.append(f'app_job_queue_duplicates{{queue="{key}"}} {len(jobs) - len(set(jobs))}')
        return "\n".join(lines) + "\n"

    return TextExporter(render).start()


def end_to_end(url: str, state: redis.Redis, audit: str) -> list[float]:
    """Fault -> verified fix through a real Prometheus and Alertmanager."""
    folder = Path(tempfile.mkdtemp(prefix="rem-bench-e2e-"))
    metrics = exporter(state)
    manager = alertmanager(folder / "am", url + "/alerts", TOKEN)
    rule = {
        "alert": "JobQueueDuplicates",
        "expr": "app_job_queue_duplicates > 0",
        "labels": {"severity": "warning"},
    }
    prom = prometheus(folder / "prom", [metrics.target], [rule], [manager.port])
    started = []
    latencies = []
    try:
        for p in (manager, prom):
            started.append(p.start())
        time.sleep(3)  # first scrapes and rule evaluations
        for i in range(E2E):
            key = f"alert_e2e_{i}_{uuid.uuid4().hex[:6]}"
            state.sadd("e2e_keys", key)
            state.rpush(key, "job-a")
            # the series exists at 0 before the fault; a random phase against the 1 s scrape
            time.sleep(2.5 + random.random())
            start = time.perf_counter()
            state.rpush(key, "job-a")  # the fault: one duplicate
            wait_verified(audit, key)
            latencies.append(time.perf_counter() - start)
    finally:
        for p in started:
            p.stop()
        metrics.stop()
    return latencies


def from_audit(audit: str, sent: dict[str, tuple[str, float]]) -> dict[str, list[float]]:
    """The same latencies from the audit's own verified_at (no poll granularity), and a
    check that every sample ran exactly one action, verified by the redis_job_queue check."""
    out: dict[str, list[float]] = {"intake": [], "polled": []}
    with psycopg.connect(audit) as conn:
        rows = conn.execute(
            "SELECT a.resource, count(*), max(a.verified_at), min(c.check_name),"
            " max(c.check_name) FROM action_runs a"
            " LEFT JOIN check_runs c ON c.id = a.verify_check_run_id"
            " WHERE a.action = 'dedupe_job_queue' GROUP BY a.resource"
        ).fetchall()
    for resource, count, verified_at, low, high in rows:
        key = resource.removeprefix("self/")
        if key not in sent:
            continue
        if count != 1 or low != high or low != "redis_job_queue":
            raise RuntimeError(f"{key}: {count} action runs, verified by {low}/{high}")
        side, at = sent[key]
        out[side].append(verified_at.timestamp() - at)
    if sum(map(len, out.values())) != len(sent):
        raise RuntimeError("a sample has no action run")
    return out


def summary(lat: list[float]) -> dict[str, Any]:
    return stats.summary(lat, digits=3)


def run() -> dict[str, Any]:
    server = RedisServer().start()
    try:
        with scratch_database(admin_dsn(), "rem_bench_intake") as dsn:
            audit = as_url(dsn)
            from remediation.audit.store import AuditStore

            AuditStore(audit).upgrade()
            env = worker_env(
                server,
                audit,
                ["alert_*", "poll_*"],
                REMEDIATION_ALERTS__RULES=json.dumps(RULES),
                REMEDIATION_SERVE__TOKENS=json.dumps([TOKEN]),
            )
            worker = WorkerProcess(env, "bench", concurrency=2).start()
            process, url = serve(env, Path(tempfile.mkdtemp(prefix="rem-bench-serve-")))
            process.start()
            app = Celery(broker=server.url(1), backend=server.url(2))
            state = redis.Redis.from_url(server.url(0))
            http = requests.Session()
            http.headers.update(
                {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
            )
            intake: list[float] = []
            polled: list[float] = []
            sent: dict[str, tuple[str, float]] = {}  # key -> (side, wall clock at send)
            try:
                for i in range(SAMPLES + 3):  # the first 3 pairs are warm-up
                    tag = uuid.uuid4().hex[:8]
                    key = f"alert_{i}_{tag}"
                    state.rpush(key, '{"id": 1}', '{"id": 1}')
                    body = json.dumps(webhook_payload(uuid.uuid4().hex[:16], key))
                    start = time.perf_counter()
                    if i >= 3:
                        sent[key] = ("intake", time.time())
                    reply = http.post(url + "/alerts", data=body, timeout=30)
                    reply.raise_for_status()
                    wait_verified(audit, key)
                    if i >= 3:
                        intake.append(time.perf_counter() - start)

                    key = f"poll_{i}_{tag}"
                    state.rpush(key, '{"id": 1}', '{"id": 1}')
                    start = time.perf_counter()
                    if i >= 3:
                        sent[key] = ("polled", time.time())
                    app.send_task(
                        "remediation.check.redis_job_queue", kwargs={"target": "self", "key": key}
                    )
                    wait_verified(audit, key)
                    if i >= 3:
                        polled.append(time.perf_counter() - start)
                e2e = end_to_end(url, state, audit) if E2E else []
                by_audit = from_audit(audit, sent)
            finally:
                http.close()
                process.stop()
                worker.stop()
                app.close()
                state.close()
    finally:
        server.stop()
    a, b = summary(intake), summary(polled)
    return {
        "samples": SAMPLES,
        "webhook_to_verified_fix_s": a,
        "check_sent_to_verified_fix_s": b,
        "ratio_p50_intake_to_polled": round(a["p50"] / b["p50"], 2),
        "ratio_p95_intake_to_polled": round(a["p95"] / b["p95"], 2),
        "by_audit_verified_at_s": {k: summary(v) for k, v in by_audit.items()},
        "fault_to_verified_fix_via_alertmanager_s": summary(e2e) if e2e else None,
        "polled_sweep_wait_s_analytic": {"mean": 30, "worst": 60},
    }
