"""The log tail against fail2ban: from an offending line written to the ban in force.

Two network namespaces (tests/support/netns.py two_hosts). In the server's, a web server
(tests/support/access_server.py) that refuses POST /login with 401 and appends one
combined-format line per request to a real access log, noting when it wrote each line.
In the client's, OFFENDERS extra source addresses, each a fresh offender: it sends MAXRETRY
refused logins, one after the other, then the next one waits until both bans are seen.

Both sides run at once, on the same log, with the same rule (a 401/403/429 line counts
for its client; MAXRETRY within FINDTIME bans):

* ours: a real worker and `remediation watch --source logs` (the log source: inotify on
  the log's folder), the worker's access_log_clients check for the event, block_ip with
  REMEDIATION_ACCESS__NFT on and nft run inside the server's namespace: the address goes
  into ``inet remediation banned_v4``;
* fail2ban: Debian's fail2ban-server, private (configuration folder, socket, pidfile, log,
  database in memory), one jail on the log with bench/access_log.py's FAILREGEX, backend
  pyinotify when Debian's python3 has it (else polling), and an action that adds the address
  to ``inet f2b banned`` in the server's namespace.

Per offender: t0 = when the server wrote its MAXRETRY-th refused line (its own clock),
t1 = when the address first shows in each set: one thread lists the ruleset in the server's
namespace (``nft -j list ruleset``) again and again, both sets in one listing, and takes the
time the listing returned (an upper bound, at most one listing late; its median duration is
reported). The first offender warms both up (our nftables table is made at the first ban)
and is reported apart. Reported: p50/p95/max of t1 - t0 for both, and fail2ban's over ours.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import stats
from bench.access_log import FAILREGEX
from bench.pipeline import admin_dsn, worker_env
from tests.support.access_server import BanWatch, access_server, add_clients, offend
from tests.support.audit import Audit
from tests.support.base import wait_for
from tests.support.fail2ban import SET, TABLE, Fail2ban
from tests.support.netns import two_hosts
from tests.support.processes import WatchProcess, WorkerProcess
from tests.support.services import RedisServer, as_url, scratch_database

OFFENDERS = int(os.environ.get("REMEDIATION_BENCH_WATCH_LOGS_OFFENDERS", "30"))
MAXRETRY, FINDTIME, BANTIME = 5, 600, 600
OURS, THEIRS = "remediation/banned_v4", f"{TABLE}/{SET}"
F2B_BACKEND = os.environ.get("REMEDIATION_BENCH_WATCH_LOGS_F2B_BACKEND", "")
"""fail2ban's backend; empty: pyinotify when Debian's python3 has it, else polling."""
OUR_INOTIFY = os.environ.get("REMEDIATION_BENCH_WATCH_LOGS_INOTIFY", "true")
"""REMEDIATION_WATCH__LOG_INOTIFY of our watcher (false: stat polling every 0.25 s)."""
MIN_INTERVAL = os.environ.get("REMEDIATION_BENCH_WATCH_LOGS_MIN_INTERVAL", "0.1")
"""REMEDIATION_WATCH__LOG_MIN_INTERVAL_SECONDS of our watcher (its default: 0.1)."""
GAP = 0.3
"""Seconds between one offender's bans and the next offender's first request."""


summary = stats.summary


def race(offenders: int) -> dict[str, Any]:
    """Everything up, then the offenders one by one; the delays per side."""
    with contextlib.ExitStack() as ex:
        tmp = Path(ex.enter_context(tempfile.TemporaryDirectory(prefix="bench-watch-logs-")))
        hosts = ex.enter_context(two_hosts(str(tmp)))
        (tmp / "www").mkdir()
        server = ex.enter_context(access_server(hosts, tmp / "www"))
        redis_server = RedisServer().start()
        ex.callback(redis_server.stop)
        audit = as_url(ex.enter_context(scratch_database(admin_dsn(), "rem_bench_watch_logs")))
        from remediation.audit.store import AuditStore

        AuditStore(audit).upgrade()
        env = worker_env(
            redis_server,
            audit,
            [],
            REMEDIATION_ACCESS__LOGS=json.dumps([{"name": "www", "path": str(server.log)}]),
            REMEDIATION_ACCESS__MAXRETRY=str(MAXRETRY),
            REMEDIATION_ACCESS__FINDTIME_SECONDS=str(FINDTIME),
            REMEDIATION_ACCESS__BANTIME_SECONDS=str(BANTIME),
            REMEDIATION_ACCESS__NFT="true",
            REMEDIATION_ACCESS__NFT_COMMAND=json.dumps(hosts.in_server("nft")),
            REMEDIATION_WATCH__SOURCES='["logs"]',
            REMEDIATION_APPROVALS__REQUIRE="[]",  # a ban is made at once, as fail2ban's
            REMEDIATION_WATCH__LOG_INOTIFY=OUR_INOTIFY,
            REMEDIATION_WATCH__LOG_MIN_INTERVAL_SECONDS=MIN_INTERVAL,
        )
        worker = WorkerProcess(env, "bench-watch-logs").start()
        ex.callback(worker.stop)
        watcher = WatchProcess(env, "bench-watch-logs", sources=["logs"]).start()
        ex.callback(watcher.stop)
        wait_for(lambda: watcher.active("logs"), 60, 0.2, "the watcher listening")
        f2b = Fail2ban(
            tmp / "f2b",
            server.log,
            FAILREGEX,
            MAXRETRY,
            FINDTIME,
            BANTIME,
            ["ip", "netns", "exec", hosts.server],
            F2B_BACKEND,
        )
        (tmp / "f2b").mkdir()
        f2b.start()
        ex.callback(f2b.stop)
        bans = BanWatch(hosts).start()
        ex.callback(bans.stop)
        ips = add_clients(hosts, offenders + 1)
        rounds = [one(hosts, server, bans, ip) for ip in ips]
        stages = breakdown(Audit(audit), rounds, server)
        return {
            "our_stages_p50": stages,
            "fail2ban_backend": f2b.backend,
            "our_inotify": OUR_INOTIFY,
            "our_min_interval": MIN_INTERVAL,
            "warm_up": rounds[0],
            "rounds": rounds[1:],
            "listing_seconds_p50": round(statistics.median(bans.poll_seconds), 4),
            "listings": bans.polls,
        }


def one(hosts: Any, server: Any, bans: BanWatch, ip: str) -> dict[str, Any]:
    """One offender: its MAXRETRY refusals, then both bans (or 60 s without one)."""
    statuses = offend(hosts, ip, MAXRETRY)
    assert statuses == ["401"] * MAXRETRY, statuses
    t0 = server.written(ip)[MAXRETRY - 1]
    try:
        wait_for(lambda: bans.seen(OURS, ip) and bans.seen(THEIRS, ip), 60, 0.01, "both bans")
    except TimeoutError:
        pass
    ours, theirs = bans.seen(OURS, ip), bans.seen(THEIRS, ip)
    time.sleep(GAP)
    return {
        "ip": ip,
        "ours": round(ours - t0, 4) if ours else None,
        "fail2ban": round(theirs - t0, 4) if theirs else None,
    }


STAGES = """
SELECT (c.cause->>'sent')::float8 AS sent,
       extract(epoch FROM c.started_at) AS check_started,
       extract(epoch FROM a.started_at) AS ban_started,
       extract(epoch FROM a.started_at) + a.duration_ms / 1000 AS ban_done
