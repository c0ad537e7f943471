"""postgres_backups: stale, unverified and failed backups, from the manifests on disk."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from remediation import backups
from remediation.actions.backups import BackupDatabaseParams, backup_database
from remediation.actions.verify_backup import VerifyBackupParams, verify_backup
from remediation.checks.backups import PostgresBackupsParams, postgres_backups
from remediation.context import ActionContext, CheckContext
from remediation.errors import TargetError
from remediation.logging import get_logger
from tests.support.backups import fill, write_backup


@pytest.fixture
def settings(settings_env: Any, target_db: str, tmp_path: Path) -> Any:
    return settings_env(
        REMEDIATION_POSTGRES_TARGETS__APP=target_db,
        REMEDIATION_BACKUP__DIR=str(tmp_path),
        REMEDIATION_BACKUP__INTERVAL_HOURS="24",
    )


def run(settings: Any, target: str = "app") -> dict[str, Any]:
    found = postgres_backups(
        CheckContext(settings, get_logger()), PostgresBackupsParams(target=target)
    )
    return {f.kind: f for f in found}


def ago(hours: float) -> Any:
    return backups.now() - timedelta(hours=hours)


def test_no_backup_at_all_is_stale(settings: Any, tmp_path: Path) -> None:
    """An empty (even missing) backup folder is one high finding about the target."""
    found = run(settings)
    assert list(found) == ["postgres_backup_stale"]
    stale = found["postgres_backup_stale"]
    assert (stale.severity.value, stale.subject, stale.observed) == ("high", "app", None)
    assert stale.evidence["dir"] == str(tmp_path / "app") and stale.evidence["backups"] == 0


def test_fresh_verified_backup_is_fine(settings: Any, tmp_path: Path) -> None:
    """A verified backup younger than the interval gives no finding."""
    write_backup(tmp_path / "app", ago(2), "verified")
    assert run(settings) == {}


def test_old_verified_backup_is_stale(settings: Any, tmp_path: Path) -> None:
    """The newest verified backup older than the interval is stale, with its age as evidence."""
    dump = write_backup(tmp_path / "app", ago(30), "verified")
    stale = run(settings)["postgres_backup_stale"]
    assert stale.evidence["newest_verified"] == dump.name
    assert 29.9 < stale.observed < 30.1 and stale.threshold == 24


def test_newest_unverified_backup_is_a_warning_not_stale(settings: Any, tmp_path: Path) -> None:
    """A fresh dump awaiting verification is a warning naming the file; it is not stale."""
    write_backup(tmp_path / "app", ago(50), "verified")
    dump = write_backup(tmp_path / "app", ago(1))
    found = run(settings)
    assert list(found) == ["postgres_backup_unverified"]
    unverified = found["postgres_backup_unverified"]
    assert (unverified.severity.value, unverified.subject) == ("warning", dump.name)
    assert unverified.evidence["path"] == str(dump)


def test_newest_failed_backup_is_critical_and_stale(settings: Any, tmp_path: Path) -> None:
    """A fresh dump that failed verification is critical, and leaves the target stale."""
    write_backup(tmp_path / "app", ago(50), "verified")
    dump = write_backup(tmp_path / "app", ago(1), "failed")
    found = run(settings)
    assert sorted(found) == ["postgres_backup_failed", "postgres_backup_stale"]
    failed = found["postgres_backup_failed"]
    assert (failed.severity.value, failed.subject, failed.observed) == (
        "critical",
        dump.name,
        "restore",
    )
    assert failed.evidence["message"] == "boom"


def test_unreadable_manifest_is_a_failed_backup(settings: Any, tmp_path: Path) -> None:
    """A newest dump whose manifest is not JSON is critical at the manifest step."""
    dump = write_backup(tmp_path / "app", ago(1))
    backups.manifest_path(dump).write_text("{not json")
    failed = run(settings)["postgres_backup_failed"]
    assert failed.observed == "manifest" and "unreadable" in failed.evidence["message"]


@pytest.mark.parametrize("forger", [None, b"another-key-" * 3])
def test_unauthenticated_manifest_is_not_a_verified_backup(
    settings: Any, tmp_path: Path, forger: bytes | None
) -> None:
    """A fresh dump whose manifest claims a passed verification without our mac (none, or
    another key's) is critical at the manifest step and does not keep the target fresh:
    the older authenticated verified backup is the newest verified one."""
    genuine = write_backup(tmp_path / "app", ago(50), "verified")
    forged = write_backup(tmp_path / "app", ago(1), "verified", key=forger)
    found = run(settings)
    assert sorted(found) == ["postgres_backup_failed", "postgres_backup_stale"]
    failed = found["postgres_backup_failed"]
    assert (failed.subject, failed.observed) == (forged.name, "manifest")
    assert "is not authenticated" in failed.evidence["message"]
    assert found["postgres_backup_stale"].evidence["newest_verified"] == genuine.name


def test_case_variants_of_the_target_read_the_same_folder(settings: Any, tmp_path: Path) -> None:
    """ "APP" and "app" are one configured target: the same backups, the same findings."""
    dump = write_backup(tmp_path / "app", ago(1))
    for spelling in ("APP", "aPp", "app"):
        (unverified,) = run(settings, spelling).values()
        assert (unverified.target, unverified.subject) == ("app", dump.name)


def test_unconfigured_target_is_an_error(settings: Any) -> None:
    """A target that is not configured raises instead of reporting 'no backups'."""
    with pytest.raises(TargetError):
        postgres_backups(CheckContext(settings, get_logger()), PostgresBackupsParams(target="nope"))


def test_real_backup_goes_from_stale_to_unverified_to_fine(settings: Any, target_db: str) -> None:
    """backup_database clears stale (leaving unverified), verify_backup clears unverified."""
    fill(target_db, {"t": 50})
    ctx = ActionContext(settings, get_logger())
    assert list(run(settings)) == ["postgres_backup_stale"]
    assert backup_database(ctx, BackupDatabaseParams(target="app")).ok
    assert list(run(settings)) == ["postgres_backup_unverified"]
    assert verify_backup(ctx, VerifyBackupParams(target="app")).ok
    assert run(settings) == {}


def test_a_quarantined_dump_newer_than_every_good_one_asks_for_a_fresh_dump(
    settings: Any, tmp_path: Path
) -> None:
    """A dump quarantined after failing verification is postgres_backup_quarantined while no
    newer dump is verified or awaiting verification; once one is, the finding is gone."""
    from remediation import quarantine

    folder = tmp_path / "app"
    good = write_backup(folder, ago(30), "verified")
    rotten = write_backup(folder, ago(2), "verified")
    into = quarantine.folder(folder, backups.QUARANTINE)
    reason = "checksum step failed"
    quarantine.move_aside(
        [rotten, backups.manifest_path(rotten)], into, reason, failed_step="checksum"
    )
    found = run(settings)
    q = found["postgres_backup_quarantined"]
    assert (q.subject, q.observed, q.evidence["reason"]) == (rotten.name, "checksum", reason)
    assert q.severity.value == "high" and good.exists()
    write_backup(folder, ago(0.1), "unverified")  # a fresh dump awaiting verification
    assert "postgres_backup_quarantined" not in run(settings)
