"""block_ip and `remediation unblock` against a real redis-server and, for the nftables part,
real network namespaces: a client refused after its ban and served again after expiry."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis
from psycopg.rows import dict_row

from remediation.actions.access import BlockIpParams, block_ip, plan_ban
from remediation.cli import main
from remediation.context import ActionContext, CheckContext
from remediation.errors import Refused
from remediation.findings import ActionResult
from remediation.guards import keys
from remediation.logging import get_logger
from remediation.runner import Runner
from remediation.security import bans
from tests.support.base import wait_for
from tests.support.netns import Hosts, need_root_and_nft, two_hosts
from tests.support.runner import Recorder

LOGS = json.dumps([{"name": "api", "path": "/nonexistent/access.log"}])


def ban(settings: Any, ip: str, target: str = "api") -> ActionResult:
    return block_ip(ActionContext(settings, get_logger()), BlockIpParams(target=target, ip=ip))


def root_tables() -> set[str]:
    """The root namespace's nftables tables (their counters move with traffic: not compared)."""
    listed = subprocess.run(
        ["nft", "list", "tables"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    return set(listed.splitlines())


@pytest.fixture
def hosts(tmp_path: Any) -> Iterator[Hosts]:
    need_root_and_nft()
    assert "table inet remediation" not in root_tables()
    with two_hosts(str(tmp_path)) as made:
        yield made
    assert "table inet remediation" not in root_tables()  # made in the server namespace only


def nft_env(hosts: Hosts, **extra: str) -> dict[str, str]:
    return {
        "REMEDIATION_ACCESS__LOGS": LOGS,
        "REMEDIATION_ACCESS__NFT": "true",
        "REMEDIATION_ACCESS__NFT_COMMAND": json.dumps(hosts.in_server("nft")),
        **extra,
    }


def test_a_banned_client_is_refused_then_served_again_after_expiry(
    settings_env: Any, r: redis.Redis, hosts: Hosts
) -> None:
    """The ban makes the table in the server namespace and drops the client's requests; at
    expiry the Redis key and the set element are gone and the client is served again."""
    s = settings_env(**nft_env(hosts, REMEDIATION_ACCESS__BANTIME_SECONDS="5"))
    assert hosts.get() == 200
    result = ban(s, hosts.client_ip)
    assert result.ok and result.detail["new"] and result.detail["seconds"] == 5, result
    assert result.detail["nft_made"] == [
        "set banned_v4",
        "set banned_v6",
        "chain input",
        "rule ip saddr @banned_v4 drop",
        "rule ip6 saddr @banned_v6 drop",
    ]
    assert hosts.get() is None  # dropped
    assert 0 < r.ttl(bans.ban_key(hosts.client_ip)) <= 5
    assert hosts.client_ip in hosts.nft("list", "set", "inet", "remediation", "banned_v4")
    wait_for(lambda: hosts.get() == 200, 20, 0.3, "the client served again after expiry")
    assert not r.exists(bans.ban_key(hosts.client_ip))
    assert hosts.client_ip not in hosts.nft("list", "set", "inet", "remediation", "banned_v4")
    six = ban(s, "2001:db8::5")  # IPv6 goes to its own set; the table is made once
    assert six.detail["nft_made"] == [] and six.detail["nft_set"].endswith("banned_v6")
    assert "2001:db8::5" in hosts.nft("list", "set", "inet", "remediation", "banned_v6")


def test_unblock_lifts_the_ban_in_redis_and_nft_and_is_audited(
    settings_env: Any, r: redis.Redis, hosts: Hosts, audit_db: str, capsys: Any
) -> None:
    """`remediation unblock IP` removes the key and the element (the client is served at
    once) and leaves a decision and an action run in the audit."""
    s = settings_env(**nft_env(hosts, REMEDIATION_ACCESS__BANTIME_SECONDS="600"))
    assert ban(s, hosts.client_ip).ok
    assert hosts.get() is None
    assert main(["unblock", hosts.client_ip, "--reason", "false positive"]) == 0
    assert "unblocked" in capsys.readouterr().out
    assert hosts.get() == 200
    assert not r.exists(bans.ban_key(hosts.client_ip))
    with psycopg.connect(audit_db, row_factory=dict_row) as conn:
        row = conn.execute(
            "SELECT d.decision, d.guard, d.reason, a.outcome, a.result FROM guard_decisions d"
            " JOIN action_runs a ON a.decision_id = d.id WHERE d.action = 'unblock_ip'"
            " AND d.resource = %s ORDER BY d.id DESC LIMIT 1",
            (f"ip:{hosts.client_ip}",),
        ).fetchone()
    assert row is not None
    assert (row["decision"], row["guard"], row["outcome"]) == ("unblock", "operator", "succeeded")
    assert "false positive" in row["reason"] and row["result"]["redis"] is True


def test_unblock_rejects_what_is_not_an_address(settings_env: Any, capsys: Any) -> None:
    """Anything ipaddress does not read as one host address is a usage error; nothing runs."""
    settings_env(REMEDIATION_ACCESS__LOGS=LOGS)
    for bad in ("10.0.0.0/8", "not-an-ip", "1.2.3.4; rm -rf /", "fe80::1%eth0"):
        assert main(["unblock", bad]) == 2
    assert "not a client address" in capsys.readouterr().err


def test_repeat_offenders_get_longer_bans_up_to_the_cap(settings_env: Any, r: redis.Redis) -> None:
    """Each new ban within the repeat window doubles (BANTIME_FACTOR), up to BANTIME_MAX;
    an address still banned keeps its ban and is not counted again."""
    s = settings_env(
        REMEDIATION_ACCESS__LOGS=LOGS,
        REMEDIATION_ACCESS__BANTIME_SECONDS="100",
        REMEDIATION_ACCESS__BANTIME_MAX_SECONDS="350",
    )
    seen = []
    for _ in range(4):
        first = ban(s, "203.0.113.7")
        again = ban(s, "203.0.113.7")
        assert (first.detail["new"], again.detail["new"]) == (True, False)
        assert again.detail["offence"] == first.detail["offence"]
        seen.append((first.detail["offence"], first.detail["seconds"]))
        bans.unban(r, "203.0.113.7")
    assert seen == [(1, 100), (2, 200), (3, 350), (4, 350)]


def test_addresses_are_canonical_and_garbage_is_rejected(settings_env: Any, r: redis.Redis) -> None:
    """An IPv4-mapped IPv6 address is banned as its IPv4 form, IPv6 compressed; networks,
    names, zones, the unspecified and multicast addresses are rejected before anything."""
    s = settings_env(REMEDIATION_ACCESS__LOGS=LOGS)
    assert ban(s, "::ffff:198.51.100.4").detail["ip"] == "198.51.100.4"
    assert ban(s, "2001:DB8:0:0::1").detail["ip"] == "2001:db8::1"
    assert r.exists(bans.ban_key("198.51.100.4"), bans.ban_key("2001:db8::1")) == 2
    runner = Runner(s, Recorder())
    unspecified = ".".join("0" * 4)
    for bad in ("10.0.0.0/8", "example.com", "fe80::1%eth0", unspecified, "224.0.0.1", "1.2.3"):
        out = runner.run_action("block_ip", {"target": "api", "ip": bad}, task_id=f"b-{bad}")
        assert out.outcome == "rejected", (bad, out)


def test_refusals_cost_the_guards_nothing(settings_env: Any, r: redis.Redis) -> None:
    """Allow-listed addresses, an unknown log and a missing blast-radius cap are refused
    before any guard: no ban, no blast-radius unit."""
    s = settings_env(
        REMEDIATION_ACCESS__LOGS=LOGS, REMEDIATION_ACCESS__ALLOW_NETWORKS='["192.0.2.0/24"]'
    )
    runner = Runner(s, Recorder())
    for n, (target, ip, why) in enumerate(
        (
            ("api", "127.0.0.53", "allow-listed"),
            ("api", "::1", "allow-listed"),
            ("api", "::ffff:127.0.0.1", "allow-listed"),
            ("api", "192.0.2.77", "allow-listed"),
            ("other", "203.0.113.9", "no access log named"),
        )
    ):
        out = runner.run_action("block_ip", {"target": target, "ip": ip}, task_id=f"r{n}")
        assert out.outcome == "refused" and why in out.reason, out
    capless = settings_env(REMEDIATION_ACCESS__LOGS=LOGS, REMEDIATION_GUARDS__BLAST_RADIUS="{}")
    out = Runner(capless, Recorder()).run_action(
        "block_ip", {"target": "api", "ip": "203.0.113.9"}, task_id="r-cap"
    )
    assert out.outcome == "refused" and "blast-radius cap" in out.reason
    assert not list(r.scan_iter(match="rem:ban:*"))
    assert r.zcard(keys.blast("block_ip")) == 0


def test_a_flood_of_offenders_bans_only_the_caps_worth_and_never_the_allow_list(
    settings_env: Any, r: redis.Redis
) -> None:
    """500 calls (450 offenders, 40 in an allow-listed network, 10 loopback) with a cap of
    25 per window: exactly 25 bans, every one outside the allow-list; the rest suppressed by
    the blast guard or refused, and the refusals took no unit."""
    s = settings_env(
        REMEDIATION_ACCESS__LOGS=LOGS,
        REMEDIATION_ACCESS__ALLOW_NETWORKS='["198.18.0.0/15"]',
        REMEDIATION_GUARDS__BLAST_RADIUS='{"block_ip": {"units": 25, "window_seconds": 600}}',
    )
    allowed = [f"198.18.{i // 200}.{i % 200 + 1}" for i in range(40)] + [
        f"127.0.{i}.1" for i in range(10)
    ]
    hostile = [f"203.0.{i // 200}.{i % 200 + 1}" for i in range(450)]
    calls = [ip for pair in zip(allowed * 9, hostile, strict=False) for ip in pair]
    calls += hostile[len(calls) - len(hostile) :] if len(calls) < 500 else []
    calls = list(dict.fromkeys(calls + hostile + allowed))
    assert len(calls) == 500
    runner = Runner(s, Recorder())
    outcomes = [
        runner.run_action("block_ip", {"target": "api", "ip": ip}, task_id=f"f{n}").outcome
        for n, ip in enumerate(calls)
    ]
    banned = {k.decode().removeprefix("rem:ban:ip:") for k in r.scan_iter(match="rem:ban:ip:*")}
    assert len(banned) == 25 and banned <= set(hostile)
    assert outcomes.count("succeeded") == 25
    assert outcomes.count("refused") == len(allowed)
    assert outcomes.count("suppressed") == 500 - 25 - len(allowed)


def test_nft_that_fails_or_hangs_is_a_failed_ban_and_the_check_still_reports_it(
    settings_env: Any, r: redis.Redis, tmp_path: Any
) -> None:
    """An nft command that does not exist, or hangs past NFT_TIMEOUT_SECONDS, makes the ban
    fail (the Redis part stays); the check keeps reporting the client, saying why, so the
    verification cannot pass for a ban that is not in force."""
    log = tmp_path / "access.log"
    log.write_text("")
    hang = ["python3", "-c", "import time; time.sleep(30)"]
    for command, why in ((["/nonexistent/nft"], "FileNotFoundError"), (hang, "TimeoutExpired")):
        s = settings_env(
            REMEDIATION_ACCESS__LOGS=json.dumps([{"name": "api", "path": str(log)}]),
            REMEDIATION_ACCESS__NFT="true",
            REMEDIATION_ACCESS__NFT_COMMAND=json.dumps(command),
            REMEDIATION_ACCESS__NFT_TIMEOUT_SECONDS="1",
        )
        bans.unban(r, "203.0.113.50")
        result = ban(s, "203.0.113.50")
        assert not result.ok and why in result.summary, result
        assert r.exists(bans.ban_key("203.0.113.50"))
    from remediation.checks.access import AccessLogClientsParams, access_log_clients

    ctx = ActionContext(s, get_logger())
    access_log_clients(ctx, AccessLogClientsParams())
    stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime())
    log.write_text(f'203.0.113.60 - - [{stamp}] "GET / HTTP/1.1" 401 0 "-" "x"\n' * 5)
    bans.ban(r, "203.0.113.60", base=60, factor=2, most=60, repeat_window=60, log="api", reason="t")
    found = access_log_clients(ctx, AccessLogClientsParams())
    assert [f.subject for f in found] == []  # hits before the ban's end do not count
    bans.unban(r, "203.0.113.60")
    r.delete(bans.history_key("203.0.113.60"))
    found = access_log_clients(ctx, AccessLogClientsParams())
    assert [f.subject for f in found] == ["203.0.113.60"]
    bans.ban(r, "203.0.113.60", base=60, factor=2, most=60, repeat_window=60, log="api", reason="t")
    r.hset(bans.history_key("203.0.113.60"), "until", "0")  # as if banned before the hits
    found = access_log_clients(ctx, AccessLogClientsParams())
    assert [f.subject for f in found] == ["203.0.113.60"]  # in Redis, but not in the set
    assert "cannot read the nft sets" in found[0].evidence["nft"]


def test_a_flood_in_the_log_through_check_playbook_and_guards(
    settings_env: Any, r: redis.Redis, tmp_path: Any, audit_db: str
) -> None:
    """500 clients over MAXRETRY in the log (40 allow-listed, 10 loopback): the check
    proposes only the 450 others (plus one surge), the playbook sends block_ip for each,
    the blast guard lets 25 through; each of those 25 is verified recovered."""
    log = tmp_path / "access.log"
    log.write_text("")
    s = settings_env(
        REMEDIATION_ACCESS__LOGS=json.dumps([{"name": "api", "path": str(log)}]),
        REMEDIATION_ACCESS__ALLOW_NETWORKS='["198.18.0.0/15"]',
        REMEDIATION_ACCESS__MAXRETRY="3",
        REMEDIATION_GUARDS__BLAST_RADIUS='{"block_ip": {"units": 25, "window_seconds": 600}}',
        REMEDIATION_VERIFY__ATTEMPTS="1",
    )
    sent = Recorder()
    runner = Runner(s, sent)
    runner.run_check("access_log_clients", {"target": "self"})
    allowed = [f"198.18.0.{i}" for i in range(1, 41)] + [f"127.0.{i}.1" for i in range(10)]
    hostile = [f"203.0.{i // 200}.{i % 200 + 1}" for i in range(450)]
    stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime())
    with log.open("a") as fh:
        for ip in allowed + hostile:
            fh.write(f'{ip} - - [{stamp}] "POST /login HTTP/1.1" 401 0 "-" "x"\n' * 3)
    out = runner.run_check("access_log_clients", {"target": "self"})
    kinds = [f.kind for f in out.findings]
    assert kinds.count("access_client_hostile") == 450 and kinds.count("access_hostile_surge") == 1
    calls = [(t, k, tr) for t, k, tr in sent.sent if t == "remediation.act.block_ip"]
    assert sorted(k["ip"] for _, k, _ in calls) == sorted(hostile)
    outcomes = [
        runner.run_action(t, k, trigger=tr, task_id=f"flood-{n}")
        for n, (t, k, tr) in enumerate(calls)
    ]
    done = [o for o in outcomes if o.outcome == "succeeded"]
    assert len(done) == 25 and all(o.verification == "recovered" for o in done)
    assert [o.outcome for o in outcomes].count("suppressed") == 425
    banned = {k.decode().removeprefix("rem:ban:ip:") for k in r.scan_iter(match="rem:ban:ip:*")}
    assert len(banned) == 25 and banned <= set(hostile)