FROM findings f JOIN check_runs c ON c.id = f.check_run_id
JOIN action_runs a ON a.finding_id = f.id
WHERE f.kind = 'access_client_hostile' AND f.subject = %s AND c.purpose = 'detect'
  AND a.action = 'block_ip' AND a.outcome = 'succeeded'
ORDER BY c.started_at LIMIT 1
"""


def breakdown(audit: Audit, rounds: list[dict[str, Any]], server: Any) -> dict[str, Any]:
    """Where our time goes (median seconds after t0, warm-up left out): the watcher sent
    the check, the worker started it, block_ip started, block_ip done (nft returned)."""
    got: dict[str, list[float]] = {}
    for r in rounds[1:]:
        rows = audit.rows(STAGES, r["ip"])
        if not rows:
            continue
        t0 = server.written(r["ip"])[MAXRETRY - 1]
        for stage, at in rows[0].items():
            if at is not None:
                got.setdefault(stage, []).append(float(at) - t0)
    return {stage: round(statistics.median(v), 4) for stage, v in got.items()}


def run() -> dict[str, Any]:
    if os.geteuid() != 0:
        return {"skipped": "needs root (network namespaces, nftables)"}
    got = race(OFFENDERS)
    rounds = got.pop("rounds")
    ours = [r["ours"] for r in rounds if r["ours"] is not None]
    theirs = [r["fail2ban"] for r in rounds if r["fail2ban"] is not None]
    out = {
        "offenders": len(rounds),
        "maxretry": MAXRETRY,
        **got,
        "ours": summary(ours) if ours else None,
        "fail2ban": summary(theirs) if theirs else None,
        "not_banned": {
            "ours": len(rounds) - len(ours),
            "fail2ban": len(rounds) - len(theirs),
        },
    }
    if ours and theirs:
        out["ratio_p50"] = round(statistics.median(theirs) / statistics.median(ours), 2)
        out["ratio_p95"] = round(out["fail2ban"]["p95"] / out["ours"]["p95"], 2)
    out["per_offender"] = [[r["ours"], r["fail2ban"]] for r in rounds]
    return out


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
