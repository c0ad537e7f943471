"""The doctor's runner in-process: what blocks, which actions count as enabled, a probe that
hangs or raises, the --send-test flag reaching the probes, the report at start in Redis."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import fakeredis
import pytest

from remediation.doctor import SEND_TEST, Result, at_start, fail, ok, runner, unknown
from remediation.doctor.enabled import enabled_actions, playbook_actions
from remediation.guards import keys
from remediation.settings import Settings


def _report(rows: list[Result], enabled: set[str]) -> runner.Report:
    return runner.Report(tuple(rows), frozenset(enabled))


def test_core_failure_blocks() -> None:
    """A ✗ that names no action (the core) blocks: exit 1."""
    report = _report([fail("postgres", "self", "connect", "refused", "start it")], set())
    assert report.exit_code == 1 and len(report.blocking) == 1


def test_failure_needed_by_a_disabled_action_does_not_block() -> None:
    """A ✗ only disabled actions need is shown, not blocking: exit 0."""
    row = fail("postgres", "app", "CREATEDB", "no", "ALTER ROLE", needed_by=("verify_backup",))
    assert _report([row], {"vacuum_analyze"}).exit_code == 0
    assert _report([row], {"verify_backup"}).exit_code == 1


def test_unknown_never_blocks() -> None:
    """ "cannot tell" rows are counted and shown, never blocking."""
    report = _report([unknown("redis", "state", "ACL", "no DRYRUN", "allow it")], set())
    assert report.exit_code == 0 and report.counts()["unknown"] == 1


def test_as_dict_has_time_counts_and_blocking_flags() -> None:
    """The JSON form carries a timestamp, counts and each row's blocking flag."""
    rows = [ok("schedule", "beat_schedule", "valid"), fail("a", "b", "c", "d", "e")]
    data = _report(rows, set()).as_dict()
    assert data["at"] and data["exit_code"] == 1
    assert data["counts"] == {"ok": 1, "fail": 1, "unknown": 0, "blocking": 1}
    assert [r["blocking"] for r in data["rows"]] == [False, True]
    json.dumps(data)


def test_enabled_actions_follow_dry_run_and_switches(unit_env: Callable[..., Settings]) -> None:
    """Global dry-run enables nothing; per-action dry-run and off switches remove actions."""
    s = unit_env()
    enabled = enabled_actions(s)
    assert "vacuum_analyze" in enabled and enabled <= playbook_actions()
    assert "recreate_service" not in enabled and "terminate_idle_transactions" not in enabled
    assert enabled_actions(unit_env(REMEDIATION_GUARDS__DRY_RUN="true")) == frozenset()
    s = unit_env(
        REMEDIATION_GUARDS__DRY_RUN="false",
        REMEDIATION_GUARDS__DRY_RUN_ACTIONS='["vacuum_analyze"]',
        REMEDIATION_CONTAINERS__HARD_REBOOT="true",
        REMEDIATION_POSTGRES__SESSION_ALLOW_ROLES='["app"]',
    )
    enabled = enabled_actions(s)
    assert "vacuum_analyze" not in enabled
    assert {"recreate_service", "terminate_idle_transactions"} <= enabled


def test_hung_probe_becomes_unknown_and_others_still_report(
    unit_env: Callable[..., Settings],
) -> None:
    """A probe past the timeout is a "cannot tell" row; the others' rows are kept."""
    release = threading.Event()

    def hangs(_: Settings) -> list[Result]:
        release.wait(30)
        return []

    def answers(_: Settings) -> list[Result]:
        return [ok("schedule", "x", "valid")]

    started = time.monotonic()
    report = runner.run_probes(unit_env(), [("slow", hangs), ("fast", answers)], timeout=0.5)
    release.set()
    assert time.monotonic() - started < 5
    assert [(r.area, r.status) for r in report.rows] == [("slow", "unknown"), ("schedule", "ok")]
    assert report.exit_code == 0


def test_probe_exception_is_a_redacted_fail_row(unit_env: Callable[..., Settings]) -> None:
    """A probe that raises is a ✗ row whose message has the DSN password masked."""

    def raises(_: Settings) -> list[Result]:
        raise RuntimeError("cannot reach postgresql://app:hunter2secret@db:5432/app")

    report = runner.run_probes(unit_env(), [("postgres", raises)], timeout=5)
    (row,) = report.rows
    assert row.status == "fail" and report.exit_code == 1
    assert "hunter2secret" not in json.dumps(report.as_dict()) and "RuntimeError" in row.detail


def test_send_test_reaches_the_probe_thread(unit_env: Callable[..., Settings]) -> None:
    """run_probes(send_test=True) is what SEND_TEST reads inside the probe; default False."""

    def flag(_: Settings) -> list[Result]:
        return [ok("webhook", "notify", "send", str(SEND_TEST.get()))]

    s = unit_env()
    assert runner.run_probes(s, [("webhook", flag)], send_test=True).rows[0].detail == "True"
    assert runner.run_probes(s, [("webhook", flag)]).rows[0].detail == "False"
    assert SEND_TEST.get() is False


def test_unknown_area_is_refused(unit_env: Callable[..., Settings]) -> None:
    """--area with a name no module has is a ValueError naming the known ones."""
    with pytest.raises(ValueError, match="known: postgres"):
        runner.run(unit_env(), ["nope"])


def test_at_start_stores_the_report_with_a_ttl(
    unit_env: Callable[..., Settings], state: fakeredis.FakeRedis, monkeypatch: Any
) -> None:
    """The start-up run writes the report (with a TTL) to the state Redis, read back by last()."""
    rows = (fail("postgres", "self", "connect", "refused", "start it"),)
    monkeypatch.setattr(at_start, "run", lambda s: runner.Report(rows, frozenset()))
    at_start.check(unit_env())
    assert 0 < state.ttl(keys.DOCTOR_LAST) <= keys.DOCTOR_LAST_TTL
    last = at_start.last(state)
    assert last is not None and last["counts"]["blocking"] == 1


def test_at_start_off_runs_nothing(unit_env: Callable[..., Settings]) -> None:
    """REMEDIATION_DOCTOR__AT_START=false: no thread, nothing stored."""
    assert at_start.start(unit_env(REMEDIATION_DOCTOR__AT_START="false")) is None


def test_area_takes_the_row_name_too(unit_env: Callable[..., Settings]) -> None:
    """`--area folder` (what the rows say) runs the folders module, like `--area folders`."""
    report = runner.run(unit_env(), ["folder", "schedule"])
    assert {r.area for r in report.rows} == {"folder", "schedule"}
