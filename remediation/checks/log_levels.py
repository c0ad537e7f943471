"""Enhanced monitoring (runbook 001 "Security Incident Response 3. Enable enhanced
monitoring"): raised log levels whose time is up, so the file is put back as it was.

A level raised through a Redis key reverts by itself (the key has a TTL); one raised in an
application's configuration file is recorded in the state Redis, and this check reports it
once due: log_level_expired, which restore_log_level undoes.
"""

from __future__ import annotations

import time

from remediation.context import CheckContext
from remediation.findings import Finding, Severity
from remediation.params import CheckParams
from remediation.registry import check
from remediation.security import log_levels


class LogLevelExpiryParams(CheckParams):
    """Records come from the state Redis (rem:loglevel:*, written by raise_log_level)."""


@check("log_level_expiry")
def log_level_expiry(ctx: CheckContext, params: LogLevelExpiryParams) -> list[Finding]:
    """Log levels raise_log_level raised in an application's file whose time is up
    (runbook 001 "Enable enhanced monitoring", reverted after the incident).

    One log_level_expired (info) per application whose record in the state Redis is past
    its expires_at; restore_log_level puts the file's previous value back. A level raised
    through the application's Redis key needs nothing: the key expires by itself."""
    now, findings = time.time(), []
    for app in log_levels.recorded_apps(ctx.state):
        record = log_levels.read_record(ctx.state, app)
        if not record or log_levels.expires_at(record) > now:
            continue
        findings.append(
            Finding(
                check="log_level_expiry",
                target=app,
                kind="log_level_expired",
                severity=Severity.INFO,
                observed=record.get("level"),
                threshold=record.get("previous") or None,
                evidence={k: record.get(k) for k in ("file", "file_key", "expires_at", "by")},
                summary=f"{app}: raised log level {record.get('level')} is due to be restored",
            )
        )
    return findings
