"""Audit retention (remediation.audit.retention, `remediation db prune`) against a real
PostgreSQL and Redis: what goes, what stays, in bounded batches, while a writer writes."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from remediation.approvals import state as approvals
from remediation.audit import retention
from remediation.audit import store as store_module
from remediation.audit.schema import new_id
from remediation.audit.store import AuditStore
from remediation.cli import main
from remediation.guards import keys
from remediation.settings.retention import RetentionSettings
from tests.support.audit import ORPHANS_SQL
from tests.support.services import as_url, scratch_database
from tests.support.trail import TABLES, counts, write_trail

NOW = datetime.now(UTC)
SETTINGS = RetentionSettings(check_runs_days=14, audit_days=400, observations_days=400)


@pytest.fixture
def dsn(pg_admin: str) -> Iterator[str]:
    """An empty audit database (schema applied), dropped afterwards."""
    with scratch_database(pg_admin, "rem_retention") as raw:
        url = as_url(raw)
        AuditStore(url).upgrade()
        try:
            yield url
        finally:
            store_module.close_pools()


def _insert(conn: psycopg.Connection[Any], table: str, **values: Any) -> int:
    values = {"id": new_id(), **values}
    cols = ", ".join(values)
    marks = ", ".join(f"%({c})s" for c in values)
    conn.execute(f"INSERT INTO {table} ({cols}) VALUES ({marks})", values)
    return int(values["id"])


def quiet_run(conn: psycopg.Connection[Any], days: float, check: str = "c") -> int:
    """A check run that found nothing, `days` old."""
    at = NOW - timedelta(days=days)
    return _insert(
        conn,
        "check_runs",
        check_name=check,
        target="t",
        status="ok",
        started_at=at,
        finished_at=at,
    )


def trail(
    conn: psycopg.Connection[Any], days: float, incident: str | None = None
) -> dict[str, int]:
    """A check run -> finding -> decision -> action run verified by a later check run, `days`
    old, and an observation."""
    at = NOW - timedelta(days=days)
    run = _insert(
        conn, "check_runs", check_name="c", target="t", status="ok", findings_count=1, started_at=at
    )
    fid = _insert(
        conn,
        "findings",
        check_run_id=run,
        check_name="c",
        target="t",
        kind="k",
        severity="high",
        fingerprint="fp",
        incident_id=incident,
        seen_at=at,
    )
    did = _insert(
        conn,
        "guard_decisions",
        finding_id=fid,
        action="a",
        target="t",
        resource="t",
        decision="admitted",
        decided_at=at,
    )
    verify = _insert(
        conn, "check_runs", check_name="c", target="t", purpose="verify", status="ok", started_at=at
    )
    aid = _insert(
        conn,
        "action_runs",
        decision_id=did,
        finding_id=fid,
        action="a",
        target="t",
        outcome="succeeded",
        verification="recovered",
        verify_check_run_id=verify,
        started_at=at,
    )
    obs = _insert(
        conn, "observations", check_name="c", target="t", metric="m", value=1.0, observed_at=at
    )
    return {
        "run": run,
        "finding": fid,
        "decision": did,
        "verify": verify,
        "action": aid,
        "obs": obs,
    }


def ids(dsn: str) -> dict[str, set[int]]:
    with psycopg.connect(dsn) as conn:
        return {t: {r[0] for r in conn.execute(f"SELECT id FROM {t}")} for t in TABLES}


def orphans(dsn: str) -> int:
    """Rows whose reference points at no row (tests.support.audit.ORPHANS_SQL)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(ORPHANS_SQL).fetchone()
    return int(row[0]) if row else -1


def ages(dsn: str) -> dict[str, Any]:
    """Rows of every kind at 1, 20 and 500 days; returns their ids by age."""
    made: dict[str, Any] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for days in (1, 20, 500):
            made[f"quiet{days}"] = quiet_run(conn, days)
            made[f"trail{days}"] = trail(conn, days)
    return made


