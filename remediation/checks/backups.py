"""Backup freshness and verification state (runbook 001 "Monthly Operations 2. Backup
Verification"; runbook 000 "4. Database Maintenance": a dump before major updates)."""

from __future__ import annotations

import re
from typing import Any

from remediation import backups, quarantine, signing
from remediation.context import CheckContext
from remediation.findings import Finding, Severity
from remediation.params import CheckParams
from remediation.registry import check

CHECK = "postgres_backups"
_STAMP = re.compile(r"(\d{8}T\d{6}Z)\.dump$")


class PostgresBackupsParams(CheckParams):
    """Which configured PostgreSQL target's backups to look at."""


@check(CHECK)
def postgres_backups(ctx: CheckContext, params: PostgresBackupsParams) -> list[Finding]:
    """Backups of a database: too old, not yet verified, or failed verification.

    Reads the manifests in REMEDIATION_BACKUP__DIR/<target>/ only, trusting only those whose
    HMAC matches REMEDIATION_SIGNING_KEY. Findings: postgres_backup_stale (high) when no
    backup younger than REMEDIATION_BACKUP__INTERVAL_HOURS is verified or still awaiting
    verification (a fresh dump that failed, or whose manifest is not authenticated, does
    not count); postgres_backup_unverified (warning) for a newest dump nobody verified yet;
    postgres_backup_failed (critical) when the newest dump failed verification or has no
    readable, authenticated manifest; postgres_backup_quarantined (high) for a dump that
    failed verification and was moved to <target>/quarantine/ while no newer dump is
    verified or awaiting verification (so a fresh one is taken at once)."""
    cfg, key = ctx.settings.backup, signing.key_of(ctx.settings)
    # an unconfigured target is an error, not "no backups"; APP and app are one folder
    target = ctx.settings.postgres_target(params.target)
    folder = backups.target_dir(cfg.dir, target)
    found = backups.list_backups(folder, target, key)
    at = backups.now()
    findings = [_newest_state(target, found[0], folder, at)] if found else []
    stale = _stale(target, found, folder, at, cfg.interval_hours)
    return [f for f in (stale, *findings, *_quarantined(target, found, folder)) if f is not None]


def _quarantined(target: str, found: list[backups.Backup], folder: Any) -> list[Finding]:
    """Quarantined dumps newer than every dump that is good or awaiting verification."""
    good = [b.taken_at for b in found if b.status in ("verified", "unverified")]
    newest_good = max(good, default=None)
    out = []
    for q in quarantine.listed(folder / backups.QUARANTINE):
        taken = backups.parse_stamp(m.group(1)) if (m := _STAMP.search(q.path.name)) else None
        if taken is None or (newest_good is not None and taken <= newest_good):
            continue
        out.append(
            Finding(
                check=CHECK,
                target=target,
                subject=q.path.name,
                kind="postgres_backup_quarantined",
                severity=Severity.HIGH,
                observed=str(q.note.get("failed_step", "?")),
                evidence={
                    "path": str(q.path),
                    "reason": q.reason,
                    "quarantined_at": q.at.isoformat(),
                },
                summary=(
                    f"{q.path.name} failed verification and was quarantined ({q.reason});"
                    " no newer good backup yet"
                ),
            )
        )
    return out


def _stale(
    target: str, found: list[backups.Backup], folder: Any, at: Any, interval: float
) -> Finding | None:
    fresh = [b for b in found if b.age_hours(at) < interval and b.status != "failed"]
    if any(b.status in ("verified", "unverified") for b in fresh):
        return None
    verified = next((b for b in found if b.status == "verified"), None)
    age = verified.age_hours(at) if verified else None
    what = f"the newest verified backup is {age} h old" if verified else "no verified backup"
    return Finding(
        check=CHECK,
        target=target,
        subject=target,
        kind="postgres_backup_stale",
        severity=Severity.HIGH,
        observed=age,
        threshold=interval,
        summary=f"{target}: {what} (interval {interval} h)" if found else f"{target}: no backup",
        evidence={
            "dir": str(folder),
            "backups": len(found),
            "newest": found[0].name if found else None,
            "newest_age_hours": found[0].age_hours(at) if found else None,
            "newest_verified": verified.name if verified else None,
            "newest_verified_age_hours": age,
        },
    )


def _newest_state(target: str, newest: backups.Backup, folder: Any, at: Any) -> Finding | None:
    evidence: dict[str, Any] = {
        "path": str(newest.path),
        "age_hours": newest.age_hours(at),
        "status": newest.status,
    }
    if newest.status == "verified":
        return None
    if newest.status == "unverified":
        return Finding(
            check=CHECK,
            target=target,
            subject=newest.name,
            kind="postgres_backup_unverified",
            severity=Severity.WARNING,
            observed=newest.age_hours(at),
            evidence=evidence,
            summary=f"{newest.name} has not been verified (restore test) yet",
        )
    verification = newest.verification or {}
    evidence |= {
        "failed_step": verification.get("failed_step", "manifest"),
        "message": verification.get("message", newest.error),
        "verified_at": verification.get("verified_at"),
    }
    return Finding(
        check=CHECK,
        target=target,
        subject=newest.name,
        kind="postgres_backup_failed",
        severity=Severity.CRITICAL,
        observed=evidence["failed_step"],
        evidence=evidence,
        summary=(
            f"{newest.name} failed verification at {evidence['failed_step']}: {evidence['message']}"
        ),
    )
