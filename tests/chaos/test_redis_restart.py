"""Redis killed -9 and restarted mid-run: workers reconnect and carry on; while the guard
state is gone no action runs (each attempt audited as 'unavailable'); the guard state
survives the restart (append-only file); every task sent afterwards is audited once."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import redis
from celery import Celery

from tests.support.audit import Audit
from tests.support.base import wait_for
from tests.support.chaos import scale
from tests.support.http_doubles import WebhookReceiver
from tests.support.processes import WorkerProcess
from tests.support.services import PersistentRedisServer, RedisServer

RESTARTS = scale(1, 5)
DOWN = 3.0  # seconds Redis stays dead
AUDIT_BOUND = 60.0  # seconds for a batch to be audited (reconnect included)
DEDUPES, NOTIFIES, CHECKS = 4, 2, 2  # tasks per batch
JOBS = ["a", "b", "a", "c", "b"]  # a job list with two duplicates
DEDUPED = ["a", "b", "c"]


@dataclass
class Batch:
    """Tasks sent together: dedupe_job_queue on fresh lists, notify, a check."""

    tag: str
    dedupes: dict[str, str] = field(default_factory=dict)  # task id -> job list key
    notifies: dict[str, str] = field(default_factory=dict)  # task id -> incident
    checks: list[str] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        return [*self.dedupes, *self.notifies, *self.checks]


class Stream:
    """Sends batches of real tasks through the broker and reads what the audit trail and
    the world (job lists, webhook) say about them."""

    def __init__(self, broker: str, audit: Audit, side: RedisServer, hook: WebhookReceiver):
        self.app = Celery(broker=broker, set_as_current=False)
        self.audit, self.hook = audit, hook
        self.jobs = redis.Redis.from_url(side.url(0), decode_responses=True)
        self.run = uuid.uuid4().hex[:8]
        self.batches: list[Batch] = []

    def send(self, tag: str) -> Batch:
        batch = Batch(f"{self.run}-{tag}-{len(self.batches)}")
        for i in range(DEDUPES):
            key = f"chaos:jobs:{batch.tag}:{i}"
            self.jobs.rpush(key, *JOBS)
            batch.dedupes[self._send("act.dedupe_job_queue", target="app", key=key)] = key
        for i in range(NOTIFIES):
            incident = f"chaos-{batch.tag}-{i}"
            kwargs = {"text": f"chaos {tag}", "incident": incident, "kind": "chaos"}
            batch.notifies[self._send("act.notify", **kwargs)] = incident
        for _ in range(CHECKS):  # an empty list: no finding, so no playbook action
            batch.checks.append(
                self._send("check.redis_job_queue", target="app", key=f"chaos:probe:{batch.tag}")
            )
        self.batches.append(batch)
        return batch

    def _send(self, name: str, **kwargs: str) -> str:
        return str(self.app.send_task(f"remediation.{name}", kwargs=kwargs).id)

    def rows(self, batch: Batch) -> list[dict[str, object]]:
        """One row per audit record of the batch's tasks: decisions and check runs."""
        return self.audit.rows(
            "SELECT task_id, decision AS what, guard, extract(epoch FROM decided_at) AS t"
            " FROM guard_decisions WHERE task_id = ANY(%s) UNION ALL"
            " SELECT task_id, status, NULL, extract(epoch FROM started_at)"
            " FROM check_runs WHERE task_id = ANY(%s) AND status <> 'running'",
            batch.ids,
            batch.ids,
        )

    def wait(self, batch: Batch, timeout: float = AUDIT_BOUND) -> list[dict[str, object]]:
        """Every task of the batch audited; returns the rows."""

        def complete() -> list[dict[str, object]] | None:
            rows = self.rows(batch)
            return rows if {r["task_id"] for r in rows} >= set(batch.ids) else None

        done: list[dict[str, object]] = wait_for(complete, timeout, 0.2, f"{batch.tag} audited")
        return done

    def action_runs(self, ids: list[str]) -> Counter[tuple[str, str]]:
        rows = self.audit.rows(
            "SELECT task_id, outcome FROM action_runs WHERE task_id = ANY(%s)", ids
        )
        return Counter((str(r["task_id"]), str(r["outcome"])) for r in rows)

    def webhook_count(self, incident: str) -> int:
        return sum(1 for body in list(self.hook.bodies) if body.get("incident") == incident)

    def close(self) -> None:
        self.app.close()
        self.jobs.close()


def check_batch(stream: Stream, batch: Batch, state_up: bool) -> Counter[str]:
    """Each task audited exactly once; with guard state, admitted and applied once; without
    it, the dedupe refused ('unavailable') and its list untouched. Returns decisions."""
    rows = stream.wait(batch)
    per_task = Counter(str(r["task_id"]) for r in rows)
    assert {t: n for t, n in per_task.items() if n != 1} == {}, "audited more than once"
    what = {str(r["task_id"]): (r["what"], r["guard"]) for r in rows}
    runs = stream.action_runs(list(batch.dedupes))
    for task_id, key in batch.dedupes.items():
        expected = ("admitted", None) if state_up else ("unavailable", "state")
        assert what[task_id] == expected, (key, what[task_id])
        ran = runs[(task_id, "succeeded")]
        assert (ran, stream.jobs.lrange(key, 0, -1)) == ((1, DEDUPED) if state_up else (0, JOBS))
    for task_id, incident in batch.notifies.items():  # telling a human needs no guard state
        assert what[task_id] == ("admitted", None if state_up else "state")
        wait_for(lambda i=incident: stream.webhook_count(i) >= 1, 15, 0.1, f"webhook {incident}")
        assert stream.webhook_count(incident) == 1
    assert all(what[t] == ("ok", None) for t in batch.checks)
    return Counter(str(what[t][0]) for t in batch.dedupes)