def test_dry_run_counts_what_apply_deletes_and_recent_rows_stay(dsn: str, r: redis.Redis) -> None:
    """A dry run's counts are exactly what --apply then deletes; rows inside their retention stay."""
    made = ages(dsn)
    store = AuditStore(dsn)
    dry = retention.prune(store, SETTINGS, r, apply=False, now=NOW)
    assert ids(dsn) == ids(dsn) and sum(counts(dsn).values()) == 21  # nothing deleted
    before = counts(dsn)
    done = retention.prune(store, SETTINGS, r, apply=True, now=NOW)
    after = counts(dsn)
    deleted = {t: before[t] - after[t] for t in TABLES}
    deleted["check_runs"] += 1  # the prune's own audit row
    assert dry.counts == done.counts == deleted
    assert dry.counts == {
        "action_runs": 1,
        "guard_decisions": 1,
        "findings": 1,
        "check_runs": 4,  # quiet 20 d and 500 d, the 500 d trail's run and verification
        "observations": 1,
    }
    left = ids(dsn)
    for days in (1, 20):
        assert set(made[f"trail{days}"].values()) <= set().union(*left.values())
    assert made["quiet1"] in left["check_runs"] and made["quiet20"] not in left["check_runs"]
    assert orphans(dsn) == 0


def test_open_incident_and_live_approval_rows_stay(dsn: str, r: redis.Redis) -> None:
    """Old rows of an open incident or of a pending approval's finding stay; others go."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        open_trail = trail(conn, 500, incident="fp-open1")
        closed_trail = trail(conn, 500, incident="fp-closed")
        asked_trail = trail(conn, 500)
        approved_trail = trail(conn, 500)
    r.set(keys.incident("fp"), "fp-open1")
    for key, made in (("k-asked", asked_trail), ("k-approved", approved_trail)):
        asked = approvals.ask(
            r,
            action="a",
            target="t",
            resource="t",
            params={},
            plan={},
            idempotency_key=key,
            trigger={"finding_id": made["finding"], "incident": None},
            fingerprint="fp2",
            ttl_seconds=3600,
        )
    moved = approvals.transition(r, asked.approval.id, approvals.APPROVED, "op", "ok", "decide")
    assert moved.result == "ok"
    keep = retention.kept(r)
    assert keep.incidents == ["fp-open1"]
    assert sorted(keep.findings) == sorted([asked_trail["finding"], approved_trail["finding"]])
    dry = retention.prune(AuditStore(dsn), SETTINGS, r, apply=False, now=NOW)
    done = retention.prune(AuditStore(dsn), SETTINGS, r, apply=True, now=NOW)
    assert dry.counts == done.counts
    left = set().union(*ids(dsn).values())
    for made in (open_trail, asked_trail, approved_trail):
        assert set(made.values()) - {made["obs"]} <= left  # observations are no trail's
    assert not set(closed_trail.values()) & left
    assert orphans(dsn) == 0


def test_each_checks_newest_success_stays(dsn: str, r: redis.Redis) -> None:
    """A check's newest ok run stays however old (the dead-man's switch seeds from it)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        older = quiet_run(conn, 600, check="rare")
        newest = quiet_run(conn, 500, check="rare")
    result = retention.prune(AuditStore(dsn), SETTINGS, r, apply=True, now=NOW)
    assert result.counts["check_runs"] == 1
    left = ids(dsn)["check_runs"]
    assert newest in left and older not in left


