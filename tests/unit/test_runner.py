"""The runner in-process on the doubles: fan-out, guards, refusals, verification, audit."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import fakeredis
import pytest

from remediation.audit.memory import MemoryAuditStore
from remediation.clients import redis as redis_clients
from remediation.errors import AuditError
from remediation.findings import Finding, Severity
from remediation.guards import keys
from remediation.guards.chain import GuardChain, set_pause
from remediation.registry import get_action
from remediation.runner import Runner
from remediation.settings import get_settings
from tests.unit.doubles import Probe, Recorder, stuck

Make = Callable[..., Runner]
POKE = "remediation.act.poke_thing"


def poke(runner: Runner, thing: str = "x", **kwargs: Any) -> Any:
    return runner.run_action("poke_thing", {"target": "app", "thing": thing, **kwargs})


def outcomes(runner: Runner, things: list[str]) -> list[tuple[str, str]]:
    """(outcome, guard of its decision row) per call by hand on each thing."""
    store = runner.store
    assert isinstance(store, MemoryAuditStore)
    result = []
    for thing in things:
        out = poke(runner, thing)
        row = store.tables["guard_decisions"].get(out.decision_id or 0, {})
        result.append((out.outcome, row.get("guard") or ""))
    return result


def test_a_finding_fans_out_to_its_rule_with_a_trigger(
    runner: Make, probe: Probe, sent: Recorder, store: MemoryAuditStore
) -> None:
    """Two stuck things -> two poke_thing calls, each carrying its finding and incident; the
    next sweep reuses the same incidents (the audit links finding -> incident)."""
    probe.findings = [stuck("app", "a"), stuck("app", "b"), stuck("other", "c")]
    r = runner()
    out = r.run_check("unit_probe", {"target": "app"})
    assert (out.status, out.dispatched) == ("ok", 2)
    assert [(t, k) for t, k, _ in sent.sent] == [
        (POKE, {"target": "app", "thing": "a"}),
        (POKE, {"target": "app", "thing": "b"}),
    ]
    triggers = [t for _, _, t in sent.sent]
    assert [t.finding_id for t in triggers if t] == out.finding_ids
    rows = store.rows("findings", run_id=out.check_run_id)
    assert [row["incident_id"] for row in rows] == [t.incident for t in triggers if t]
    again = Recorder()
    r.dispatch = again
    r.run_check("unit_probe", {"target": "app"})
    assert [t.incident for _, _, t in again.sent if t] == [t.incident for t in triggers if t]


def test_the_shipped_playbook_maps_a_finding_to_its_action_by_severity(
    runner: Make, probe: Probe, sent: Recorder
) -> None:
    """A dead-tuples finding becomes vacuum_analyze of its table; below the rule's minimum
    severity (INFO) nothing is dispatched."""
    probe.findings = [
        Finding(
            check="unit_probe",
            target="app",
            subject=f"public.{name}",
            kind="postgres_dead_tuples_high",
            severity=severity,
            evidence={"table": {"schema": "public", "name": name}},
        )
        for name, severity in (("t1", Severity.WARNING), ("t2", Severity.INFO))
    ]
    out = runner().run_check("unit_probe", {"target": "app"})
    assert out.dispatched == 1
    assert [(t, k) for t, k, _ in sent.sent] == [
        (
            "remediation.act.vacuum_analyze",
            {"target": "app", "tables": [{"schema": "public", "name": "t1"}]},
        )
    ]


def test_check_act_verify_recovered_closes_the_incident(
    runner: Make, probe: Probe, sent: Recorder, store: MemoryAuditStore, state: Any
) -> None:
    """Finding -> admitted -> acted -> the check re-run no longer sees it: verification
    'recovered' is audited and the incident key is gone; the same trigger again is a
    duplicate, not a second run."""
    probe.findings, probe.script = [stuck("app", "a")], ["fix"]
    sent.inline = {"poke_thing"}
    runner().run_check("unit_probe", {"target": "app"})
    (done,) = sent.outcomes
    assert (done.outcome, done.verification) == ("succeeded", "recovered")
    (run,) = store.rows("action_runs")
    assert (run["outcome"], run["verification"]) == ("succeeded", "recovered")
    (verify,) = store.rows("check_runs", purpose="verify")
    assert run["check_run_id"] == verify["id"]
    (trigger,) = [t for _, _, t in sent.sent if t]
    assert state.get(keys.incident(trigger.fingerprint)) is None
    again = sent.runner.run_action(POKE, {"target": "app", "thing": "a"}, trigger=trigger)
    assert (again.outcome, len(probe.acted)) == ("duplicate", 1)


def test_unrecovered_fix_pages_and_frees_the_incident_for_the_next_sweep(
    runner: Make, probe: Probe, sent: Recorder
) -> None:
    """The action ran but the condition stays: 'not_recovered', an unverified_fix notice,
    and the next sweep acts again in the same incident."""
    probe.findings = [stuck("app", "a")]
    sent.inline = {"poke_thing"}
    r = runner()
    r.run_check("unit_probe", {"target": "app"})
    r.run_check("unit_probe", {"target": "app"})
    assert [(o.outcome, o.verification) for o in sent.outcomes] == [
        ("succeeded", "not_recovered")
    ] * 2
    assert sent.notices() == ["unverified_fix", "unverified_fix"]
    incidents = {t.incident for _, _, t in sent.sent if t}
    assert len(incidents) == 1


def test_cooldown_is_per_canonical_resource(runner: Make, probe: Probe) -> None:
    """After a success, the same thing (in any case: resolve makes it canonical) cools
    down; another thing does not."""
    r = runner(REMEDIATION_GUARDS__COOLDOWN_OVERRIDES='{"poke_thing": 300}')
    assert outcomes(r, ["a", "A", "b"]) == [
        ("succeeded", ""),
        ("suppressed", "cooldown"),
        ("succeeded", ""),
    ]


def test_budget_caps_runs_per_hour_across_resources(runner: Make, probe: Probe) -> None:
    """Budget 2: the third call in the hour is suppressed, whatever it touches."""
    r = runner(REMEDIATION_GUARDS__BUDGET_OVERRIDES='{"poke_thing": 2}')
    assert [o for o, _ in outcomes(r, ["a", "b", "c"])] == ["succeeded"] * 2 + ["suppressed"]
    assert outcomes(r, ["d"]) == [("suppressed", "budget")]


def test_lock_refuses_a_call_while_another_holds_the_resource(
    runner: Make, probe: Probe, state: Any
) -> None:
    """While another worker's admission holds app/x, a call on it is suppressed by the lock
    and nothing runs; once completed, the next call runs."""
    r = runner()
    chain = GuardChain(state, r.settings, get_action("poke_thing"))
    held = chain.admit("app", "app/x", "someone-else")
    assert outcomes(r, ["x"]) == [("suppressed", "lock")]
    chain.complete(held, "app", "app/x", success=True)
    assert outcomes(r, ["x"]) == [("succeeded", "")]
    assert len(probe.acted) == 1


def test_breaker_opens_after_failures_pages_once_and_suppresses(
    runner: Make, probe: Probe, sent: Recorder
) -> None:
    """Two failures of two calls open the breaker of poke_thing on app: one breaker_open
    notice; the next call is suppressed by the breaker and does not run."""
    r = runner(REMEDIATION_BREAKER__MINIMUM_CALLS="2")
    probe.script = ["fail", "raise"]
    assert outcomes(r, ["a", "b", "c"]) == [
        ("failed", ""),
        ("failed", ""),
        ("suppressed", "breaker"),
    ]
    assert sent.notices() == ["action_failed", "action_failed", "breaker_open"]
    assert len(probe.acted) == 2


def test_failure_is_audited_redacted(runner: Make, probe: Probe, store: MemoryAuditStore) -> None:
    """An action that raises is recorded as failed with its error, the password masked."""
    probe.script = ["raise"]
    out = poke(runner())
    assert out.outcome == "failed"
    (run,) = store.rows("action_runs")
    assert "RuntimeError" in run["error"] and "hunter2" not in json.dumps(run, default=str)


def test_flap_guard_suspends_and_escalates_once(runner: Make, probe: Probe, sent: Recorder) -> None:
    """flap_max_runs 2: two runs on one resource, then every call is suppressed by the flap
    guard and exactly one 'flapping' notice goes out."""
    r = runner(REMEDIATION_GUARDS__FLAP_MAX_RUNS="2")
    assert outcomes(r, ["f"] * 5) == [("succeeded", "")] * 2 + [("suppressed", "flap")] * 3
    assert sent.notices() == ["flapping"]


def test_blast_radius_caps_units_across_resources(runner: Make, probe: Probe) -> None:
    """A cap of 2 units per hour: two things poked (one unit each), the third suppressed."""
    r = runner(REMEDIATION_GUARDS__BLAST_RADIUS='{"poke_thing": {"units": 2}}')
    assert outcomes(r, ["a", "b", "c"]) == [("succeeded", "")] * 2 + [("suppressed", "blast")]


def test_hysteresis_needs_k_consecutive_runs_and_resets(
    runner: Make, probe: Probe, store: MemoryAuditStore
) -> None:
    """consecutive 3: runs 1 and 2 dispatch nothing (audited 1/3, 2/3, no incident), run 3
    does; one run without the condition starts the count again."""
    r = runner(REMEDIATION_GUARDS__CONSECUTIVE_OVERRIDES='{"unit_probe": 3}')
    probe.findings = [stuck("app", "h")]
    runs = [r.run_check("unit_probe", {"target": "app"}) for _ in range(3)]
    assert [o.dispatched for o in runs] == [0, 0, 1]
    first = store.rows("findings", run_id=runs[0].check_run_id)[0]
    assert (first["evidence"]["consecutive_runs"], first["incident_id"]) == ("1/3", None)
    probe.findings = []
    r.run_check("unit_probe", {"target": "app"})
    probe.findings = [stuck("app", "h")]
    again = [r.run_check("unit_probe", {"target": "app"}) for _ in range(2)]
    assert [o.findings[0].evidence["consecutive_runs"] for o in again] == ["1/3", "2/3"]


def test_refused_by_resolve_costs_nothing_and_notices_once(
    runner: Make, probe: Probe, sent: Recorder, state: Any, store: MemoryAuditStore
) -> None:
    """A call naming nothing there is refused before any guard: audited with guard
    'resolve', no guard key written, one notice for two refusals."""
    r = runner(REMEDIATION_GUARDS__BUDGET_OVERRIDES='{"poke_thing": 1}')
    assert outcomes(r, ["nowhere", "nowhere"]) == [("refused", "resolve")] * 2
    assert sorted(k.decode() for k in state.keys()) == [keys.notice("refused", "poke_thing")]
    assert sent.notices() == ["action_refused"]
    assert outcomes(r, ["a"]) == [("succeeded", "")]  # the budget of 1 was not spent
    assert store.rows("action_runs", outcome="refused") == []


def test_deferred_by_resolve_says_when(runner: Make, probe: Probe) -> None:
    """The action's own back-off defers the call with the time it may act again."""
    out = poke(runner(), "later")
    assert out.outcome == "deferred" and "may act after" in out.reason


