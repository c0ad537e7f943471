"""Throughput of guarded actions vs raw Celery tasks, and time from fault to verified fix.

Same run, same broker, same worker: a private redis-server, a scratch audit database on the
configured PostgreSQL, one `celery worker -c 2`.

* raw: `celery.accumulate` (Celery's built-in task that returns its argument), N tasks.
* guarded: `remediation.act.dedupe_job_queue` on N distinct lists (each holding one
  duplicate; configured through REMEDIATION_JOB_QUEUE__KEYS="bench_*"): size bound and
  validation, the resolve step (canonical target, configured key, TYPE of the list), the whole
  guard chain in one Lua call (pause, idempotency claim, flap, lock, cooldown, budget,
  blast radius, breaker), blast-radius reservation and give-back, the action's Lua call,
  breaker record, cooldown, 2 audit inserts (spool-capable store), metrics.
* CPU per task by process group (bench/cpu.py: this client, the worker's main process, its
  pool children, redis-server, the audit database's PostgreSQL backends), per round: on a
  machine of two cores every one of them competes for the same CPU, so the ratio of the
  totals is what the throughput ratio tends to, and the groups say where the cost is.
* fault -> fix: push a duplicate into a job list, send the check (as beat would), wait for
  the audit row that says the fix was verified; repeated, p50 / p95.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
import uuid
from typing import Any

import psycopg
import redis
from celery import Celery

from bench.cpu import CpuMeter, children
from tests.support.base import wait_for
from tests.support.processes import WorkerProcess
from tests.support.services import RedisServer, as_url, scratch_database

N = int(os.environ.get("REMEDIATION_BENCH_N", "400"))
FAULTS = int(os.environ.get("REMEDIATION_BENCH_FAULTS", "20"))
ROUNDS = int(os.environ.get("REMEDIATION_BENCH_ROUNDS", "3"))


def admin_dsn() -> str:
    audit = os.environ.get("REMEDIATION_AUDIT_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
    info = psycopg.conninfo.conninfo_to_dict(audit)
    info["dbname"] = "postgres"
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items() if v is not None})


def timed_batch(
    app: Celery,
    task: str,
    kwargs_list: list[dict[str, Any]],
    cpu: list[dict[str, float]] | None = None,
    meter: CpuMeter | None = None,
) -> float:
    """Seconds to send every call and get every result; with a meter, the CPU per call of
    each process group is appended to cpu."""
    before = meter.snapshot() if meter else {}
    start = time.perf_counter()
    results = [app.send_task(task, kwargs=kw) for kw in kwargs_list]
    for res in results:
        res.get(timeout=300)
    elapsed = time.perf_counter() - start
    if meter is not None and cpu is not None:
        cpu.append(meter.per_unit(before, meter.snapshot(), len(kwargs_list)))
    return elapsed


def meter_for(worker: WorkerProcess, state: redis.Redis, audit: str) -> CpuMeter:
    """Process groups of one benchmark run: this process, the worker's main process and its
    pool, the private redis-server, the audit database's backends."""
    assert worker.proc is not None
    main = worker.proc.pid
    redis_pid = int(state.info("server")["process_id"])
    dbname = psycopg.conninfo.conninfo_to_dict(audit)["dbname"]

    def backends() -> list[int]:
        with psycopg.connect(admin_dsn(), autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s", (dbname,)
            ).fetchall()
        return [r[0] for r in rows]

    return CpuMeter(
        {
            "client": lambda: [os.getpid()],
            "worker_main": lambda: [main],
            "worker_pool": lambda: children(main),
            "redis": lambda: [redis_pid],
            "postgres": backends,
        }
    )


def wait_verified(audit_dsn: str, key: str) -> None:
    """Until the dedupe of job list ``key`` is on record as verified recovered (60 s at most)."""

    def verified() -> bool:
        with psycopg.connect(audit_dsn) as conn:
            row = conn.execute(
                "SELECT verification FROM action_runs WHERE resource = %s"
                " AND verification IS NOT NULL",
                (f"self/{key}",),
            ).fetchone()
        return bool(row and row[0] == "recovered")

    wait_for(verified, 60, 0.005, f"verified fix of {key}")