def test_a_finding_a_queued_trigger_may_still_name_stays(dsn: str, r: redis.Redis) -> None:
    """With audit_days shorter than a trigger header's lifetime (7 days), a finding younger
    than that lifetime stays: an action queued when it was found may still be delivered and
    must be able to audit its decision against it."""
    short = RetentionSettings(audit_days=2, check_runs_days=1)
    with psycopg.connect(dsn, autocommit=True) as conn:
        queued = trail(conn, 3)  # found 3 days ago; its action still waits in the broker
        gone = trail(conn, 9)  # older than any header the worker would still accept
    store = AuditStore(dsn)
    dry = retention.prune(store, short, r, apply=False, now=NOW)
    done = retention.prune(store, short, r, apply=True, now=NOW)
    assert dry.counts == done.counts
    left = ids(dsn)
    assert queued["finding"] in left["findings"] and queued["run"] in left["check_runs"]
    assert gone["finding"] not in left["findings"] and gone["run"] not in left["check_runs"]
    store.add_decision(  # the queued action, delivered now
        action="a",
        target="t",
        resource="t",
        decision="admitted",
        finding_id=queued["finding"],
        task_id="late",
    )
    assert orphans(dsn) == 0


def test_batches_are_bounded(dsn: str, r: redis.Redis) -> None:
    """No DELETE removes more than batch_size rows; the rest take further batches."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO check_runs (id, check_name, target, status, started_at)"
            " SELECT g, 'c', 't', 'error', now() - interval '30 days' - g * interval '1 second'"
            " FROM generate_series(1, 350) g"
        )
    small = RetentionSettings(batch_size=100)
    result = retention.prune(AuditStore(dsn), small, r, apply=True, now=NOW)
    assert result.counts["check_runs"] == 350 and result.batches == 4
    assert result.largest_batch == 100


def test_nothing_is_pruned_while_the_spool_holds_records(
    dsn: str, r: redis.Redis, tmp_path: Path
) -> None:
    """A spool that still holds records stops the prune before it deletes anything."""
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    (spool / "host-1.jsonl").write_text('{"op": "observation"}\n')
    ages(dsn)
    before = counts(dsn)
    result = retention.prune(AuditStore(dsn, spool_dir=spool), SETTINGS, r, apply=True)
    assert result.skipped and "spool" in result.skipped
    assert counts(dsn) == before


def test_a_prune_that_deletes_is_audited(dsn: str, r: redis.Redis) -> None:
    """An applied prune leaves one 'maintenance' check run with its counts in params."""
    ages(dsn)
    retention.prune(AuditStore(dsn), SETTINGS, r, apply=True, now=NOW)
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT purpose, status, params FROM check_runs WHERE check_name = 'audit_prune'"
        ).fetchall()
    assert len(rows) == 1
    purpose, status, params = rows[0]
    assert (purpose, status) == ("maintenance", "ok")
    assert params["counts"]["findings"] == 1 and params["cutoffs"]["audit"]


def test_pruning_while_a_writer_writes_loses_nothing_that_should_stay(
    dsn: str, r: redis.Redis
) -> None:
    """Trails written through AuditStore during a prune of thousands of old rows all stay."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(30):
            trail(conn, 500)
        conn.execute(
            "INSERT INTO check_runs (id, check_name, target, status, started_at)"
            " SELECT g, 'c', 't', 'error', now() - interval '30 days' - g * interval '1 second'"
            " FROM generate_series(1, 6000) g"
        )
    store = AuditStore(dsn)
    written: list[dict[str, int]] = []
    stop = threading.Event()

    def writer() -> None:
        n = 0
        while not stop.is_set() or n < 20:
            written.append(write_trail(store, f"w-{n}"))
            n += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        result = retention.prune(
            store, RetentionSettings(batch_size=100), r, apply=True, now=datetime.now(UTC)
        )
    finally:
        stop.set()
        thread.join(60)
    assert result.counts["check_runs"] == 6000 + 60 and result.counts["findings"] == 30
    left = ids(dsn)
    for made in written:
        assert made["run"] in left["check_runs"] and made["finding"] in left["findings"]
        assert made["decision"] in left["guard_decisions"]
        assert made["action"] in left["action_runs"]
    assert len(left["observations"]) == len(written)
    assert orphans(dsn) == 0


