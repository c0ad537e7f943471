"""Issue 14's approvals through a real worker, a real `remediation serve` and the CLI: a risky
call waits in pending_approval with its exact plan (two sessions idle in transaction, with
user, application and masked query); one session goes away before approval; approved by the
CLI, the worker ends the remaining one only. Approve by HTTP and by a signed link, deny,
expiry (= denied, audited), two approvers racing (one run), a resolved alert withdrawing
its pending approval, forged approval headers refused."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
import redis
import requests

from remediation.approvals import state as approval_state
from remediation.guards import keys
from remediation.pg_activity import IDLE
from tests.support.alerting import QUEUE_RULE, Process, serve, webhook_payload
from tests.support.base import ROOT, free_port, wait_for
from tests.support.own_stack import OwnStack, own_stack
from tests.support.postgres import session, wait_for_sessions
from tests.support.rabbitmq import Broker
from tests.support.services import as_url, scratch_database, with_password

SLOT = 1404
TOKEN = "approvals-test-token-" + "0123456789abcdef" * 2
APP = "leaky-approvals"


@dataclass
class Stack:
    own: OwnStack
    url: str
    serve: Process
    state: redis.Redis
    app_db: str

    def api(self, method: str, path: str, **kw: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        return requests.request(method, self.url + path, headers=headers, timeout=30, **kw)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        binary = str(Path(ROOT) / ".venv" / "bin" / "remediation")
        return subprocess.run(
            [binary, *args], env=self.own.env, capture_output=True, text=True, timeout=120
        )

    def pending_for(self, action: str, resource: str) -> approval_state.Approval:
        """The pending approval asked for ``action`` on ``resource`` (waits for it)."""

        def found() -> approval_state.Approval | None:
            for a in approval_state.pending(self.state):
                if a.action == action and a.resource == resource:
                    return a
            return None

        return wait_for(found, 60, 0.2, f"a pending approval of {action} on {resource}")

    def runs(self, action: str, resource: str) -> list[dict[str, Any]]:
        return self.own.audit.rows(
            "SELECT * FROM action_runs WHERE action = %s AND resource = %s ORDER BY id",
            action,
            resource,
        )

    def decisions(self, approval_id: str) -> list[dict[str, Any]]:
        return self.own.audit.rows(
            "SELECT * FROM guard_decisions WHERE detail->>'approval' = %s ORDER BY decided_at, id",
            approval_id,
        )

    def verified_dedupe(self, key: str) -> dict[str, Any]:
        """The dedupe run of ``key``'s list once its verification is recorded (waits)."""
        (run,) = self.own.audit.wait_rows(
            "SELECT * FROM action_runs WHERE action = 'dedupe_job_queue' AND resource = %s"
            " AND verification IS NOT NULL",
            f"self/{key}",
            timeout=90,
        )
        return run

    def duplicated_queue(self, name: str) -> str:
        key = f"jobs:{name}"
        self.state.delete(key)
        self.state.rpush(key, "a", "a", "b")
        return key


