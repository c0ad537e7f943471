"""Backup rules: a stale, unverified or rotten dump (runbooks 000, 001)."""

from __future__ import annotations

from remediation.findings import Severity
from remediation.playbook.rule import Rule, dump_file, notify_params, target

RULES: list[Rule] = [
    Rule(
        "postgres_backup_stale",
        "backup_database",
        target,
        "000 4. Database Maintenance: pg_dump backup; 001 Scheduled Maintenance: backup database",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "postgres_backup_unverified",
        "verify_backup",
        dump_file,
        "001 Monthly Operations 2. Backup Verification: test restoration, validate integrity",
    ),
    Rule(
        "postgres_backup_quarantined",
        "backup_database",
        target,
        "001 Monthly Operations 2. Backup Verification: a rotten dump is replaced at once",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "postgres_backup_failed",
        "notify",
        notify_params,
        "001 Monthly Operations 2. Backup Verification: a dump that does not restore",
        min_severity=Severity.CRITICAL,
    ),
]
