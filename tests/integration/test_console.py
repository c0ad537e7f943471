"""Issue 14's web console in a real headless browser: Debian's chromium driven by Playwright
against a real `remediation serve` (private Redis, audit database and worker). An alert
posted to the intake opens an incident the worker acts on and verifies; the console logs in
through its form, lists the incident, shows its timeline, resets a breaker (audited), pauses
and resumes; a POST without the CSRF token is a 403 that does nothing; a wrong token does
not log in; no secret appears on any page. Screenshots go to docs/console/ with REMEDIATION_TEST_SCREENSHOTS=1."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from remediation.guards import keys
from tests.support.alerting import Served, webhook_payload
from tests.support.console import chromium_page, console_stack, shots_folder
from tests.support.rabbitmq import Broker

SLOT = 1402
TOKEN = "console-test-token-" + "fedcba9876543210" * 2
QUEUE = "jobs:console"
SECRET_PW = "s3cr3t-console-pw"
BREAKER = "dedupe_job_queue:console-test"
# the alert the test posts; its annotation carries a password no page may show
ALERT = webhook_payload(
    "c0501e0000000001",
    QUEUE,
    annotations={"summary": f"see redis://admin:{SECRET_PW}@cache.internal:6379/0"},
)


@pytest.fixture(scope="module")
def served(
    broker: Broker, pg_admin: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("serve")
    with console_stack(broker, pg_admin, "console", SLOT, folder, TOKEN) as served:
        yield served


def _secrets(s: Served) -> list[str]:
    found = [TOKEN, SECRET_PW, s.stack.env["REMEDIATION_SIGNING_KEY"]]
    for name in ("REMEDIATION_AUDIT_DSN", "REMEDIATION_STATE_REDIS_URL"):
        password = urlsplit(s.stack.env[name]).password
        if password:
            found.append(password)
    return found


def test_console_in_chromium(served: Served, tmp_path: Path) -> None:
    """The README's screenshots are refreshed with REMEDIATION_TEST_SCREENSHOTS=1 (else they
    go to a temporary folder, so a test run leaves the checkout as it was)."""
    shots = shots_folder(tmp_path)

    s, audit = served, served.stack.audit
    s.state.delete(QUEUE)
    s.state.rpush(QUEUE, "a", "a", "b")
    reply = requests.post(
        s.url + "/alerts",
        json=ALERT,
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    assert reply.status_code == 200 and reply.json()["mapped"] == 1, reply.text
    run = audit.wait_rows(
        "SELECT * FROM action_runs WHERE action = 'dedupe_job_queue' AND resource = %s"
        " AND verification IS NOT NULL",
        f"self/{QUEUE}",
        timeout=90,
    )[0]
    incident = audit.rows("SELECT incident_id FROM findings WHERE id = %s", run["finding_id"])[0]
    incident_id = incident["incident_id"]
    # a breaker to reset (opened by hand: the worker's own breakers open only on failures)
    s.state.sadd(keys.BREAKER_INDEX, BREAKER)
    s.state.hset(keys.breaker(BREAKER), mapping={"state": "open", "times_opened": 1})
    secrets = _secrets(s)
    pages: list[str] = []

    with chromium_page() as page:
        base = s.url + "/console"

        # not logged in: the login page
        page.goto(base + "/")
        assert page.url.endswith("/console/login")
        # a wrong token does not log in
        page.fill("input[name=token]", "wrong" + TOKEN[5:])
        page.click("button[type=submit]")
        assert page.locator("#login-error").is_visible()
        page.goto(base + "/")
        assert page.url.endswith("/console/login")
        page.screenshot(path=str(shots / "login.png"))
        pages.append(page.content())

        page.fill("input[name=token]", TOKEN)
        page.click("button[type=submit]")
        page.wait_for_url(base + "/")
        rows = page.locator("#incidents").inner_text()
        assert incident_id in rows and "redis_job_queue_duplicates" in rows
        page.screenshot(path=str(shots / "incidents.png"), full_page=True)
        pages.append(page.content())

        page.click(f"#incidents a:text-is('{incident_id}')")
        page.wait_for_url(re.compile(r".*/console/incidents/.*"))
        timeline = page.locator("#timeline").inner_text()
        for event in ("finding", "decision", "action", "verification"):
            assert event in timeline, timeline
        assert "dedupe_job_queue" in timeline
        assert page.locator("#state").inner_text() == "recovered"
        page.screenshot(path=str(shots / "incident.png"), full_page=True)
        pages.append(page.content())

        page.goto(base + "/checks")
        assert "redis_job_queue" in page.locator("#check-runs").inner_text()
        page.screenshot(path=str(shots / "checks.png"), full_page=True)
        pages.append(page.content())

        # breaker reset, audited first
        page.goto(base + "/control")
        assert BREAKER in page.locator("#breakers").inner_text()
        page.screenshot(path=str(shots / "control.png"), full_page=True)
        pages.append(page.content())
        page.locator("#breakers tr", has_text=BREAKER).locator("button").click()
        page.wait_for_url(re.compile(r".*/console/control\?done=reset"))
        assert not s.state.exists(keys.breaker(BREAKER))
        reset = audit.rows(
            "SELECT * FROM guard_decisions WHERE decision = 'breaker_reset' AND action = %s",
            "dedupe_job_queue",
        )
        assert len(reset) == 1 and reset[0]["resource"] == "console-test"
        assert "web console" in reset[0]["reason"]

        # pause, then resume
        page.fill("input[name=reason]", "maintenance window")
        page.fill("input[name=seconds]", "600")
        page.click("#pause")
        page.wait_for_url(re.compile(r".*done=paused"))
        assert s.state.get(keys.PAUSE) is not None
        assert b"maintenance window" in s.state.get(keys.PAUSE)  # type: ignore[operator]
        assert 0 < s.state.ttl(keys.PAUSE) <= 600
        assert "maintenance window" in page.locator("#pause-state").inner_text()
        pages.append(page.content())
        page.click("#resume")
        page.wait_for_url(re.compile(r".*done=resumed"))
        assert not s.state.exists(keys.PAUSE)

        # a POST without the CSRF token (same session cookie) is refused and does nothing
        s.state.sadd(keys.BREAKER_INDEX, BREAKER)
        s.state.hset(keys.breaker(BREAKER), mapping={"state": "open"})
        for path, form in [
            ("/pause", {"reason": "no csrf"}),
            ("/breakers/reset", {"name": BREAKER}),
            ("/pause", {"reason": "wrong csrf", "csrf": "x" * 43}),
        ]:
            answer = page.request.post(base + path, form=form, max_redirects=0)
            assert answer.status == 403, (path, answer.status)
        assert not s.state.exists(keys.PAUSE)
        assert s.state.exists(keys.breaker(BREAKER))

        page.goto(base + "/approvals")
        assert page.locator("#no-pending").is_visible()  # no action waits for approval here

        # bad client input is a 4xx page, never a 500
        for bad in ("/incidents/%00%01", "/incidents/" + "x" * 300, "/incidents/nope"):
            answer = page.request.get(base + bad)
            assert answer.status == 404, (bad, answer.status)

        # logging out ends the session
        page.goto(base + "/control")
        page.click("header button")
        page.wait_for_url(base + "/login")
        page.goto(base + "/checks")
        assert page.url.endswith("/console/login")
        cookies = [c for c in page.context.cookies() if c["name"] == "remediation_console"]
        assert all(c["httpOnly"] and c["sameSite"] == "Strict" for c in cookies)

    for html in pages:
        for secret in secrets:
            assert secret not in html
    # the API still needs the bearer token, whatever cookie the browser had
    assert (
        requests.post(
            s.url + "/alerts",
            json=ALERT,
            timeout=10,
        ).status_code
        == 401
    )


def test_console_without_session_refuses_posts(served: Served) -> None:
    """No cookie: a POST is a 403 (no CSRF token can match) and a page redirects to login."""
    base = served.url + "/console"
    for path in ("/pause", "/resume", "/breakers/reset", "/logout", "/login"):
        answer = requests.post(
            base + path, data={"reason": "x", "token": TOKEN}, timeout=10, allow_redirects=False
        )
        assert answer.status_code == 403, (path, answer.status_code)
    assert not served.state.exists(keys.PAUSE)
    page = requests.get(base + "/", timeout=10, allow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/console/login"
    forged = requests.get(
        base + "/",
        cookies={"remediation_console": "eyJ1c2VyIjoieCJ9.forged"},
        timeout=10,
        allow_redirects=False,
    )
    assert forged.status_code == 303