@pytest.fixture(scope="module")
def stack(
    broker: Broker, pg_admin: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    port = free_port()
    with contextlib.ExitStack() as ex:
        app_db = with_password(
            as_url(ex.enter_context(scratch_database(pg_admin, f"rem_appr_app_{broker.kind}")))
        )
        env = {
            "REMEDIATION_POSTGRES_TARGETS__APP": app_db,
            "REMEDIATION_POSTGRES__IDLE_IN_TRANSACTION_SECONDS": "1",
            "REMEDIATION_POSTGRES__SESSION_ALLOW_APPLICATIONS": json.dumps([APP]),
            "REMEDIATION_JOB_QUEUE__KEYS": json.dumps(["jobs:*"]),
            "REMEDIATION_APPROVALS__REQUIRE": json.dumps(
                ["terminate_idle_transactions", "dedupe_job_queue"]
            ),
            "REMEDIATION_APPROVALS__LINK_BASE_URL": f"http://127.0.0.1:{port}",
            "REMEDIATION_SERVE__TOKENS": json.dumps([TOKEN]),
            "REMEDIATION_ALERTS__RULES": json.dumps([QUEUE_RULE]),
        }
        own = ex.enter_context(own_stack(broker, pg_admin, "approvals", SLOT, **env))
        process, url = serve(own.env, tmp_path_factory.mktemp("serve"), port)
        process.start()
        ex.callback(process.stop)
        state = redis.Redis.from_url(own.env["REMEDIATION_STATE_REDIS_URL"])
        ex.callback(state.close)
        yield Stack(own, url, process, state, app_db)


def answers(conn: psycopg.Connection[Any]) -> bool:
    try:
        return conn.execute("SELECT 1").fetchone() == (1,)
    except psycopg.OperationalError:
        return False


def test_plan_changed_before_approval_acts_on_the_remaining_session_only(stack: Stack) -> None:
    """Two leaked sessions wait for approval with their exact plan; one goes away; approved
    by the CLI, the worker ends only the one still there and audits who approved what."""
    with session(stack.app_db, app=APP) as first, session(stack.app_db, app=APP) as second:
        pids = {first.pgconn.backend_pid, second.pgconn.backend_pid}
        wait_for_sessions(stack.app_db, IDLE, pids)
        out = stack.own.run_check("postgres_sessions", target="app")
        assert out["dispatched"] >= 1  # type: ignore[index]
        pending = stack.pending_for("terminate_idle_transactions", "app")
        plan = pending.plan
        assert {i["detail"]["pid"] for i in plan["items"]} == pids
        assert all(i["detail"]["application"] == APP for i in plan["items"])
        assert all(i["detail"]["query"] == "SELECT 1" for i in plan["items"])
        assert "terminate 2 session(s)" in plan["summary"]
        (asked,) = stack.own.audit.wait_rows(
            "SELECT * FROM guard_decisions WHERE decision = 'pending_approval'"
            " AND detail->>'approval' = %s",
            pending.id,
        )
        assert asked["detail"]["plan"] == plan
        # nothing ended while it waits: both still idle in transaction, read from outside
        # (a query on them would restart their idle time, and the approved run would then
        # find the second one under the bound, not yet a leak, and leave it alone)
        wait_for_sessions(stack.app_db, IDLE, pids)
        assert stack.runs("terminate_idle_transactions", "app") == []

        gone = first.pgconn.backend_pid
        first.close()  # one of the two went away before anyone approved
        done = stack.cli("approve", pending.id, "--reason", "leak confirmed")
        assert done.returncode == 0, done.stderr
        assert "approved" in done.stdout
        (run,) = stack.own.audit.wait_rows(
            "SELECT * FROM action_runs WHERE action = 'terminate_idle_transactions'"
            " AND outcome = 'succeeded'",
            timeout=90,
        )
        detail = run["result"]["detail"]
        assert [s["pid"] for s in detail["terminated"]] == [second.pgconn.backend_pid]
        assert len(detail["approval"]["gone"]) == 1 and f":{gone}:" in detail["approval"]["gone"][0]
        assert detail["approval"]["approved_by"].startswith("cli:")
        assert not answers(second)
    approved = [d for d in stack.decisions(pending.id) if d["decision"] == "approved"]
    assert len(approved) == 1 and approved[0]["detail"]["by"].startswith("cli:")
    assert approved[0]["detail"]["reason"] == "leak confirmed"
    assert approved[0]["detail"]["plan"] == plan
    wait_for(
        lambda: (approval_state.get(stack.state, pending.id) or pending).state == "done",
        30,
        0.2,
        "the approval marked done",
    )


def _pending_dedupe(stack: Stack, name: str) -> tuple[str, approval_state.Approval]:
    key = stack.duplicated_queue(name)
    stack.own.run_check("redis_job_queue", target="self", key=key)
    return key, stack.pending_for("dedupe_job_queue", f"self/{key}")


def test_deny_by_http_runs_nothing_and_is_not_asked_again(stack: Stack) -> None:
    """Denied over HTTP with a reason: audited, nothing runs, the next sweep does not ask
    again for the same incident; a second decision is a 409."""
    key, pending = _pending_dedupe(stack, "deny")
    assert stack.api("POST", f"/approvals/{pending.id}/deny", json={}).status_code == 422
    reply = stack.api("POST", f"/approvals/{pending.id}/deny", json={"reason": "not now"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["approval"]["state"] == "denied"
    again = stack.api("POST", f"/approvals/{pending.id}/approve", json={})
    assert again.status_code == 409
    stack.own.run_check("redis_job_queue", target="self", key=key)
    (refusal,) = stack.own.audit.wait_rows(
        "SELECT * FROM guard_decisions WHERE decision = 'denied' AND guard = 'approval'"
        " AND reason LIKE %s",
        f"%{pending.id} was denied%",
    )
    assert refusal["resource"] == f"self/{key}"
    assert stack.runs("dedupe_job_queue", f"self/{key}") == []
    assert stack.state.llen(key) == 3
    assert [a.id for a in approval_state.pending(stack.state) if a.id == pending.id] == []


def test_approve_by_signed_link_runs_and_verifies(stack: Stack) -> None:
    """The notification carries signed links; GET shows the plan and decides nothing, a
    forged link is a 403, the POST approves: the worker dedupes and verifies the fix."""
    key, pending = _pending_dedupe(stack, "link")
    body = wait_for(
        lambda: next(
            (b for b in stack.own.webhook.bodies if b.get("approval") == pending.id), None
        ),
        30,
        0.2,
        "the approval's notification",
    )
    assert pending.id in body["text"] and body["approve_url"] in body["text"]
    url = urlsplit(body["approve_url"])
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    page = requests.get(body["approve_url"], timeout=30)
    assert page.status_code == 200 and pending.plan["items"][0]["what"] in page.text
    assert "remove duplicates: 1 job(s)" in page.text  # the plan: one duplicate to go
    forged = {**query, "sig": "0" * 64}
    assert requests.post(stack.url + url.path, data=forged, timeout=30).status_code == 403
    deny_as_approve = {**query, "d": "deny"}  # the approve link's signature does not deny
    assert requests.post(stack.url + url.path, data=deny_as_approve, timeout=30).status_code == 403
    assert approval_state.get(stack.state, pending.id).state == "pending"  # type: ignore[union-attr]
    done = requests.post(stack.url + url.path, data=query, timeout=30)
    assert done.status_code == 200 and "approved" in done.text
    run = stack.verified_dedupe(key)
    assert run["outcome"] == "succeeded" and run["verification"] == "recovered"
    assert stack.state.llen(key) == 2
    (approved,) = [d for d in stack.decisions(pending.id) if d["decision"] == "approved"]
    assert approved["detail"]["by"] == "link"


def test_expiry_denies_and_is_audited(stack: Stack) -> None:
    """An approval not decided in time expires on the worker's expiry task (= denied,
    audited); approving it afterwards is a 409 and runs nothing."""
    key, pending = _pending_dedupe(stack, "expire")
    past = time.time() - 1  # its time has come: as if the TTL had passed
    stack.state.hset(keys.approval(pending.id), "expires_at", repr(past))
    stack.state.zadd(keys.APPROVALS_PENDING, {pending.id: past})
    expired = stack.own.client.send_task("remediation.approvals.expire").get(timeout=60)
    assert expired >= 1
    assert approval_state.get(stack.state, pending.id).state == "expired"  # type: ignore[union-attr]
    (row,) = [d for d in stack.decisions(pending.id) if d["decision"] == "expired"]
    assert row["detail"]["by"] == "expiry"
    assert stack.api("POST", f"/approvals/{pending.id}/approve", json={}).status_code == 409
    assert stack.runs("dedupe_job_queue", f"self/{key}") == []


def test_two_concurrent_approvals_give_one_run(stack: Stack) -> None:
    """Eight approvers at once (HTTP and CLI): one decision, one run; a copy of the approved
    message is refused as already run."""
    key, pending = _pending_dedupe(stack, "race")

    def approve(n: int) -> int:
        if n % 4 == 3:
            return 200 if stack.cli("approve", pending.id).returncode == 0 else 409
        body = {"reason": f"approver {n}", "by": f"op{n}"}
        return stack.api("POST", f"/approvals/{pending.id}/approve", json=body).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = sorted(pool.map(approve, range(8)))
    assert codes == [200] + [409] * 7
    stack.verified_dedupe(key)
    approved = [d for d in stack.decisions(pending.id) if d["decision"] == "approved"]
    assert len(approved) == 1
    assert len(stack.runs("dedupe_job_queue", f"self/{key}")) == 1


def test_resolved_alert_withdraws_its_pending_approval(stack: Stack) -> None:
    """A firing alert asks for approval; the alert resolving withdraws it (audited) and
    nothing runs."""
    queue = stack.duplicated_queue("withdraw")
    headers = {"Authorization": f"Bearer {TOKEN}"}
    firing = webhook_payload("a9900e0000000001", queue)
    assert requests.post(stack.url + "/alerts", json=firing, headers=headers, timeout=30).ok
    pending = stack.pending_for("dedupe_job_queue", f"self/{queue}")
    resolved = webhook_payload("a9900e0000000001", queue, status="resolved")
    assert requests.post(stack.url + "/alerts", json=resolved, headers=headers, timeout=30).ok
    assert approval_state.get(stack.state, pending.id).state == "withdrawn"  # type: ignore[union-attr]
    (row,) = [d for d in stack.decisions(pending.id) if d["decision"] == "withdrawn"]
    assert "resolved" in row["reason"]
    assert stack.runs("dedupe_job_queue", f"self/{queue}") == []


def test_forged_or_replayed_approval_headers_run_nothing(stack: Stack) -> None:
    """A message claiming an approval it does not have (unsigned, or signed for another
    task) is refused before any guard."""
    key, pending = _pending_dedupe(stack, "forged")
    kwargs = {"target": "self", "key": key}
    forged = {"remediation_approval": {"id": pending.id, "sig": "f" * 64}}
    result = stack.own.client.send_task(
        "remediation.act.dedupe_job_queue", kwargs=kwargs, headers=forged
    ).get(timeout=60)
    assert result["outcome"] == "refused" and "signature" in result["reason"]
    assert approval_state.get(stack.state, pending.id).state == "pending"  # type: ignore[union-attr]
    assert stack.state.llen(key) == 3


def test_approve_by_http_runs_and_the_metrics_count_it(stack: Stack) -> None:
    """Approved over HTTP (audited as the token's id and the name given): the worker runs
    and verifies the fix; the approval metrics every process counts show it."""
    key, pending = _pending_dedupe(stack, "http")
    listed = stack.api("GET", "/approvals").json()["approvals"]
    assert pending.id in [a["id"] for a in listed]
    shown = stack.api("GET", f"/approvals/{pending.id}").json()
    assert shown["plan"] == pending.plan and shown["state"] == "pending"
    reply = stack.api(
        "POST", f"/approvals/{pending.id}/approve", json={"reason": "ok", "by": "alice"}
    )
    assert reply.status_code == 200, reply.text
    run = stack.verified_dedupe(key)
    assert run["outcome"] == "succeeded" and run["verification"] == "recovered"
    (approved,) = [d for d in stack.decisions(pending.id) if d["decision"] == "approved"]
    assert (
        approved["detail"]["by"].startswith("api:token-") and "(alice)" in approved["detail"]["by"]
    )
    assert TOKEN not in json.dumps(approved, default=str)
    text = stack.api("GET", "/metrics").text
    approved_total = [
        line
        for line in text.splitlines()
        if line.startswith('remediation_approvals_total{event="approved"}')
    ]
    assert approved_total and float(approved_total[0].split()[-1]) >= 1
    assert "remediation_approvals_pending " in text
    assert "remediation_approval_decision_seconds_count" in text
