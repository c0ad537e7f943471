"""Fixtures for the chaos tests: private Redis servers that may be killed, a fresh audit
database per test, worker and beat processes that are always stopped, a RabbitMQ vhost."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from remediation.audit.store import AuditStore
from tests.support.audit import Audit
from tests.support.env import missing, process_env
from tests.support.http_doubles import WebhookReceiver
from tests.support.processes import BeatProcess, WorkerProcess
from tests.support.rabbitmq import vhosts_for
from tests.support.servers import Rabbit
from tests.support.services import PersistentRedisServer, RedisServer, as_url, scratch_database

R = TypeVar("R", bound=RedisServer)


def _serving(server: R) -> Iterator[R]:
    """Start server for a fixture (skip locally, fail in CI, if it cannot) and stop it after."""
    try:
        server.start()
    except (RuntimeError, TimeoutError) as exc:
        missing(f"redis-server ({exc})")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def state_redis() -> Iterator[PersistentRedisServer]:
    """The state Redis (guards, incidents, redbeat; the broker too unless told otherwise),
    persisted to an append-only file so that a kill and restart keep it."""
    yield from _serving(PersistentRedisServer())


@pytest.fixture
def side_redis() -> Iterator[RedisServer]:
    """A Redis that is never restarted: the monitored application's job lists, and results."""
    yield from _serving(RedisServer())


@pytest.fixture
def chaos_audit(pg_admin: str) -> Iterator[Audit]:
    """A fresh audit database, so counts cover this test only."""
    with scratch_database(pg_admin, "rem_chaos") as dsn:
        url = as_url(dsn)
        AuditStore(url).upgrade()
        yield Audit(url)


@pytest.fixture
def chaos_env(
    state_redis: PersistentRedisServer,
    side_redis: RedisServer,
    chaos_audit: Audit,
    webhook: WebhookReceiver,
    tmp_path: Path,
) -> dict[str, str]:
    """Worker and beat environment: everything private to this test, guards that never
    get in the way of counting (no budget, flap or metrics port shared with other tests)."""
    return process_env(
        state_redis,
        chaos_audit.dsn,
        REMEDIATION_REDIS_TARGETS__APP=side_redis.url(0),
        REMEDIATION_NOTIFY__WEBHOOK_URL=webhook.url,
        REMEDIATION_GUARDS__BUDGET_OVERRIDES='{"dedupe_job_queue": 100000, "notify": 100000}',
        REMEDIATION_JOB_QUEUE__KEYS='["chaos:*"]',
        REMEDIATION_GUARDS__FLAP_MAX_RUNS="1000",
        REMEDIATION_GUARDS__FLAP_OVERRIDES='{"dedupe_job_queue": 1000, "notify": 1000}',
        REMEDIATION_AUDIT__SPOOL_DIR=str(tmp_path / "spool"),
        REMEDIATION_METRICS__ENABLED="false",
        REMEDIATION_METRICS__MULTIPROC_DIR=str(tmp_path / "metrics"),
    )


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """start_worker(env, concurrency=2): a real worker, stopped at the end of the test."""
    started: list[WorkerProcess] = []

    def start(env: dict[str, str], concurrency: int = 2) -> WorkerProcess:
        name = f"chaos{len(started)}-{uuid.uuid4().hex[:6]}"
        worker = WorkerProcess(env, name, concurrency, log_path=tmp_path / f"{name}.log")
        started.append(worker)
        return worker.start()

    try:
        yield start
    finally:
        for worker in started:
            worker.stop()


@pytest.fixture
def start_beat(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], BeatProcess]]:
    """start_beat(env): a real beat process, killed at the end of the test."""
    started: list[BeatProcess] = []

    def start(env: dict[str, str]) -> BeatProcess:
        beat = BeatProcess(
            env, f"beat{len(started)}", log_path=tmp_path / f"beat{len(started)}.log"
        )
        started.append(beat)
        return beat.start()

    try:
        yield start
    finally:
        for beat in started:
            beat.kill()


@pytest.fixture
def rabbitmq_url(rabbit: Rabbit) -> Iterator[str]:
    """amqp:// on a vhost of its own, deleted afterwards: no queue is shared with any other
    test or worker on the same RabbitMQ."""
    vhosts = vhosts_for(rabbit)
    try:
        yield vhosts.url(0)
    finally:
        vhosts.delete_all()