def test_a_row_naming_a_batch_row_written_during_its_delete_keeps_that_row(
    dsn: str, r: redis.Redis
) -> None:
    """A decision naming an old finding, committed while the prune's DELETE waits for that
    finding (the decision's insert holds it), neither fails the prune nor loses the finding:
    the batch runs again and its predicate sees the decision."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        named = trail(conn, 500)
        other = trail(conn, 500)
    writer = psycopg.connect(dsn)  # e.g. another host replaying its spool
    late = _insert(
        writer,
        "guard_decisions",
        finding_id=named["finding"],
        action="a",
        target="t",
        resource="t",
        decision="admitted",
    )
    done: dict[str, Any] = {}

    def prune() -> None:
        try:
            done["result"] = retention.prune(AuditStore(dsn), SETTINGS, r, apply=True, now=NOW)
        except Exception as exc:  # what the test is about: reported, not raised in a thread
            done["error"] = exc

    thread = threading.Thread(target=prune)
    thread.start()
    with psycopg.connect(dsn) as watch:  # the DELETE of findings waits for the writer's lock
        waiting = (
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND datname = current_database()"
        )
        deadline = time.monotonic() + 20
        while watch.execute(waiting).fetchone() == (0,) and time.monotonic() < deadline:
            time.sleep(0.05)
    writer.commit()
    writer.close()
    thread.join(60)
    assert "error" not in done, done
    left = ids(dsn)
    assert named["finding"] in left["findings"] and late in left["guard_decisions"]
    assert other["finding"] not in left["findings"]
    assert orphans(dsn) == 0


def test_cli_db_prune_dry_run_then_apply(
    settings_env: Any, dsn: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`remediation db prune` counts and deletes nothing; with --apply it deletes as counted."""
    settings_env(REMEDIATION_AUDIT_DSN=dsn, REMEDIATION_AUDIT__SPOOL_DIR=str(tmp_path / "spool"))
    ages(dsn)
    before = counts(dsn)
    assert main(["--json", "db", "prune"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert counts(dsn) == before and dry["applied"] is False and dry["counts"]["findings"] == 1
    assert main(["db", "prune", "--apply"]) == 0
    out = capsys.readouterr().out
    assert "audit_prune" in out and "DELETED" in out.upper()
    assert before["findings"] - counts(dsn)["findings"] == 1


def test_beat_prunes_daily_only_when_enabled(settings_env: Any, dsn: str, tmp_path: Path) -> None:
    """The app puts remediation.audit.prune on beat daily when enabled, not when disabled;
    the task deletes what the retention lets go."""
    from remediation.celery_app import get_app
    from remediation.tasks import PRUNE_EVERY_SECONDS, PRUNE_TASK

    spool = str(tmp_path / "spool")
    settings_env(REMEDIATION_AUDIT_DSN=dsn, REMEDIATION_AUDIT__SPOOL_DIR=spool)
    get_app.cache_clear()
    try:
        app = get_app()
        every = app.conf.beat_schedule[PRUNE_TASK]["schedule"].run_every.total_seconds()
        assert every == PRUNE_EVERY_SECONDS == 86400
        ages(dsn)
        result = app.tasks[PRUNE_TASK]()
        assert result["applied"] and result["counts"]["findings"] == 1 and not result["skipped"]
        settings_env(
            REMEDIATION_AUDIT_DSN=dsn,
            REMEDIATION_AUDIT__SPOOL_DIR=spool,
            REMEDIATION_RETENTION__ENABLED="false",
        )
        get_app.cache_clear()
        assert PRUNE_TASK not in get_app().conf.beat_schedule
    finally:
        get_app.cache_clear()


def test_every_foreign_key_has_an_index_led_by_it(dsn: str) -> None:
    """Each audit foreign key column leads an index, so deleting a parent never scans a child."""
    with psycopg.connect(dsn) as conn:
        fks = conn.execute(
            "SELECT c.conrelid::regclass::text, a.attname FROM pg_constraint c"
            " JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]"
            " WHERE c.contype = 'f'"
        ).fetchall()
        led = set(
            conn.execute(
                "SELECT i.indrelid::regclass::text, a.attname FROM pg_index i"
                " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
            ).fetchall()
        )
    assert len(fks) == 5
    assert set(fks) <= led