def plan_of_ban(settings: Any, ip: str) -> Any:
    return plan_ban(CheckContext(settings, get_logger()), BlockIpParams(target="api", ip=ip))


def test_the_ban_plan_tells_the_ban_a_call_then_places_and_writes_nothing(
    settings_env: Any, r: redis.Redis
) -> None:
    """For each repeat offence the plan's duration is the one the ban then gets, with the
    nft set named; planning writes no key (no ban, no history, no index)."""
    s = settings_env(
        REMEDIATION_ACCESS__LOGS=LOGS,
        REMEDIATION_ACCESS__BANTIME_SECONDS="100",
        REMEDIATION_ACCESS__BANTIME_MAX_SECONDS="350",
        REMEDIATION_ACCESS__NFT="true",
        REMEDIATION_ACCESS__NFT_COMMAND=json.dumps(["/nonexistent/nft"]),
    )
    ip = "203.0.113.8"
    (first,) = plan_of_ban(s, ip).items
    assert first.key == f"ip:{ip}" and first.detail["nft_set"] == "inet remediation banned_v4"
    assert not r.exists(bans.ban_key(ip), bans.history_key(ip), bans.INDEX)
    for _ in range(3):
        (planned,) = plan_of_ban(s, ip).items
        placed = ban(s, ip).detail  # the nft part fails here: the Redis ban is what counts
        assert (planned.detail["seconds"], planned.detail["offence"], planned.detail["new"]) == (
            placed["seconds"],
            placed["offence"],
            True,
        )
        (held,) = plan_of_ban(s, ip).items
        assert held.detail["new"] is False and "banned already" in held.what
        bans.unban(r, ip)


def test_an_approval_bans_only_the_approved_address(settings_env: Any, r: redis.Redis) -> None:
    """A call whose address is not the one approved is refused and bans nothing."""
    s = settings_env(REMEDIATION_ACCESS__LOGS=LOGS)
    params = BlockIpParams(target="api", ip="203.0.113.9")
    other = ActionContext(s, get_logger(), approved=frozenset({"ip:203.0.113.10"}))
    with pytest.raises(Refused, match="not the address approved"):
        block_ip(other, params)
    assert not r.exists(bans.ban_key("203.0.113.9"), bans.INDEX)
    ours = ActionContext(s, get_logger(), approved=frozenset({"ip:203.0.113.9"}))
    assert block_ip(ours, params).detail["new"] is True