@pytest.mark.parametrize(("step", "outcome"), [("refuse", "refused"), ("defer", "deferred")])
def test_declined_after_admission_gives_everything_back(
    runner: Make, probe: Probe, sent: Recorder, step: Any, outcome: str
) -> None:
    """An action that refuses or defers once admitted costs nothing: budget 1 still lets the
    next call run, no breaker failure, no failure notice."""
    r = runner(REMEDIATION_GUARDS__BUDGET_OVERRIDES='{"poke_thing": 1}')
    probe.script = [step]
    assert [o for o, _ in outcomes(r, ["a", "a"])] == [outcome, "succeeded"]
    assert "action_failed" not in sent.notices()


def test_rejected_kwargs_run_nothing_and_are_audited(
    runner: Make, probe: Probe, store: MemoryAuditStore, state: Any
) -> None:
    """An unknown kwarg: rejected, one action_runs row naming it, no decision, no state."""
    out = poke(runner(), "a", extra="boom")
    assert out.outcome == "rejected" and "extra" in out.reason
    assert [row["outcome"] for row in store.rows("action_runs")] == ["rejected"]
    assert store.rows("guard_decisions") == [] and state.keys() == [] and probe.acted == []


def test_dry_run_decides_and_audits_without_acting(
    runner: Make, probe: Probe, store: MemoryAuditStore
) -> None:
    """Dry-run: a dry_run decision and a dry_run action row; the action never runs."""
    out = poke(runner(REMEDIATION_GUARDS__DRY_RUN="true"))
    assert out.outcome == "dry_run" and probe.acted == []
    assert [row["outcome"] for row in store.rows("action_runs")] == ["dry_run"]