def worker_env(
    server: RedisServer, audit: str, job_keys: list[str], **extra: str
) -> dict[str, str]:
    """A benchmark worker's environment: this process's without REMEDIATION_*, the private
    redis-server for state, broker and results, the scratch audit database, the job lists
    ``job_keys`` configured, budgets that do not limit, metrics on (as in production)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REMEDIATION_")}
    env.update(
        REMEDIATION_STATE_REDIS_URL=server.url(0),
        REMEDIATION_BROKER_URL=server.url(1),
        REMEDIATION_RESULT_BACKEND=server.url(2),
        REMEDIATION_AUDIT_DSN=audit,
        REMEDIATION_LOG_LEVEL="INFO",
        REMEDIATION_LOG_FORMAT="json",
        REMEDIATION_VERIFY__DELAY_SECONDS="0.05",
        REMEDIATION_GUARDS__BUDGET_OVERRIDES='{"dedupe_job_queue": 1000000}',
        REMEDIATION_JOB_QUEUE__KEYS=json.dumps(job_keys),
        REMEDIATION_SIGNING_KEY="bench-signing-key-" + "0" * 32,
        REMEDIATION_METRICS__PORT="0",  # metrics on, as in production
        REMEDIATION_METRICS__MULTIPROC_DIR=tempfile.mkdtemp(prefix="rem-bench-metrics-"),
        REMEDIATION_AUDIT__SPOOL_DIR=tempfile.mkdtemp(prefix="rem-bench-spool-"),
        **extra,
    )
    return env


def fault_to_fix(app: Celery, r: redis.Redis, audit_dsn: str) -> list[float]:
    latencies = []
    for i in range(FAULTS):
        key = f"fault_{i}_{uuid.uuid4().hex[:6]}"
        r.rpush(key, json.dumps({"id": 1}), json.dumps({"id": 1}))
        start = time.perf_counter()
        app.send_task("remediation.check.redis_job_queue", kwargs={"target": "self", "key": key})
        wait_verified(audit_dsn, key)
        latencies.append(time.perf_counter() - start)
    return latencies


def median_by_group(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(r[k] for r in rounds), 2) for k in rounds[0]}


def run() -> dict[str, Any]:
    server = RedisServer().start()
    try:
        with scratch_database(admin_dsn(), "rem_bench") as dsn:
            audit = as_url(dsn)
            from remediation.audit.store import AuditStore

            AuditStore(audit).upgrade()
            env = worker_env(server, audit, ["bench_*", "fault_*"])
            worker = WorkerProcess(env, "bench", concurrency=2).start()
            app = Celery(broker=server.url(1), backend=server.url(2))
            try:
                timed_batch(app, "celery.accumulate", [{"args": [0]}] * 20)  # warm-up
                rounds = []  # interleaved, so drift in the machine hits both sides alike
                state = redis.Redis.from_url(server.url(0))
                meter = meter_for(worker, state, audit)
                cpu_raw: list[dict[str, float]] = []
                cpu_guarded: list[dict[str, float]] = []
                for n in range(ROUNDS):
                    raw = timed_batch(
                        app, "celery.accumulate", [{"args": [i]} for i in range(N)], cpu_raw, meter
                    )
                    with state.pipeline() as pipe:  # each list exists and has a duplicate
                        for i in range(N):
                            pipe.rpush(f"bench_{n}_{i}", '{"id": 1}', '{"id": 1}')
                        pipe.execute()
                    guarded = timed_batch(
                        app,
                        "remediation.act.dedupe_job_queue",
                        [{"target": "self", "key": f"bench_{n}_{i}"} for i in range(N)],
                        cpu_guarded,
                        meter,
                    )
                    rounds.append((raw, guarded))
                lat = sorted(fault_to_fix(app, redis.Redis.from_url(server.url(0)), audit))
            finally:
                worker.stop()
                app.close()
    finally:
        server.stop()
    raw, guarded = (statistics.median(x) for x in zip(*rounds, strict=True))
    return {
        "n": N,
        "rounds": ROUNDS,
        "ratio_per_round": [round(r / g, 3) for r, g in rounds],
        "raw_tasks_per_s": round(N / raw, 1),
        "guarded_actions_per_s": round(N / guarded, 1),
        "ratio_guarded_to_raw": round(raw / guarded, 3),
        "cpu_ms_per_task_raw": median_by_group(cpu_raw),
        "cpu_ms_per_task_guarded": median_by_group(cpu_guarded),
        "cpu_ratio_per_round": [
            round(r["total"] / g["total"], 3) for r, g in zip(cpu_raw, cpu_guarded, strict=True)
        ],
        "fault_to_verified_fix_s": {
            "n": len(lat),
            "p50": round(statistics.median(lat), 3),
            "p95": round(lat[int(0.95 * (len(lat) - 1))], 3),
            "max": round(lat[-1], 3),
        },
    }
