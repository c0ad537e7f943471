"""kill -9 worker children and whole workers mid-action: every action's effect happens once.

The action is the real vacuum_analyze on real tables; "applied" is PostgreSQL's own count
(pg_stat_user_tables.vacuum_count). Kills land at three moments: while the VACUUM statement
is in flight (the test holds a lock the VACUUM waits for, kills, then lets it finish: the
effect happens although its worker died), at a random moment right after the guards
admitted the call (before, during or after the effect), and on whole workers (RabbitMQ
hands the message to the other worker at once; with Redis it would wait for the
visibility timeout). Celery retries a task whose child died (task_retry_on_worker_lost,
same task id); the guards let the same task resume and the action checks whether the lost
attempt's effect happened. A poison task (its worker dies on every delivery) stops after
the bounded retries and is audited and notified.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis
from celery import Celery
from psycopg import sql

from remediation.guards import keys
from tests.support.base import wait_for
from tests.support.chaos import scale
from tests.support.env import process_env
from tests.support.http_doubles import WebhookReceiver
from tests.support.processes import WorkerProcess
from tests.support.rabbitmq import vhosts_for
from tests.support.servers import Rabbit
from tests.support.services import RedisServer

ACTION = "remediation.act.vacuum_analyze"
SETTLE_SECONDS = int(os.environ.get("REMEDIATION_CHAOS_SETTLE_SECONDS", "120"))
_LOGS: list[WorkerProcess] = []


def log_tail() -> str:
    return "\n".join(w.log()[-4000:] for w in _LOGS)


def make_tables(dsn: str, names: list[str], rows: int = 20_000) -> None:
    """Tables with dead rows and autovacuum off: only our VACUUM changes vacuum_count."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name in names:
            ident = sql.Identifier("public", name)
            conn.execute(
                sql.SQL(
                    "CREATE TABLE {} (id int, pad text) WITH (autovacuum_enabled = false)"
                ).format(ident)
            )
            conn.execute(
                sql.SQL("INSERT INTO {} SELECT g, 'x' FROM generate_series(1, %s) g").format(ident),
                (rows,),
            )
            conn.execute(sql.SQL("DELETE FROM {} WHERE id % 5 <> 0").format(ident))