def test_maintenance_pause_suppresses(runner: Make, probe: Probe, state: Any) -> None:
    """While paused, every call is suppressed by the pause guard."""
    r = runner()
    set_pause(state, "upgrade", 60)
    assert outcomes(r, ["a"]) == [("suppressed", "pause")]


def test_guard_state_down_means_no_action_and_a_notice(
    runner: Make, probe: Probe, sent: Recorder, store: MemoryAuditStore
) -> None:
    """The state Redis does not answer: 'unavailable' is audited, nothing runs, and the
    operator is told (guard_unavailable)."""
    r = runner()
    down = fakeredis.FakeServer()
    down.connected = False
    redis_clients.use(
        r.settings.state_redis_url.get_secret_value(), fakeredis.FakeRedis(server=down)
    )
    out = poke(r)
    assert out.outcome == "unavailable" and probe.acted == []
    (row,) = store.rows("guard_decisions")
    assert (row["guard"], "ConnectionError" in row["reason"]) == ("state", True)
    assert sent.notices() == ["guard_unavailable"]


class _NoDecisions(MemoryAuditStore):
    def add_decision(self, **kwargs: Any) -> int:
        raise AuditError("audit write failed: OperationalError")


def test_audit_down_means_no_action_and_guards_released(
    unit_env: Any, probe: Probe, sent: Recorder, state: Any
) -> None:
    """Without a decision row nothing runs, and the lock and idempotency claim are given
    back (the next call is admitted once the audit answers)."""
    r = Runner(unit_env(), sent, store=_NoDecisions())
    with pytest.raises(AuditError):
        poke(r)
    assert probe.acted == []
    assert state.keys(keys.lock("poke_thing", "*")) == []
    assert state.keys(keys.idempotency("*")) == []


