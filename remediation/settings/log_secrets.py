"""Secrets leaked into log files (runbook 004 "Security Check Failures": FA account ids in logs)."""

from __future__ import annotations

from remediation.settings.base import Section


class LogSecretsSettings(Section):
    """Secrets leaked into log files (runbook 004 "Security Check Failures": FA account ids in logs)."""
