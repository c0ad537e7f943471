"""Approvals: what the remediator adds around a human's decision, against the unattended
path; same run, same machine.

Two stacks side by side, each a private redis-server, a scratch audit database and one
`celery worker -c 2`; the approval stack also runs `remediation serve` and has
REMEDIATION_APPROVALS__REQUIRE=["dedupe_job_queue"].

* ask: a fresh job list with one duplicate, `send_task` of the `redis_job_queue` check as
  beat would; timed until the pending approval (with its plan) is in the state Redis.
* approved: then `POST /approvals/ID/approve`; timed from just before the POST until the
  audit has the action run on that list with `verification = recovered` (the worker
  claims the approval, guards, re-computes the plan, acts, verifies).
* unattended (baseline): on the other stack, a fresh list, `send_task` of the same check;
  timed until the verified fix (the polled path of bench/intake.py).

Samples alternate (approval, unattended, ...) so drift in the machine hits both alike. The
human's own time to decide is not the remediator's and is not measured here (the metric
remediation_approval_decision_seconds reports it in production).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
import requests
from celery import Celery

from bench.intake import summary
from bench.pipeline import admin_dsn, wait_verified, worker_env
from remediation.approvals import state as approvals
from tests.support.alerting import serve
from tests.support.base import wait_for
from tests.support.processes import WorkerProcess
from tests.support.services import RedisServer, as_url, scratch_database

SAMPLES = int(os.environ.get("REMEDIATION_BENCH_APPROVALS_N", "50"))
TOKEN = "bench-approvals-token-" + "0123456789abcdef" * 2
CHECK = "remediation.check.redis_job_queue"


@contextlib.contextmanager
def stack(name: str, **extra: str) -> Iterator[tuple[dict[str, str], Celery, redis.Redis, str]]:
    """(environment, Celery client, state Redis, audit DSN) of a started worker."""
    with contextlib.ExitStack() as ex:
        server = RedisServer().start()
        ex.callback(server.stop)
        audit = as_url(ex.enter_context(scratch_database(admin_dsn(), f"rem_bench_{name}")))
        from remediation.audit.store import AuditStore

        AuditStore(audit).upgrade()
        env = worker_env(server, audit, [f"{name}_*"], **extra)
        worker = WorkerProcess(env, f"bench-{name}", concurrency=2).start()
        ex.callback(worker.stop)
        app = Celery(broker=server.url(1), backend=server.url(2))
        ex.callback(app.close)
        state = redis.Redis.from_url(server.url(0))
        ex.callback(state.close)
        yield env, app, state, audit


def pending_for(state: redis.Redis, key: str) -> str:
    """The id of the pending approval of the dedupe of ``key`` (polled every 5 ms)."""

    def found() -> str | None:
        for a in approvals.pending(state):
            if a.resource == f"self/{key}":
                return a.id
        return None

    found_id: str = wait_for(found, 60, 0.005, f"the approval of {key}")
    return found_id


def run() -> dict[str, Any]:
    asked: list[float] = []
    approved: list[float] = []
    unattended: list[float] = []
    required = {
        "REMEDIATION_APPROVALS__REQUIRE": '["dedupe_job_queue"]',
        "REMEDIATION_SERVE__TOKENS": json.dumps([TOKEN]),
    }
    with (
        stack("appr", **required) as (env, app, state, audit),
        stack("plain") as (_, plain_app, plain_state, plain_audit),
    ):
        process, url = serve(env, Path(tempfile.mkdtemp(prefix="rem-bench-appr-")))
        process.start()
        http = requests.Session()
        http.headers.update({"Authorization": f"Bearer {TOKEN}"})
        try:
            for i in range(SAMPLES + 3):  # the first 3 pairs are warm-up
                tag = uuid.uuid4().hex[:8]
                key = f"appr_{i}_{tag}"
                state.rpush(key, '{"id": 1}', '{"id": 1}')
                start = time.perf_counter()
                app.send_task(CHECK, kwargs={"target": "self", "key": key})
                approval = pending_for(state, key)
                ask = time.perf_counter() - start
                start = time.perf_counter()
                http.post(
                    f"{url}/approvals/{approval}/approve", json={}, timeout=30
                ).raise_for_status()
                wait_verified(audit, key)
                run_s = time.perf_counter() - start

                key = f"plain_{i}_{tag}"
                plain_state.rpush(key, '{"id": 1}', '{"id": 1}')
                start = time.perf_counter()
                plain_app.send_task(CHECK, kwargs={"target": "self", "key": key})
                wait_verified(plain_audit, key)
                if i >= 3:
                    asked.append(ask)
                    approved.append(run_s)
                    unattended.append(time.perf_counter() - start)
        finally:
            http.close()
            process.stop()
    a, b, c = summary(asked), summary(approved), summary(unattended)
    return {
        "samples": SAMPLES,
        "check_sent_to_pending_approval_s": a,
        "approve_to_verified_fix_s": b,
        "unattended_check_sent_to_verified_fix_s": c,
        "ratio_p50_approved_to_unattended": round(b["p50"] / c["p50"], 2),
        "ratio_p95_approved_to_unattended": round(b["p95"] / c["p95"], 2),
    }
