"""Issue 14's approvals in the web console, in a real headless browser (Debian's chromium
driven by Playwright) against a real `remediation serve` and worker whose dedupe_job_queue
waits for approval (REMEDIATION_APPROVALS__REQUIRE). Two alerts make two pending approvals;
the console shows each with its plan, one is approved (the worker then dedupes the queue and
verifies it) and one denied with a reason (nothing runs); a POST without the CSRF token is a
403 that decides nothing; bad ids, a deny without a reason and a second decision are 4xx
pages. The screenshot docs/console/approvals.png is refreshed with
REMEDIATION_TEST_SCREENSHOTS=1."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from remediation.approvals import state as approval_state
from tests.support.alerting import Served, webhook_payload
from tests.support.console import chromium_page, console_stack, shots_folder
from tests.support.rabbitmq import Broker

SLOT = 1403
TOKEN = "approvals-test-token-" + "0123456789abcdef" * 2
APPROVE_QUEUE = "jobs:approve-me"
DENY_QUEUE = "jobs:deny-me"


@pytest.fixture(scope="module")
def served(
    broker: Broker, pg_admin: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("serve")
    with console_stack(
        broker,
        pg_admin,
        "console_approvals",
        SLOT,
        folder,
        TOKEN,
        REMEDIATION_APPROVALS__REQUIRE=json.dumps(["dedupe_job_queue"]),
    ) as served:
        yield served


def _asked(s: Served, queue: str, fingerprint: str) -> dict[str, Any]:
    """Post the alert for ``queue`` (with duplicates in it) and wait until the worker asked
    for approval of its dedupe: the audited pending_approval decision."""
    s.state.delete(queue)
    s.state.rpush(queue, "a", "a", "b")
    reply = requests.post(
        s.url + "/alerts",
        json=webhook_payload(fingerprint, queue),
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    assert reply.status_code == 200 and reply.json()["mapped"] == 1, reply.text
    return s.stack.audit.wait_rows(
        "SELECT * FROM guard_decisions WHERE action = 'dedupe_job_queue' AND resource = %s"
        " AND decision = 'pending_approval' AND guard = 'approval'",
        f"self/{queue}",
        timeout=90,
    )[0]


def _decisions(s: Served, approval_id: str) -> list[str]:
    rows = s.stack.audit.rows(
        "SELECT decision FROM guard_decisions WHERE guard = 'approval'"
        " AND detail->>'approval' = %s ORDER BY id",
        approval_id,
    )
    return [r["decision"] for r in rows]


def test_console_approvals_in_chromium(served: Served, tmp_path: Path) -> None:
    """Two pending approvals seen with their plan in the console: one approved (the worker
    dedupes and verifies), one denied with a reason (nothing runs), forged posts refused."""
    shots = shots_folder(tmp_path)
    s, audit = served, served.stack.audit

    asked = _asked(s, APPROVE_QUEUE, "a9900e0000000001")
    approve_id = asked["detail"]["approval"]
    incident_id = audit.rows("SELECT incident_id FROM findings WHERE id = %s", asked["finding_id"])[
        0
    ]["incident_id"]
    deny_id = _asked(s, DENY_QUEUE, "a9900e0000000002")["detail"]["approval"]
    assert approve_id != deny_id
    # nothing ran yet: both queues still have their duplicate
    assert s.state.lrange(APPROVE_QUEUE, 0, -1) == [b"a", b"a", b"b"]
    assert not audit.rows("SELECT id FROM action_runs WHERE action = 'dedupe_job_queue'")

    with chromium_page(900) as page:
        base = s.url + "/console"
        page.goto(base + "/login")
        page.fill("input[name=token]", TOKEN)
        page.click("button[type=submit]")
        page.wait_for_url(base + "/")

        page.click("header a:text-is('Approvals')")
        page.wait_for_url(base + "/approvals")
        pending = page.locator(f"#approval-{approve_id}")
        text = pending.inner_text()
        assert "dedupe_job_queue" in text and f"self/{APPROVE_QUEUE}" in text
        approval = approval_state.get(s.state, approve_id)
        assert approval is not None and approval.plan["items"]
        assert approval.plan["summary"] in pending.locator(".summary").inner_text()
        shown = pending.locator(".plan li").all_inner_texts()
        for item in approval.plan["items"]:
            assert item["what"] in shown
        assert pending.locator(f"a[href='/console/incidents/{incident_id}']").count() == 1
        assert re.match(r"^\d+m \d+s", pending.locator(".expires-in").inner_text())
        assert page.locator(f"#approval-{deny_id}").count() == 1
        page.screenshot(path=str(shots / "approvals.png"), full_page=True)
        csrf = page.locator("input[name=csrf]").first.get_attribute("value")
        assert csrf

        # a POST without (or with a wrong) CSRF token is refused and decides nothing
        forged: list[dict[str, str | float | bool]] = [{}, {"csrf": "x" * 43}]
        for form in forged:
            answer = page.request.post(
                f"{base}/approvals/{deny_id}/approve", form=form, max_redirects=0
            )
            assert answer.status == 403, answer.status
        # bad ids are 404 before anything; a deny needs a reason
        for bad, status in [
            ("nothex0000000000", 404),
            ("0123", 404),
            ("0123456789abcdef", 404),
        ]:
            answer = page.request.post(
                f"{base}/approvals/{bad}/approve", form={"csrf": csrf}, max_redirects=0
            )
            assert answer.status == status, (bad, answer.status)
        answer = page.request.post(
            f"{base}/approvals/{deny_id}/deny", form={"csrf": csrf, "reason": " "}
        )
        assert answer.status == 400, answer.status
        assert approval_state.get(s.state, deny_id).state == "pending"  # type: ignore[union-attr]
        assert _decisions(s, deny_id) == ["pending_approval"]

        # approve: the worker runs the dedupe and verifies it
        pending.locator("form.approve input[name=reason]").fill("looks right")
        pending.locator("form.approve button").click()
        page.wait_for_url(re.compile(r".*/console/approvals\?done=approved"))
        assert "approved" in page.locator("#done").inner_text()
        run = audit.wait_rows(
            "SELECT * FROM action_runs WHERE action = 'dedupe_job_queue' AND resource = %s"
            " AND verification IS NOT NULL",
            f"self/{APPROVE_QUEUE}",
            timeout=90,
        )[0]
        assert run["outcome"] == "succeeded" and run["verification"] == "recovered", run
        assert s.state.lrange(APPROVE_QUEUE, 0, -1) == [b"a", b"b"]
        assert _decisions(s, approve_id)[:2] == ["pending_approval", "approved"]
        by = audit.rows(
            "SELECT detail FROM guard_decisions WHERE decision = 'approved'"
            " AND detail->>'approval' = %s",
            approve_id,
        )[0]["detail"]
        assert by["by"].startswith("console:") and by["reason"] == "looks right"

        # deciding it again is refused (409) and changes nothing
        answer = page.request.post(
            f"{base}/approvals/{approve_id}/deny", form={"csrf": csrf, "reason": "late"}
        )
        assert answer.status == 409, answer.status

        # deny the other one, with a reason: nothing runs
        page.goto(base + "/approvals")
        other = page.locator(f"#approval-{deny_id}")
        other.locator("form.deny input[name=reason]").fill("not during the sale")
        other.locator("form.deny button").click()
        page.wait_for_url(re.compile(r".*/console/approvals\?done=denied"))
        assert page.locator(f"#approval-{deny_id}").count() == 0
        recent = page.locator("#recent").inner_text()
        assert "not during the sale" in recent and "denied" in recent
        assert "console:" in recent and "looks right" in recent
        assert _decisions(s, deny_id) == ["pending_approval", "denied"]
        assert approval_state.get(s.state, deny_id).state == "denied"  # type: ignore[union-attr]

        # the incident's timeline shows the approval decisions
        page.click(f"#recent a:text-is('{incident_id}')")
        page.wait_for_url(re.compile(rf".*/console/incidents/{incident_id}"))
        timeline = page.locator("#timeline").inner_text()
        for event in ("pending_approval", "approved", "verification"):
            assert event in timeline, timeline

    # the denied call never ran: its queue keeps its duplicate
    assert s.state.lrange(DENY_QUEUE, 0, -1) == [b"a", b"a", b"b"]
    assert not audit.rows("SELECT id FROM action_runs WHERE resource = %s", f"self/{DENY_QUEUE}")


def test_console_approval_posts_need_a_session(served: Served) -> None:
    """Without a session cookie an approve or deny POST is a 403 (no CSRF token can match)."""
    base = served.url + "/console"
    for verb in ("approve", "deny"):
        answer = requests.post(
            f"{base}/approvals/0123456789abcdef/{verb}",
            data={"reason": "x", "csrf": "y"},
            timeout=10,
            allow_redirects=False,
        )
        assert answer.status_code == 403, (verb, answer.status_code)