def nothing_in_flight(server: PersistentRedisServer) -> None:
    """Wait until the worker has acknowledged every message (kombu's unacked hash is empty).

    Celery/kombu 5.7 on a Redis broker: when the connection drops while a late-acked
    message is still unacknowledged, closing the dead channel or acking on it afterwards can
    raise AttributeError ('NoneType' object has no attribute 'hostname') and the worker's
    main process exits ("Unrecoverable error"); reproduced in about 2 of 5 kills with 40
    tasks in flight. Until that is handled, this test restarts Redis between messages."""
    broker = redis.Redis.from_url(server.url(1))
    try:
        wait_for(lambda: broker.hlen("unacked") == 0, 30, 0.05, "every message acknowledged")
    finally:
        broker.close()


def idempotency_keys(server: PersistentRedisServer) -> set[str]:
    client = redis.Redis.from_url(server.url(0), decode_responses=True)
    try:
        return set(client.scan_iter(match="rem:idem:*", count=1000))
    finally:
        client.close()


@dataclass
class Restart:
    """One kill -9 and restart of Redis and what followed."""

    down_at: float
    up_at: float = 0.0
    first_audited_after: float = 0.0  # Redis back -> first task sent after it audited
    all_audited_after: float = 0.0  # Redis back -> the whole batch audited
    decisions: Counter[str] = field(default_factory=Counter)  # of the batch sent after


def restart(
    server: PersistentRedisServer, stream: Stream, while_down: Callable[[], None]
) -> Restart:
    """Kill -9 Redis, do while_down, restart it on the same port; the guard state must
    survive and a batch sent then be audited exactly once."""
    kept = idempotency_keys(server)
    assert kept, "no guard state to keep"
    r = Restart(time.time())
    server.kill()
    while_down()
    time.sleep(max(0.0, r.down_at + DOWN - time.time()))
    server.restart()
    r.up_at = time.time()
    assert kept <= idempotency_keys(server), "guard state lost in the restart"
    after = stream.send("after")
    rows = stream.wait(after)
    r.first_audited_after = min(float(x["t"]) for x in rows) - r.up_at  # type: ignore[arg-type]
    r.all_audited_after = time.time() - r.up_at
    r.decisions = check_batch(stream, after, state_up=True)
    return r


def summary(name: str, restarts: list[Restart], decisions: Counter[str]) -> str:
    return (
        f"\n{name}: {len(restarts)} restarts of {DOWN:.0f}s; first task after the restart "
        f"audited after {[round(r.first_audited_after, 1) for r in restarts]} s, whole batch "
        f"after {[round(r.all_audited_after, 1) for r in restarts]} s; dedupe decisions "
        f"{dict(decisions)}"
    )


def test_redis_broker_and_state_restarted_worker_carries_on(
    chaos_env: dict[str, str],
    start_worker: Callable[..., WorkerProcess],
    state_redis: PersistentRedisServer,
    side_redis: RedisServer,
    chaos_audit: Audit,
    webhook: WebhookReceiver,
) -> None:
    """Broker and guard state on one Redis, killed -9 and restarted: the worker reconnects,
    keeps its guard state and audits every task sent afterwards exactly once."""
    start_worker(chaos_env)
    stream = Stream(chaos_env["REMEDIATION_BROKER_URL"], chaos_audit, side_redis, webhook)
    decisions: Counter[str] = Counter()
    restarts = []
    try:
        for _ in range(RESTARTS):
            decisions += check_batch(stream, stream.send("before"), state_up=True)
            nothing_in_flight(state_redis)
            restarts.append(restart(state_redis, stream, lambda: None))
            decisions += restarts[-1].decisions
    finally:
        stream.close()
    print(summary("redis broker + state restart", restarts, decisions))
    assert decisions == Counter(admitted=2 * RESTARTS * DEDUPES)
    assert all(r.all_audited_after < AUDIT_BOUND for r in restarts)


def test_state_redis_restarted_under_rabbitmq_fails_safe(
    chaos_env: dict[str, str],
    start_worker: Callable[..., WorkerProcess],
    state_redis: PersistentRedisServer,
    side_redis: RedisServer,
    chaos_audit: Audit,
    webhook: WebhookReceiver,
    rabbitmq_url: str,
) -> None:
    """Broker on RabbitMQ, only the state Redis killed: tasks keep arriving, every action
    attempted meanwhile is refused and audited 'unavailable'; normal admissions after."""
    env = {
        **chaos_env,
        "REMEDIATION_BROKER_URL": rabbitmq_url,
        "REMEDIATION_RESULT_BACKEND": side_redis.url(2),
    }
    start_worker(env)
    stream = Stream(rabbitmq_url, chaos_audit, side_redis, webhook)
    decisions: Counter[str] = Counter()
    restarts = []

    def while_down() -> None:
        nonlocal decisions
        decisions += check_batch(stream, stream.send("down"), state_up=False)

    try:
        for _ in range(RESTARTS):
            decisions += check_batch(stream, stream.send("before"), state_up=True)
            restarts.append(restart(state_redis, stream, while_down))
            decisions += restarts[-1].decisions
    finally:
        stream.close()
    print(summary("state redis restart under rabbitmq", restarts, decisions))
    assert decisions == Counter(admitted=2 * RESTARTS * DEDUPES, unavailable=RESTARTS * DEDUPES)