def test_interrupted_action_releases_its_hold(runner: Make, probe: Probe, state: Any) -> None:
    """A KeyboardInterrupt mid-action propagates, and the lock it held is released."""
    r = runner()
    probe.script = ["crash"]
    with pytest.raises(KeyboardInterrupt):
        poke(r)
    assert state.keys(keys.lock("poke_thing", "*")) == []


def test_broken_check_is_recorded_redacted(
    runner: Make, probe: Probe, store: MemoryAuditStore
) -> None:
    """A check whose target does not answer: status error, audited, password masked."""
    probe.down = True
    out = runner().run_check("unit_probe", {"target": "app"})
    assert out.status == "error" and "secret-pw" not in (out.error or "")
    (row,) = store.rows("check_runs")
    assert row["status"] == "error" and "secret-pw" not in row["error"]


def test_state_is_in_memory(state: fakeredis.FakeRedis) -> None:
    """The unit tier's state Redis is fakeredis, served for the configured URL."""
    url = get_settings().state_redis_url.get_secret_value()
    assert redis_clients.client(url) is state


def test_a_redelivered_task_whose_outcome_is_on_record_completes_without_acting(
    runner: Make, probe: Probe, state: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker records the run, then dies before completing the guards (simulated: the
    completion raises SystemExit, as a kill -9 would stop it). The same task delivered again
    resumes its claim, finds the recorded outcome and only completes the guards: the action
    runs once, one succeeded run is on record, the claim is done and the lock is free."""
    from remediation.calls import Admitted

    r = runner()
    real_complete = Admitted.complete
    deaths = iter([True])

    def complete_or_die(self: Admitted, success: bool) -> str:
        if next(deaths, False):
            raise SystemExit("killed after recording")
        return real_complete(self, success)

    monkeypatch.setattr(Admitted, "complete", complete_or_die)
    with pytest.raises(SystemExit):
        r.run_action("poke_thing", {"target": "app", "thing": "x"}, task_id="task-1")
    assert len(probe.acted) == 1
    assert state.keys(keys.lock("poke_thing", "*")) != []  # the dead worker still holds it
    again = r.run_action("poke_thing", {"target": "app", "thing": "x"}, task_id="task-1")
    assert again.outcome == "succeeded"
    assert len(probe.acted) == 1
    store = r.store
    assert isinstance(store, MemoryAuditStore)
    runs = store.rows("action_runs", task_id="task-1")
    assert [row["outcome"] for row in runs] == ["succeeded"] and again.action_run_id == runs[0][
        "id"
    ]
    assert state.keys(keys.lock("poke_thing", "*")) == []
    (claim,) = state.keys(keys.idempotency("*"))
    assert state.get(claim) == b"done"
