"""The pure parts of audit retention: cutoffs from the settings, their validation, order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from remediation.audit import retention
from remediation.settings.retention import RetentionSettings


def test_cutoffs_are_now_minus_each_retention() -> None:
    """Each cutoff is the fixed start time minus its setting's days."""
    now = datetime(2026, 11, 28, tzinfo=UTC)
    cut = retention.Cutoffs.of(
        RetentionSettings(check_runs_days=14, audit_days=400, observations_days=30), now
    )
    assert cut.check_runs == now - timedelta(days=14)
    assert cut.audit == now - timedelta(days=400)
    assert cut.observations == now - timedelta(days=30)
    assert cut.findings == cut.audit


def test_findings_a_trigger_may_still_name_outlive_a_short_audit_retention() -> None:
    """With audit_days shorter than the trigger reach, findings keep to the reach (8 days);
    decisions and action runs keep to audit_days."""
    now = datetime(2026, 11, 28, tzinfo=UTC)
    cut = retention.Cutoffs.of(RetentionSettings(check_runs_days=1, audit_days=2), now)
    assert cut.audit == now - timedelta(days=2)
    assert cut.findings == now - retention.TRIGGER_REACH == now - timedelta(days=8)


def test_settings_refuse_quiet_runs_kept_longer_than_the_audit_and_unbounded_batches() -> None:
    """check_runs_days above audit_days, and batches outside 100-50,000, are refused."""
    with pytest.raises(ValidationError, match="check_runs_days"):
        RetentionSettings(check_runs_days=500, audit_days=400)
    with pytest.raises(ValidationError):
        RetentionSettings(batch_size=1_000_000)
    with pytest.raises(ValidationError):
        RetentionSettings(batch_size=0)


def test_children_are_deleted_before_their_parents() -> None:
    """The deletion order puts every referencing table before the table it references."""
    order = {t: i for i, t in enumerate(retention.TABLES)}
    for child, parent in [
        ("action_runs", "guard_decisions"),
        ("action_runs", "findings"),
        ("action_runs", "check_runs"),
        ("guard_decisions", "findings"),
        ("findings", "check_runs"),
    ]:
        assert order[child] < order[parent]
    assert set(retention.WHAT_GOES) == set(retention.TABLES)
