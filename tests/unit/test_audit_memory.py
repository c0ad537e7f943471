"""The in-memory audit store keeps the PostgreSQL store's rules: redaction, bounds, references."""

from __future__ import annotations

import pytest

from remediation.audit.memory import MemoryAuditStore
from remediation.audit.store import JSON_MAX_BYTES, TEXT_MAX
from remediation.errors import AuditError
from remediation.findings import Finding, Severity


def test_rows_need_what_they_reference() -> None:
    """A finding needs its check run, a decision its finding, an action run its decision:
    as the schema's foreign keys, a dangling reference is a refused write."""
    store = MemoryAuditStore()
    finding = Finding(check="c", target="t", kind="k_bad", severity=Severity.HIGH)
    with pytest.raises(AuditError):
        store.add_finding(404, finding, None)
    with pytest.raises(AuditError):
        store.add_decision(action="a", target="t", resource="t", decision="x", finding_id=404)
    with pytest.raises(AuditError):
        store.add_action_run(
            action="a", target="t", resource="t", params={}, outcome="failed", decision_id=404
        )
    run = store.start_check_run("c", "t", {}, "detect", None)
    found = store.add_finding(run, finding, "inc")
    decided = store.add_decision(
        action="a", target="t", resource="t", decision="admitted", finding_id=found
    )
    store.add_action_run(
        action="a",
        target="t",
        resource="t",
        params={},
        outcome="succeeded",
        decision_id=decided,
        finding_id=found,
    )
    assert [len(store.rows(t)) for t in ("check_runs", "findings", "action_runs")] == [1, 1, 1]


def test_values_are_redacted_and_bounded_as_in_postgres() -> None:
    """Secrets in texts and params are masked; long texts cut; huge params kept as a digest."""
    store = MemoryAuditStore()
    run_id = store.add_action_run(
        action="a",
        target="t",
        resource=None,
        outcome="failed",
        params={"password": "pw-1", "blob": "x" * (JSON_MAX_BYTES + 1)},
        error="could not reach postgresql://u:pw-2@db/x " + "y" * (2 * TEXT_MAX),
    )
    (row,) = store.rows("action_runs", id=run_id)
    assert "pw-1" not in str(row["params"]) and "x" * 1000 not in str(row["params"])
    assert "pw-2" not in row["error"] and len(row["error"]) <= TEXT_MAX


def test_last_observation_is_the_newest_of_its_metric() -> None:
    """Observations compare with the previous run: the newest of (check, target, metric)."""
    store = MemoryAuditStore()
    assert store.last_observation("c", "t", "m") is None
    for value in (1.0, 2.0):
        store.record_observation("c", "t", "m", value)
    store.record_observation("c", "t", "other", 9.0)
    last = store.last_observation("c", "t", "m")
    assert last is not None and last[0] == 2.0
