"""The five faults the demo injects into the miniature, one at a time: dead tuples in
price_history, duplicate jobs in the job list, a banned proxy, a full page cache (fixed by hand
with an approved flush_cache) and a killed container. For each it prints BREAK, then follows the
remediator's audit (FOUND, DECIDED, DID, VERIFIED) until the fix is verified or FAULT_TIMEOUT
passes (FAILED), and records the verdict in `results`."""

from __future__ import annotations

import json
import re
import secrets
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from demo.common import CACHE_PATTERN, IO_TIMEOUT, JOBS_KEY, connect, elapsed, say
from demo.remediator import Remediator

FAULT_TIMEOUT = 90.0
"""Seconds the remediator has to fix and verify one fault."""
SETTLE_SECONDS = 5.0
"""After the fix, how long the other actions the finding sent get to show up."""
DEMO_KWARGS = json.dumps({"target": "demo"})
"""The kwargs of the by-hand flush_cache and redis_cache calls."""


class Faults(Remediator):
    """The miniature and its remediator, and the faults injected into them."""

    def break_things(self, no_cache: str, no_docker: str) -> bool:
        """Every fault in turn (a SKIP line for one that cannot be injected here); all fixed?"""
        ok = self.fault(
            "bloat price_history: every row updated, autovacuum off (postgres_dead_tuples)",
            "vacuum_analyze",
            self.bloat,
        )
        ok &= self.fault(
            f"stall the job list {JOBS_KEY} with 30 duplicate jobs (redis_job_queue)",
            "dedupe_job_queue",
            self.duplicate_jobs,
        )
        ok &= self.fault(
            f"ban proxy {self.proxies[1].url}: it answers 403 (proxy_pool_health)",
            "rotate_proxies",
            self.ban_proxy,
        )
        say(f"scraper: {self.scraper_view()}")
        if self.private_redis:
            ok &= self.cache_fault()
        else:
            say(f"\nSKIP: fill the cache: {no_cache} (the shared Redis's maxmemory is not changed)")
        if self.box is not None:
            ok &= self.fault(
                f"kill container {self.box.container.name} (docker_containers; watch's Docker events)",
                "restart_container",
                self.box.kill,
            )
        else:
            say(f"\nSKIP: kill a container: {no_docker}")
        return ok

    def fault(self, what: str, action: str, inject: Callable[[], None]) -> bool:
        """Break, then follow the audit: finding, guard decision, action run, verification."""
        started = time.monotonic()
        since = self.audit_rows("SELECT now() AS t")[0]["t"]
        say(f"\nBREAK: {what}")
        inject()
        verdict = self.follow(since, started, action, set(), verified=True)
        if verdict is None:
            say(f"FAILED: {what}: no verified {action} within {FAULT_TIMEOUT:.0f} s")
        self.results.append((what, verdict or "FAILED", elapsed(started)))
        return verdict == "recovered"

    def follow(
        self, since: Any, started: float, action: str, shown: set[tuple[str, int]], verified: bool
    ) -> str | None:
        """Print what the audit records from since on, until action ran (verified: until its
        verification is recorded); its outcome or verification, None on timeout. Then, for
        a few seconds, the other actions the same findings sent."""
        verdict = None
        while verdict is None and time.monotonic() - started < FAULT_TIMEOUT:
            verdict = self.show_new(since, started, action, shown, verified)
            if verdict is None:
                time.sleep(0.5)
        settle = time.monotonic() + SETTLE_SECONDS
        while verdict is not None and time.monotonic() < settle and self.unfinished(since):
            time.sleep(0.5)
            self.show_new(since, started, "", shown, verified)
        return verdict

    def unfinished(self, since: Any) -> bool:
        """An admitted decision since then whose action run is not recorded yet."""
        return bool(
            self.audit_rows(
                "SELECT 1 FROM guard_decisions d WHERE d.decided_at >= %s"
                " AND d.decision = 'admitted' AND d.action <> 'notify'"
                " AND NOT EXISTS (SELECT 1 FROM action_runs r WHERE r.decision_id = d.id)",
                since,
            )
        )

    def show_new(
        self, since: Any, started: float, action: str, shown: set[tuple[str, int]], verified: bool
    ) -> str | None:
        """Print the audit rows since then not shown yet; action's outcome or verification
        (verified) once recorded, else None."""
        verdict = None
        for row in self.audit_rows(
            "SELECT d.id, d.action, d.decision, d.guard, d.reason, f.id AS finding,"
            " f.kind, f.summary, c.cause->>'by' AS by,"
            " coalesce(c.cause->>'entry', (c.cause->>'source') || ' ' || (c.cause->>'kind'))"
            " AS via FROM guard_decisions d LEFT JOIN findings f ON f.id = d.finding_id"
            " LEFT JOIN check_runs c ON c.id = f.check_run_id"
            " WHERE d.decided_at >= %s ORDER BY d.id",
            since,
        ):
            if row["finding"] is not None and ("f", row["finding"]) not in shown:
                shown.add(("f", row["finding"]))
                say(f"FOUND: {row['kind']}: {row['summary']} (by {row['by']}: {row['via']})")
            if ("d", row["id"]) not in shown:
                shown.add(("d", row["id"]))
                why = f" ({row['guard']}: {row['reason']})" if row["guard"] else ""
                say(f"DECIDED: {row['action']} {row['decision']}{why}")
        for row in self.audit_rows(
            "SELECT id, action, outcome, error, result, verification FROM action_runs"
            " WHERE started_at >= %s ORDER BY id",
            since,
        ):
            if ("r", row["id"]) not in shown:
                shown.add(("r", row["id"]))
                summary = (row["result"] or {}).get("summary") or row["error"] or ""
                say(f"DID: {row['action']} {row['outcome']}: {summary}")
                if row["action"] == action and not verified and verdict is None:
                    verdict = str(row["outcome"])
            if row["verification"] and ("v", row["id"]) not in shown:
                shown.add(("v", row["id"]))
                if row["action"] == action and verified and verdict is None:
                    say(
                        f"VERIFIED: {row['action']} {row['verification']}"
                        f" ({time.monotonic() - started:.1f} s)"
                    )
                    verdict = str(row["verification"])
                else:
                    say(f"  (also verified: {row['action']} {row['verification']})")
        return verdict

    def cache_fault(self) -> bool:
        """Fill the scraper's page cache: the remediator finds it and notifies; flush_cache is
        by hand only (README), so the operator sends it, approves it, and checks again."""
        what = f"fill the scraper's page cache {CACHE_PATTERN} to 93 % of maxmemory (redis_cache)"
        started = time.monotonic()
        since = self.audit_rows("SELECT now() AS t")[0]["t"]
        say(f"\nBREAK: {what}")
        self.fill_cache()
        shown: set[tuple[str, int]] = set()
        if self.follow(since, started, "notify", shown, verified=False) is None:
            say(f"FAILED: {what}: no finding notified within {FAULT_TIMEOUT:.0f} s")
            verdict = "FAILED"
        elif not self.flush_by_hand(since, started, shown):
            verdict = "FAILED"
        else:
            verdict = self.check_cache(started)
        self.results.append((what, verdict, elapsed(started)))
        return verdict == "recovered"

    def flush_by_hand(self, since: Any, started: float, shown: set[tuple[str, int]]) -> bool:
        """Send flush_cache as the operator would, approve it; did it succeed?"""
        say(
            "BY HAND: flush_cache runs by hand only (a full LRU cache is normal); the demo"
            " requires approval for it (REMEDIATION_APPROVALS__REQUIRE=...flush_cache@demo):\n"
            f"  celery -A remediation call remediation.act.flush_cache --kwargs '{DEMO_KWARGS}'"
        )
        self.cli(
            [
                "celery",
                "-A",
                "remediation",
                "call",
                "remediation.act.flush_cache",
                "--kwargs",
                DEMO_KWARGS,
            ]
        )
        approval = self.pending_approval("flush_cache", started)
        if approval is None:
            say("FAILED: no pending approval for flush_cache")
            return False
        say(f"PENDING: approval {approval['id']}: {approval['plan'].get('summary', '')}")
        say(f"  remediation approve {approval['id']}")
        approved = self.cli(["remediation", "approve", approval["id"], "--reason", "make demo"])
        say(f"APPROVED: {approved.strip()}")
        if self.follow(since, started, "flush_cache", shown, verified=False) != "succeeded":
            say("FAILED: flush_cache did not succeed")
            return False
        return True

    def check_cache(self, started: float) -> str:
        """Run redis_cache by hand (audited): recovered when it finds no high memory."""
        say(f"  remediation run redis_cache --kwargs '{DEMO_KWARGS}'")
        found = json.loads(
            self.cli(
                ["remediation", "--json", "run", "redis_cache", "--kwargs", DEMO_KWARGS],
                check=False,
            )
        ).get("findings", [])
        high = [f for f in found if f.get("kind") == "redis_memory_high"]
        verdict = "not_recovered" if high else "recovered"
        say(
            f"VERIFIED: redis_cache (manual check run, audited) {verdict}:"
            f" {len(found)} finding(s) ({time.monotonic() - started:.1f} s)"
        )
        return verdict

    def pending_approval(self, action: str, started: float) -> dict[str, Any] | None:
        while time.monotonic() - started < FAULT_TIMEOUT:
            for a in json.loads(self.cli(["remediation", "--json", "approvals"])):
                if a.get("action") == action and a.get("state") == "pending":
                    return dict(a)
            time.sleep(0.5)
        return None

    def fill_cache(self) -> None:
        limit = int(str(self.app.config_get("maxmemory")["maxmemory"]))
        pipe, n = self.app.pipeline(transaction=False), 0
        while int(self.app.info("memory")["used_memory"]) < limit * 0.93:
            for _ in range(100):
                pipe.set(f"demo:cache:page:{n}", secrets.token_hex(4096))
                n += 1
            pipe.execute()

    def scraper_view(self) -> str:
        """What the scraper went through, from its /metrics: 403s seen, its pacing."""
        time.sleep(2)  # a round or two at the new pace
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(self.metrics_url, timeout=IO_TIMEOUT) as resp:
                text = resp.read(1 << 20).decode()
        except OSError as exc:
            return f"its metrics did not answer ({type(exc).__name__})"
        by_status = {
            m.group(1): float(m.group(2))
            for m in re.finditer(r'^scraper_requests_total\{status="(\d+)"\} (\S+)$', text, re.M)
        }
        delay = re.search(r"^scraper_min_delay_seconds (\S+)$", text, re.M)
        return (
            f"{by_status.get('403', 0):.0f} of {sum(by_status.values()):.0f} requests so far"
            f" answered 403; min_delay {float(delay.group(1)) if delay else '?'} s, read from"
            f" {self.config.name} (tune_backoff doubled it) ({self.metrics_url})"
        )

    def bloat(self) -> None:
        with connect(self.app_dsn) as conn:
            conn.execute("UPDATE price_history SET price = price + 0.01")

    def duplicate_jobs(self) -> None:
        job = json.dumps(
            {"url_id": 1, "url": self.servers[0].url + "product/1", "enqueued_at": time.time()},
            sort_keys=True,
        )
        self.app.rpush(JOBS_KEY, *[job] * 30)

    def ban_proxy(self) -> None:
        self.proxies[1].banned = True
