"""`remediation report`: numbers from audit rows written by the real Runner on real services."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
import redis

from remediation import cli, report
from remediation.audit.store import AuditStore
from remediation.context import Trigger
from remediation.registry import CHECK_PREFIX
from remediation.runner import Runner
from remediation.settings import Settings
from tests.support.services import as_url, scratch_database

DUPLICATES = [json.dumps({"id": i % 2}) for i in range(4)]  # two duplicates per list


@pytest.fixture
def report_env(settings_env: Any, pg_admin: str) -> Iterator[Settings]:
    """Settings on the test Redis and an audit database of this test's own."""
    with scratch_database(pg_admin, "rem_report") as dsn:
        s: Settings = settings_env(
            REMEDIATION_AUDIT_DSN=as_url(dsn), REMEDIATION_JOB_QUEUE__KEYS='["jobs_*"]'
        )
        AuditStore(as_url(dsn)).upgrade()
        yield s


def in_process(s: Settings) -> Runner:
    """A Runner whose dispatcher runs actions right here, like `remediation run CHECK --act`."""

    def dispatch(task: str, kwargs: dict[str, Any], trigger: Trigger | None) -> None:
        if task.startswith(CHECK_PREFIX):
            runner.run_check(task, kwargs)
        else:
            runner.run_action(task, kwargs, trigger=trigger)

    runner = Runner(s, dispatch)
    return runner


def sql(s: Settings, query: str, *params: Any) -> None:
    with psycopg.connect(s.audit_dsn.get_secret_value(), autocommit=True) as conn:
        conn.execute(query, params)  # type: ignore[arg-type]


