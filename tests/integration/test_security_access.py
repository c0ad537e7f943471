"""Runbooks 003 "Review access logs" and 001 "Block suspicious IPs" end to end through a real
worker: a client in its own network namespace is refused five times by the HTTP server of
another namespace (the access log says so), the check sent as beat would finds it, block_ip
bans it in Redis and in an nftables set inside the server's namespace, and the verification
(the check again: the ban is in force in Redis and in the set) says recovered. The client's
requests are dropped until the ban expires, then served again, and the old refusals do not
ban it a second time."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from remediation.security import bans
from tests.support.audit import Audit
from tests.support.base import wait_for
from tests.support.env import process_env
from tests.support.netns import Hosts, need_root_and_nft, two_hosts
from tests.support.processes import WorkerProcess
from tests.support.rabbitmq import Broker
from tests.support.services import RedisServer

BROKER_SLOT = 13  # a vhost of its own on RabbitMQ
BANTIME = 10  # long enough to see the refusal on a slow machine, short enough to wait out


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    need_root_and_nft()
    with two_hosts(str(tmp_path_factory.mktemp("www"))) as made:
        yield made


@pytest.fixture(scope="module")
def access_redis() -> Iterator[RedisServer]:
    """State, results and (Redis broker) messages of this module's worker, apart from all."""
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def access_env(
    broker: Broker,
    audit_db: str,
    access_redis: RedisServer,
    hosts: Hosts,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, str]:
    log = tmp_path_factory.mktemp("logs") / "access.log"
    log.write_text("")
    return process_env(
        access_redis,
        audit_db,
        REMEDIATION_BROKER_URL=access_redis.url(1)
        if broker.kind == "redis"
        else broker.url(BROKER_SLOT),
        REMEDIATION_ACCESS__LOGS=json.dumps([{"name": "www", "path": str(log)}]),
        REMEDIATION_ACCESS__NFT="true",
        REMEDIATION_ACCESS__NFT_COMMAND=json.dumps(hosts.in_server("nft")),
        REMEDIATION_ACCESS__BANTIME_SECONDS=str(BANTIME),
        REMEDIATION_VERIFY__ATTEMPTS="5",
    )


@pytest.fixture(scope="module")
def access_worker(access_env: dict[str, str]) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(access_env, "access").start()
    yield worker
    worker.stop()


def refusals(env: dict[str, str], ip: str, n: int) -> None:
    """n lines of the server's access log: ip refused (401) just now."""
    stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime())
    line = f'{ip} - - [{stamp}] "POST /login HTTP/1.1" 401 0 "-" "bot"\n'
    path = Path(json.loads(env["REMEDIATION_ACCESS__LOGS"])[0]["path"])
    with path.open("a") as fh:
        fh.write(line * n)


def test_a_hostile_client_is_banned_verified_and_served_again_after_expiry(
    access_env: dict[str, str], access_worker: WorkerProcess, hosts: Hosts, audit_db: str
) -> None:
    """check -> finding -> admitted -> block_ip succeeded -> verification recovered; the
    client is refused while banned and served again after the ban's expiry, not re-banned."""
    state = redis.Redis.from_url(access_env["REMEDIATION_STATE_REDIS_URL"])
    client = Celery(
        broker=access_env["REMEDIATION_BROKER_URL"],
        backend=access_env["REMEDIATION_RESULT_BACKEND"],
    )
    audit = Audit(audit_db)

    def sweep() -> dict[str, int]:
        task = "remediation.check.access_log_clients"
        out: dict[str, int] = client.send_task(task, kwargs={"target": "self"}).get(timeout=60)
        return out

    assert hosts.get() == 200
    refusals(access_env, hosts.client_ip, 5)
    assert sweep()["dispatched"] == 1
    chain = audit.wait_rows(
        "SELECT c.purpose, f.kind, f.subject, f.target, d.decision, a.outcome, a.verification,"
        " a.result FROM findings f JOIN check_runs c ON c.id = f.check_run_id"
        " JOIN guard_decisions d ON d.finding_id = f.id JOIN action_runs a ON a.decision_id = d.id"
        " WHERE d.action = 'block_ip' AND a.verification IS NOT NULL",
        timeout=90,
    )
    row = chain[0]
    assert (row["kind"], row["subject"], row["target"]) == (
        "access_client_hostile",
        hosts.client_ip,
        "www",
    )
    assert (row["decision"], row["outcome"], row["verification"]) == (
        "admitted",
        "succeeded",
        "recovered",
    )
    assert row["result"]["detail"]["nft_set"] == "inet remediation banned_v4"
    verify = audit.rows(
        "SELECT v.purpose, v.findings_count FROM action_runs a"
        " JOIN check_runs v ON v.id = a.verify_check_run_id WHERE a.action = 'block_ip'"
    )
    assert verify == [{"purpose": "verify", "findings_count": 0}]
    assert hosts.get() is None  # dropped in the server's namespace
    assert state.exists(bans.ban_key(hosts.client_ip))
    wait_for(lambda: hosts.get() == 200, BANTIME + 20, 0.3, "served again after expiry")
    assert not state.exists(bans.ban_key(hosts.client_ip))
    assert sweep()["dispatched"] == 0  # the refusals before the ban are not counted again
    client.close()
