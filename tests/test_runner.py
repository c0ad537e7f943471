"""The runner without Celery: dry-run, guard state down, rejected kwargs, in-process fan-out."""

from __future__ import annotations

from typing import Any

import psycopg

from remediation.audit.store import AuditStore
from remediation.runner import Runner
from tests.support.base import wait_for
from tests.support.postgres import bloat, dead_rows
from tests.support.runner import Recorder


def vacuumed(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT relname FROM pg_stat_user_tables WHERE last_vacuum IS NOT NULL")
        return {r[0] for r in rows.fetchall()}


def test_dry_run_decides_audits_and_does_not_act(settings_env: Any, target_db: str) -> None:
    """With dry-run on, the decision and a dry_run action row are audited; no VACUUM runs."""
    s = settings_env(
        REMEDIATION_POSTGRES_TARGETS__APP=target_db, REMEDIATION_GUARDS__DRY_RUN="true"
    )
    bloat(target_db, "t1")
    runner = Runner(s, Recorder())
    out = runner.run_action(
        "vacuum_analyze", {"target": "app", "tables": ["public.t1"]}, task_id="dry-1"
    )
    assert out.outcome == "dry_run"
    assert vacuumed(target_db) == set()
    rows = AuditStore(s.audit_dsn.get_secret_value()).query(
        "SELECT d.decision, a.outcome FROM guard_decisions d JOIN action_runs a"
        " ON a.decision_id = d.id WHERE d.task_id = 'dry-1'"
    )
    assert rows == [{"decision": "dry_run", "outcome": "dry_run"}]


def test_guard_state_down_means_no_action_audited_and_notified(
    settings_env: Any, target_db: str
) -> None:
    """Redis unreachable: the action does not run; 'unavailable' is audited; a notice goes out."""
    s = settings_env(
        REMEDIATION_POSTGRES_TARGETS__APP=target_db,
        REMEDIATION_STATE_REDIS_URL="redis://127.0.0.1:1/0",
    )
    bloat(target_db, "t1")
    sent = Recorder()
    out = Runner(s, sent).run_action(
        "vacuum_analyze", {"target": "app", "tables": ["public.t1"]}, task_id="down-1"
    )
    assert out.outcome == "unavailable"
    assert vacuumed(target_db) == set()
    (row,) = AuditStore(s.audit_dsn.get_secret_value()).query(
        "SELECT decision, guard, reason FROM guard_decisions WHERE task_id = 'down-1'"
    )
    assert row["decision"] == "unavailable" and "ConnectionError" in row["reason"]
    assert [(t, k["kind"]) for t, k, _ in sent.sent] == [
        ("remediation.act.notify", "guard_unavailable")
    ]


def test_check_fans_out_one_action_per_finding_with_trigger(
    settings_env: Any, target_db: str
) -> None:
    """Two bloated tables -> two vacuum triggers, each carrying its finding and incident."""
    s = settings_env(REMEDIATION_POSTGRES_TARGETS__APP=target_db)
    for t in ("a", "b"):
        bloat(target_db, t)
    wait_for(lambda: dead_rows(target_db, "b") >= 4000, 15, 0.3, "stats")
    sent = Recorder()
    out = Runner(s, sent).run_check("postgres_dead_tuples", {"target": "app"})
    assert out.status == "ok" and out.dispatched == 2
    tables = sorted(k["tables"][0]["name"] for _, k, _ in sent.sent)
    assert tables == ["a", "b"]
    triggers = [t for _, _, t in sent.sent]
    assert all(t is not None and t.finding_id in out.finding_ids for t in triggers)
    again = Recorder()
    Runner(s, again).run_check("postgres_dead_tuples", {"target": "app"})
    assert [t.incident for _, _, t in again.sent] == [t.incident for t in triggers]  # type: ignore[union-attr]


def test_broken_check_is_recorded_not_raised(settings_env: Any) -> None:
    """A check that cannot reach its target is audited as an error with a redacted message."""
    s = settings_env(REMEDIATION_POSTGRES_TARGETS__DOWN="postgresql://u:pw-x@127.0.0.1:1/x")
    out = Runner(s, Recorder()).run_check("postgres_dead_tuples", {"target": "down"})
    assert out.status == "error" and "pw-x" not in (out.error or "")


def test_audit_down_means_no_action_and_guards_released(
    settings_env: Any, target_db: str, r: Any
) -> None:
    """Without an audit row nothing runs, and the lock and idempotency claim are given back."""
    from remediation.errors import AuditError
    from remediation.guards import keys

    s = settings_env(REMEDIATION_POSTGRES_TARGETS__APP=target_db)
    bloat(target_db, "t1")
    broken = AuditStore("postgresql://postgres@127.0.0.1:1/nowhere")
    runner = Runner(s, Recorder(), store=broken)
    try:
        runner.run_action("vacuum_analyze", {"target": "app", "tables": ["t1"]}, task_id="a-1")
    except AuditError:
        pass
    else:
        raise AssertionError("expected AuditError")
    assert vacuumed(target_db) == set()
    assert list(r.scan_iter(match=keys.lock("vacuum_analyze", "*"))) == []
    assert list(r.scan_iter(match=keys.idempotency("*"))) == []


def test_hysteresis_needs_k_consecutive_runs_and_resets(settings_env: Any, target_db: str) -> None:
    """With consecutive_overrides {check: 3}, a bloated table triggers nothing on runs 1 and 2
    (audited with consecutive_runs 1/3, 2/3), triggers on run 3; once the condition is gone
    for one run the count starts again."""
    s = settings_env(
        REMEDIATION_POSTGRES_TARGETS__APP=target_db,
        REMEDIATION_GUARDS__CONSECUTIVE_OVERRIDES='{"postgres_dead_tuples": 3}',
    )
    bloat(target_db, "h1")
    wait_for(lambda: dead_rows(target_db, "h1") >= 4000, 15, 0.3, "stats")
    sent = Recorder()
    runner = Runner(s, sent)
    counts = []
    for _ in range(3):
        out = runner.run_check("postgres_dead_tuples", {"target": "app"})
        counts.append(out.dispatched)
    assert counts == [0, 0, 1]
    with psycopg.connect(target_db, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE public.h1")
    wait_for(lambda: dead_rows(target_db, "h1") == 0, 15, 0.3, "stats after vacuum")
    assert runner.run_check("postgres_dead_tuples", {"target": "app"}).findings == []
    bloat_again(target_db, "h1")
    wait_for(lambda: dead_rows(target_db, "h1") >= 4000, 15, 0.3, "stats")
    again = [runner.run_check("postgres_dead_tuples", {"target": "app"}) for _ in range(2)]
    assert [o.dispatched for o in again] == [0, 0]
    assert [o.findings[0].evidence["consecutive_runs"] for o in again] == ["1/3", "2/3"]
    stored = runner.store.query(
        "SELECT evidence->>'consecutive_runs' AS seen, incident_id FROM findings"
        " WHERE check_run_id = %s",
        (again[1].check_run_id,),
    )
    assert stored == [{"seen": "2/3", "incident_id": None}]


def bloat_again(dsn: str, table: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f"INSERT INTO public.\"{table}\" SELECT g, repeat('x', 50) FROM generate_series(1, 5000) g"
        )
        conn.execute(f'DELETE FROM public."{table}" WHERE id % 5 <> 0')


def test_flap_guard_suspends_and_escalates_once(settings_env: Any, target_db: str) -> None:
    """flap_max_runs 2: two ANALYZEs of one table run, every later call is suppressed by the
    flap guard and audited, and exactly one 'flapping' notification is dispatched."""
    s = settings_env(
        REMEDIATION_POSTGRES_TARGETS__APP=target_db,
        REMEDIATION_GUARDS__FLAP_MAX_RUNS="2",
        REMEDIATION_GUARDS__COOLDOWN_OVERRIDES='{"analyze_tables": 0}',
    )
    bloat(target_db, "f1")
    sent = Recorder()
    runner = Runner(s, sent)
    outcomes = [
        runner.run_action("analyze_tables", {"target": "app", "tables": ["f1"]}, task_id=f"f{n}")
        for n in range(5)
    ]
    assert [o.outcome for o in outcomes] == ["succeeded"] * 2 + ["suppressed"] * 3
    assert all("flap guard" in o.reason for o in outcomes[2:])
    flapping = [
        k for task, k, _ in sent.sent if task.endswith(".notify") and k["kind"] == "flapping"
    ]
    assert len(flapping) == 1 and "analyze_tables on app/public.f1" in flapping[0]["text"]
    rows = runner.store.query(
        "SELECT count(*) AS n FROM guard_decisions WHERE guard = 'flap' AND task_id LIKE 'f%%'"
    )
    assert rows == [{"n": 3}]