def run_report(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()  # the runner's log lines so far
    code = cli.main(["--json", "report", *args])
    return code, capsys.readouterr().out


def test_report_counts_fires_fixes_suppressions_and_median(
    report_env: Settings, r: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three verified dedupes, one cooldown suppression and an old fix outside the window."""
    s, runner = report_env, in_process(report_env)
    for key in ("jobs_a", "jobs_b", "jobs_c"):
        r.rpush(key, *DUPLICATES)
        out = runner.run_check("redis_job_queue", {"key": key})
        assert (out.status, out.dispatched) == ("ok", 1)
        assert r.llen(key) == 2
    r.rpush("jobs_a", *DUPLICATES)  # again, within the 5-minute cooldown: suppressed
    assert runner.run_check("redis_job_queue", {"key": "jobs_a"}).dispatched == 1
    assert r.llen("jobs_a") == 6
    r.rpush("jobs_old", json.dumps({"id": 9, "enqueued_at": 0}))
    assert runner.run_check("redis_job_queue", {"key": "jobs_old"}).dispatched == 1
    assert r.llen("jobs_old") == 0

    # known times to fix (10 s, 20 s, 90 s: median 20 s) and the stale-job fix 10 days back
    for key, seconds in (("jobs_a", 10), ("jobs_b", 20), ("jobs_c", 90)):
        sql(
            s,
            "UPDATE findings f SET seen_at = a.verified_at - make_interval(secs => %s)"
            " FROM action_runs a WHERE a.finding_id = f.id AND f.subject = %s"
            " AND a.verification = 'recovered'",
            seconds,
            key,
        )
    back = "- interval '10 days'"
    sql(
        s,
        f"UPDATE check_runs SET started_at = started_at {back} WHERE id IN (SELECT check_run_id"
        " FROM findings WHERE subject = 'jobs_old' UNION SELECT verify_check_run_id"
        " FROM action_runs WHERE action = 'dead_letter_stale_jobs')",
    )
    sql(s, f"UPDATE findings SET seen_at = seen_at {back} WHERE subject = 'jobs_old'")
    sql(
        s,
        f"UPDATE guard_decisions SET decided_at = decided_at {back}"
        " WHERE action = 'dead_letter_stale_jobs'",
    )
    sql(
        s,
        f"UPDATE action_runs SET started_at = started_at {back}, verified_at = verified_at"
        f" {back} WHERE action = 'dead_letter_stale_jobs'",
    )

    code, text = run_report(capsys, "--since", "7d")
    assert code == 0
    week = json.loads(text)
    assert week["totals"] == {"check_runs": 7, "check_errors": 0, "findings": 4, "incidents": 4}
    (dedupe,) = week["procedures"]
    assert dedupe == {
        "procedure": "000 Redis Queue Management",
        "runbook": "000 Redis Queue Management: job queue processing duplicate jobs",
        "finding": "redis_job_queue_duplicates",
        "action": "dedupe_job_queue",
        "calls": 4,
        "fired": 4,
        "acted": 3,
        "succeeded": 3,
        "failed": 0,
        "suppressed": 1,
        "dry_run": 0,
        "rejected": 0,
        "verified": 3,
        "not_verified": 0,
        "suppressed_by": {"cooldown": 1},
        "median_fix_seconds": 20.0,
    }

    code, text = run_report(capsys, "--since", "2w")
    fortnight = json.loads(text)
    assert fortnight["totals"] == {
        "check_runs": 9,
        "check_errors": 0,
        "findings": 5,
        "incidents": 5,
    }
    stale = {p["action"]: p for p in fortnight["procedures"]}["dead_letter_stale_jobs"]
    assert (stale["finding"], stale["fired"], stale["succeeded"], stale["verified"]) == (
        "redis_job_queue_stale",
        1,
        1,
        1,
    )
    assert stale["procedure"] == "000 Redis Queue Management, 004 Worker Queue Backlog"
    assert 0 <= stale["median_fix_seconds"] < 60

    assert cli.main(["report", "--since", "7d"]) == 0
    human = capsys.readouterr().out
    assert "checks: 7 runs (0 errors); findings: 4 in 4 incidents" in human
    row = next(line for line in human.splitlines() if "dedupe_job_queue" in line)
    assert " ".join(row.split()[-9:]) == "dedupe_job_queue 4 3 0 1 (cooldown 1) 3 20.0s"


def test_calls_without_a_finding_and_rejected_calls(
    report_env: Settings, capsys: pytest.CaptureFixture[str], webhook: Any
) -> None:
    """Notifications and calls by hand have their own rows; rejected kwargs count as rejected."""
    s = report_env
    runner = in_process(s)
    assert runner.run_action("dedupe_job_queue", {"bogus": 1}).outcome == "rejected"
    assert runner.run_action("notify", {"text": "hi", "incident": "rep-1"}).outcome in (
        "succeeded",
        "failed",
    )
    code, text = run_report(capsys, "--since", "30m")
    assert code == 0
    rows = {p["action"]: p for p in json.loads(text)["procedures"]}
    assert rows["dedupe_job_queue"]["finding"] == "(no finding)"
    assert (rows["dedupe_job_queue"]["calls"], rows["dedupe_job_queue"]["rejected"]) == (1, 1)
    assert rows["notify"]["fired"] == 1 and rows["notify"]["acted"] == 1
    assert rows["notify"]["median_fix_seconds"] is None


def test_a_call_by_hand_approved_once_counts_once(
    report_env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """The rows an approved call by hand leaves (as `make demo`'s flush_cache wrote them: the
    ask, the approver's decision, the approved run carrying the approval) are one call; a
    second call by hand, asked and still waiting, is another."""
    store = AuditStore(report_env.audit_dsn.get_secret_value())
    call = {"action": "flush_cache", "target": "self", "resource": "self"}
    approval = {"approval": "5f2cf87f5bd4c397"}
    store.add_decision(**call, decision="pending_approval", guard="approval", detail=approval)
    store.add_decision(
        **call, decision="approved", guard="approval", detail={**approval, "by": "cli:root"}
    )
    admitted = store.add_decision(**call, decision="admitted")
    store.add_action_run(
        **call,
        params={"target": "self"},
        outcome="succeeded",
        decision_id=admitted,
        result={"ok": True, "detail": {"deleted": 3, "approval": {**approval, "gone": []}}},
    )
    store.add_decision(**call, decision="pending_approval", guard="approval", detail=approval)
    code, text = run_report(capsys, "--since", "30m")
    assert code == 0
    (row,) = [p for p in json.loads(text)["procedures"] if p["action"] == "flush_cache"]
    assert (row["finding"], row["fired"], row["succeeded"]) == ("(no finding)", 2, 1)


def test_empty_window(report_env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    """No rows: zero totals, an empty list, and a table that says so."""
    code, text = run_report(capsys, "--since", "12h")
    assert code == 0
    data = json.loads(text)
    assert data["procedures"] == [] and data["window_seconds"] == 12 * 3600
    assert cli.main(["report"]) == 0
    assert "(none)" in capsys.readouterr().out


def incident_of(s: Settings, key: str) -> list[str]:
    """The incidents of the findings on one job list, oldest first."""
    with psycopg.connect(s.audit_dsn.get_secret_value()) as conn:
        rows = conn.execute(
            "SELECT incident_id FROM findings WHERE subject = %s"
            " GROUP BY incident_id ORDER BY min(id)",
            (key,),
        ).fetchall()
    return [row[0] for row in rows]


def test_incident_timeline_from_finding_to_verified_fix(
    report_env: Settings, r: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """One incident's findings, guard decision, action and verification in time order, as
    JSON and text; a recurrence is a new incident whose action the cooldown suppressed."""
    runner = in_process(report_env)
    r.rpush("jobs_x", *DUPLICATES)
    assert runner.run_check("redis_job_queue", {"key": "jobs_x"}).dispatched == 1
    r.rpush("jobs_x", *DUPLICATES)  # back within the cooldown: a new incident, suppressed
    assert runner.run_check("redis_job_queue", {"key": "jobs_x"}).dispatched == 1
    fixed, suppressed = incident_of(report_env, "jobs_x")

    code, text = run_report(capsys, "--incident", fixed)
    assert code == 0
    data = json.loads(text)
    assert data["state"] == "recovered" and data["truncated"] is False
    assert data["condition"]["kind"] == "redis_job_queue_duplicates"
    assert data["counts"] == {"findings": 1, "decisions": 1, "actions": 1, "verified": 1}
    events = [
        (e["type"], e.get("decision") or e.get("outcome") or e.get("verification"))
        for e in data["timeline"]
    ]
    assert events == [
        ("finding", None),
        ("decision", "admitted"),
        ("action", "succeeded"),
        ("verification", "recovered"),
    ]
    assert [e["at"] for e in data["timeline"]] == sorted(e["at"] for e in data["timeline"])

    code, text = run_report(capsys, "--incident", suppressed)
    again = json.loads(text)
    assert (again["state"], again["counts"]["actions"]) == ("open", 0)
    assert [(e["type"], e.get("guard")) for e in again["timeline"]] == [
        ("finding", None),
        ("decision", "cooldown"),
    ]

    assert cli.main(["report", "--incident", fixed]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"incident {fixed}: redis_job_queue_duplicates on ")
    assert "state: recovered" in lines[1]
    kinds = [line.split()[2] for line in lines[4:]]
    assert kinds == ["finding", "decision", "action", "verification"]

    code, text = run_report(capsys, "--since", "1h")
    listed = [i["incident"] for i in json.loads(text)["recent_incidents"]]
    assert listed == [suppressed, fixed]


def test_unknown_or_malformed_incident(
    report_env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """An id nothing joined exits 1 saying so; one no incident can have exits 2 (usage)."""
    assert cli.main(["report", "--incident", "nope-0000"]) == 1
    assert (
        "no finding in the audit trail belongs to incident 'nope-0000'" in capsys.readouterr().err
    )
    for bad in ("", "x" * 201, "a b", "id;drop", "\x00"):
        assert cli.main(["report", "--incident", bad]) == 2
        assert capsys.readouterr().err.startswith("remediation report: --incident ")


@pytest.mark.parametrize("bad", ["7", "7x", "d", "-1d", "0m", "1.5h", "7 days", "", "9999w"])
def test_bad_since_is_a_usage_error(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Anything but <number><m|h|d|w> within ten years exits 2 with a message naming --since."""
    assert cli.main(["report", f"--since={bad}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"remediation report: --since {bad!r}: ")
    assert "30m, 12h, 7d or 2w" in err or "between 1m and 520w" in err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", timedelta(minutes=30)),
        ("12h", timedelta(hours=12)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
    ],
)
def test_windows(text: str, expected: timedelta) -> None:
    """The four documented forms."""
    assert report.parse_window(text) == expected


def test_durations_read_like_a_human_wrote_them() -> None:
    """Seconds, minutes, hours and days, two units at most."""
    got = [report.duration(x) for x in (None, 4.25, 200, 7500, 190_000)]
    assert got == ["-", "4.2s", "3m 20s", "2h 05m", "2d 04h"]


def test_every_playbook_action_rule_has_a_procedure_name() -> None:
    """Each (kind, action) in the playbook maps to a runbook name the report can print."""
    procs = report.procedures()
    assert procs and all(p.procedure and p.runbook for p in procs.values())
    assert procs[("redis_job_queue_duplicates", "dedupe_job_queue")].procedure == (
        "000 Redis Queue Management"
    )
    with pytest.raises(argparse.ArgumentTypeError):
        report.parse_window("1y")
