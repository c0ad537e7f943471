"""Issue 16, the log source end to end: a client in its own network namespace is refused by
the web server of another namespace, which writes a real access log; `remediation watch
--source logs` sees the log grow and sends access_log_clients for that log (no beat runs),
the worker finds the client hostile and block_ip bans it in an nftables set inside the
server's namespace. fail2ban (Debian's, a private server with one jail with the same rule
on the same log) bans it too, in a set of its own: the benchmark's comparison is real
(bench/watch_logs.py measures both)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.access_log import FAILREGEX
from tests.support.access_server import AccessServer, BanWatch, access_server, add_clients, offend
from tests.support.audit import Audit
from tests.support.base import wait_for
from tests.support.env import process_env
from tests.support.fail2ban import SET, TABLE, Fail2ban, fail2ban_server
from tests.support.netns import Hosts, need_root_and_nft, two_hosts
from tests.support.processes import WatchProcess, WorkerProcess
from tests.support.rabbitmq import Broker
from tests.support.services import RedisServer

BROKER_SLOT = 14
MAXRETRY, FINDTIME = 5, 600
OURS, THEIRS = "remediation/banned_v4", f"{TABLE}/{SET}"


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    need_root_and_nft()
    fail2ban_server()
    with two_hosts(str(tmp_path_factory.mktemp("www"))) as made:
        yield made


@pytest.fixture(scope="module")
def server(hosts: Hosts, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AccessServer]:
    with access_server(hosts, tmp_path_factory.mktemp("access")) as made:
        yield made


@pytest.fixture(scope="module")
def watch_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def env(
    broker: Broker, audit_db: str, watch_redis: RedisServer, hosts: Hosts, server: AccessServer
) -> dict[str, str]:
    return process_env(
        watch_redis,
        audit_db,
        REMEDIATION_BROKER_URL=watch_redis.url(1)
        if broker.kind == "redis"
        else broker.url(BROKER_SLOT),
        REMEDIATION_ACCESS__LOGS=json.dumps([{"name": "www", "path": str(server.log)}]),
        REMEDIATION_ACCESS__MAXRETRY=str(MAXRETRY),
        REMEDIATION_ACCESS__FINDTIME_SECONDS=str(FINDTIME),
        REMEDIATION_ACCESS__NFT="true",
        REMEDIATION_ACCESS__NFT_COMMAND=json.dumps(hosts.in_server("nft")),
        REMEDIATION_WATCH__SOURCES='["logs"]',
    )


@pytest.fixture(scope="module")
def fail2ban(
    hosts: Hosts, server: AccessServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fail2ban]:
    f2b = Fail2ban(
        tmp_path_factory.mktemp("f2b"),
        server.log,
        FAILREGEX,
        MAXRETRY,
        FINDTIME,
        600,
        ["ip", "netns", "exec", hosts.server],
    ).start()
    yield f2b
    f2b.stop()


def test_an_offender_is_banned_by_the_watcher_and_by_fail2ban(
    env: dict[str, str],
    hosts: Hosts,
    server: AccessServer,
    fail2ban: Fail2ban,
    audit_db: str,
    tmp_path: Path,
) -> None:
    """Five refused logins: the watcher's check (cause: event from logs, no beat) leads to
    block_ip, the address is in our set in the server's namespace; fail2ban's jail bans it
    in its set too; a client that was refused fewer times is in neither."""
    audit = Audit(audit_db)
    (since,) = audit.rows("SELECT now() AS t")[0].values()
    worker = WorkerProcess(env, "watchlogs").start()
    watcher = WatchProcess(env, "watchlogs-1", log_path=tmp_path / "watch.log", sources=["logs"])
    bans = BanWatch(hosts).start()
    try:
        watcher.start()
        wait_for(lambda: watcher.active("logs"), 60, 0.2, "the watcher listening to the logs")
        offender, bystander = add_clients(hosts, 2)
        assert offend(hosts, bystander, MAXRETRY - 1) == ["401"] * (MAXRETRY - 1)
        assert offend(hosts, offender, MAXRETRY) == ["401"] * MAXRETRY
        assert len(server.written(offender)) == MAXRETRY
        wait_for(lambda: bans.seen(OURS, offender), 60, 0.2, "the watcher's ban in nftables")
        wait_for(lambda: bans.seen(THEIRS, offender), 60, 0.2, "fail2ban's ban in nftables")
        rows = audit.rows(
            "SELECT c.cause->>'by' AS by, c.cause->>'source' AS source,"
            " c.cause->>'resource' AS resource, c.params->>'target' AS target"
            " FROM findings f JOIN check_runs c ON c.id = f.check_run_id"
            " WHERE f.kind = 'access_client_hostile' AND f.subject = %s AND c.purpose = 'detect'",
            offender,
        )
        assert rows and rows[0] == {
            "by": "event",
            "source": "logs",
            "resource": "access/www",
            "target": "www",
        }
        causes = audit.rows(
            "SELECT DISTINCT cause->>'by' AS by FROM check_runs"
            " WHERE check_name = 'access_log_clients' AND purpose = 'detect' AND started_at >= %s",
            since,
        )
        assert causes == [{"by": "event"}]  # the catch-up and the log's growth, no beat
        for where in (OURS, THEIRS):
            assert bans.seen(where, bystander) is None
    finally:
        bans.stop()
        watcher.stop()
        worker.stop()