def vacuum_counts(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT relname, vacuum_count FROM pg_stat_user_tables").fetchall()
    return {name: int(n) for name, n in rows}


def audit_rows(dsn: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, args).fetchall()


def holder(state: redis.Redis, table: str) -> int | None:
    """The pid holding the action's lock on the table (the lock value names it)."""
    value = state.get(keys.lock("vacuum_analyze", f"app/public.{table}"))
    if value is None:
        return None
    return int(value.decode().rsplit(":", 1)[1])


def sender(broker_url: str) -> Celery:
    return Celery("chaos-sender", broker=broker_url, set_as_current=False)


def send(app: Celery, table: str) -> str:
    result = app.send_task(ACTION, kwargs={"target": "app", "tables": [f"public.{table}"]})
    return str(result.id)


def wait_all_succeeded(audit_dsn: str, task_ids: list[str]) -> None:
    def done() -> bool:
        rows = audit_rows(
            audit_dsn,
            "SELECT count(DISTINCT task_id) FROM action_runs"
            " WHERE outcome = 'succeeded' AND task_id = ANY(%s)",
            task_ids,
        )
        return int(rows[0][0]) == len(task_ids)

    try:
        wait_for(done, SETTLE_SECONDS, 0.5, "every action succeeded once")
    except TimeoutError:
        decisions = audit_rows(
            audit_dsn,
            "SELECT task_id, decision, guard, reason FROM guard_decisions WHERE task_id = ANY(%s)"
            " ORDER BY id",
            task_ids,
        )
        runs = audit_rows(
            audit_dsn,
            "SELECT task_id, outcome, error FROM action_runs WHERE task_id = ANY(%s) ORDER BY id",
            task_ids,
        )
        raise AssertionError(f"decisions: {decisions}\nruns: {runs}\n{log_tail()}") from None


def assert_exactly_once(
    audit_dsn: str, app_dsn: str, task_ids: dict[str, str], killed: set[str]
) -> None:
    """Each table vacuumed exactly once; each task has one succeeded run; every killed task
    resumed (a 'resume' decision) and no task ran twice."""
    counts = vacuum_counts(app_dsn)
    assert {t: counts.get(t, 0) for t in task_ids} == dict.fromkeys(task_ids, 1)
    runs = audit_rows(
        audit_dsn,
        "SELECT task_id, outcome, count(*) FROM action_runs WHERE task_id = ANY(%s)"
        " GROUP BY task_id, outcome",
        list(task_ids.values()),
    )
    assert sorted((o, n) for _, o, n in runs) == [("succeeded", 1)] * len(task_ids)
    resumed = audit_rows(
        audit_dsn,
        "SELECT DISTINCT task_id FROM guard_decisions WHERE guard = 'resume' AND task_id = ANY(%s)",
        list(task_ids.values()),
    )
    assert {r[0] for r in resumed} == {task_ids[t] for t in killed}


@pytest.fixture
def app_db(target_db: str) -> str:
    return target_db


def chaos_env(
    redis_server: RedisServer, audit_db: str, app_db: str, **extra: str
) -> dict[str, str]:
    return process_env(
        redis_server,
        audit_db,
        REMEDIATION_POSTGRES_TARGETS__APP=app_db,
        REMEDIATION_GUARDS__BUDGET_OVERRIDES='{"vacuum_analyze": 100000}',
        REMEDIATION_POSTGRES__DATA_QUALITY="[]",
        **extra,
    )


@pytest.fixture
def worker(redis_server: RedisServer, audit_db: str, app_db: str) -> Iterator[WorkerProcess]:
    w = WorkerProcess(chaos_env(redis_server, audit_db, app_db), f"chaos-{uuid.uuid4().hex[:6]}")
    _LOGS[:] = [w]
    w.start()
    try:
        yield w
    finally:
        w.stop()


def kill(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def test_kill_children_mid_action_each_effect_exactly_once(
    redis_server: RedisServer, r: redis.Redis, audit_db: str, app_db: str, worker: WorkerProcess
) -> None:
    """Half the kills land while VACUUM is in flight (the effect completes server-side after
    its worker died), half at a random moment after admission. Tables that are never
    killed run normally. Counted: vacuum_count == 1 for every table."""
    in_flight, random_kills, untouched = scale(3, 30), scale(3, 20), scale(2, 5)
    tables = [f"t{i}" for i in range(in_flight + random_kills + untouched)]
    make_tables(app_db, tables[:in_flight])
    make_tables(app_db, tables[in_flight:], rows=200_000)  # a VACUUM long enough to hit
    app = sender(redis_server.url(1))
    task_ids: dict[str, str] = {}
    killed: set[str] = set()
    rng = random.Random(6)
    for n, table in enumerate(tables):
        if n < in_flight:  # hold the table so VACUUM waits with its statement sent
            with psycopg.connect(app_db) as blocker:
                blocker.execute(
                    sql.SQL("LOCK TABLE {} IN SHARE UPDATE EXCLUSIVE MODE").format(
                        sql.Identifier("public", table)
                    )
                )
                task_ids[table] = send(app, table)
                wait_for(lambda t=table: vacuum_waiting(app_db, t), 30, 0.05, f"VACUUM {table}")
                pid = holder(r, table)
                assert pid is not None and kill(pid)
                killed.add(table)
                time.sleep(0.2)
            # the blocker's transaction ends here: the orphaned VACUUM now completes
        elif n < in_flight + random_kills:
            task_ids[table] = send(app, table)
            pid = wait_for(lambda t=table: holder(r, t), 30, 0.001, f"lock on {table}")
            time.sleep(rng.uniform(0, 0.02))
            if holder(r, table) == pid and kill(pid):
                killed.add(table)
        else:
            task_ids[table] = send(app, table)
    wait_all_succeeded(audit_db, list(task_ids.values()))
    # the in-flight kills always land; a random one lands unless the action was quicker
    assert len(killed) >= in_flight
    print(
        f"kills landed mid-action: {len(killed)} ({in_flight} in flight, "
        f"{len(killed) - in_flight} of {random_kills} at random moments)"
    )
    assert_exactly_once(audit_db, app_db, task_ids, killed)
    assert "WorkerLostError" in worker.log()


def vacuum_waiting(dsn: str, table: str) -> bool:
    rows = audit_rows(
        dsn,
        "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query ILIKE %s",
        f'VACUUM (ANALYZE) "public"."{table}"%',
    )
    return bool(rows)


def test_poison_task_stops_after_bounded_retries_and_is_audited(
    redis_server: RedisServer,
    r: redis.Redis,
    audit_db: str,
    app_db: str,
    webhook: WebhookReceiver,
) -> None:
    """A task whose worker dies on every delivery: 1 + max_retries deliveries, then one
    failed audit row naming it a poison task, one notification, and its claim freed."""
    env = chaos_env(
        redis_server,
        audit_db,
        app_db,
        REMEDIATION_CELERY__MAX_RETRIES_ON_WORKER_LOST="2",
        REMEDIATION_NOTIFY__WEBHOOK_URL=webhook.url,
    )
    make_tables(app_db, ["poison"])
    w = WorkerProcess(env, f"poison-{uuid.uuid4().hex[:6]}").start()
    try:
        task_id = send(sender(redis_server.url(1)), "poison")
        deliveries = 0

        def poison_rows() -> list[tuple[Any, ...]]:
            return audit_rows(
                audit_db,
                "SELECT error FROM action_runs WHERE task_id = %s AND outcome = 'failed'",
                task_id,
            )

        try:
            while not (failed := poison_rows()):
                pid = wait_for(lambda: holder(r, "poison"), 60, 0.005, "a delivery's lock")
                assert kill(pid)
                deliveries += 1
                wait_for(
                    lambda p=pid: holder(r, "poison") != p or poison_rows(),
                    60,
                    0.01,
                    "the next delivery or the poison row",
                )
        except (TimeoutError, AssertionError) as exc:
            raise AssertionError(f"{exc} after {deliveries} kills\n{w.log()[-5000:]}") from None
        wait_for(
            lambda: any("poison task" in json.dumps(b) for b in webhook.bodies),
            30,
            0.2,
            "the poison notice",
        )
        time.sleep(1)  # a second notice would arrive now
    finally:
        w.stop()
    # the lock of a dead holder stays until its lease ends: only the claim is freed
    assert deliveries == 3
    assert len(failed) == 1 and "poison task" in failed[0][0]
    assert "given up (poison task)" in failed[0][0]
    assert list(r.scan_iter(match=keys.idempotency("vacuum_analyze:*"))) == []
    assert len([b for b in webhook.bodies if "poison task" in json.dumps(b)]) == 1


def worker_of(pid: int, workers: list[WorkerProcess]) -> WorkerProcess:
    """The worker whose process group the pool child belongs to."""
    group = os.getpgid(pid)
    return next(w for w in workers if w.proc is not None and w.proc.pid == group)


def test_kill_whole_workers_mid_action_rabbitmq_hands_over(
    redis_server: RedisServer, r: redis.Redis, audit_db: str, app_db: str, rabbit: Rabbit
) -> None:
    """Two workers on RabbitMQ; the whole worker running the action (main process and
    children) is killed -9 mid-action, some while the VACUUM is in flight. RabbitMQ gives
    the message to the other worker at once; the same task resumes and the table is
    vacuumed exactly once. The killed worker is started again for the next round."""
    vhosts = vhosts_for(rabbit)
    try:
        broker = vhosts.url(1)
        env = chaos_env(redis_server, audit_db, app_db, REMEDIATION_BROKER_URL=broker)
        workers = [WorkerProcess(env, f"whole{n}-{uuid.uuid4().hex[:6]}").start() for n in (1, 2)]
        _LOGS[:] = workers
        rounds = scale(2, 10)
        tables = [f"w{i}" for i in range(rounds)]
        make_tables(app_db, tables)
        app = sender(broker)
        task_ids: dict[str, str] = {}
        try:
            for n, table in enumerate(tables):
                with psycopg.connect(app_db) as blocker:
                    if n % 2 == 0:  # every other round: the VACUUM is in flight at the kill
                        blocker.execute(
                            sql.SQL("LOCK TABLE {} IN SHARE UPDATE EXCLUSIVE MODE").format(
                                sql.Identifier("public", table)
                            )
                        )
                    task_ids[table] = send(app, table)
                    pid = wait_for(lambda t=table: holder(r, t), 30, 0.005, f"lock on {table}")
                    victim = worker_of(pid, workers)
                    os.killpg(victim.proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
                    victim.proc.wait(10)  # type: ignore[union-attr]
                wait_all_succeeded(audit_db, [task_ids[table]])
                workers.remove(victim)
                workers.append(WorkerProcess(env, f"whole-{uuid.uuid4().hex[:6]}").start())
                _LOGS[:] = workers
            assert_exactly_once(audit_db, app_db, task_ids, set(tables))
        finally:
            for w in workers:
                w.stop()
    finally:
        vhosts.delete_all()
