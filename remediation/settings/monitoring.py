"""Enhanced monitoring during an incident: a log level raised with expiry (runbook 001 "Security Incident Response")."""

from __future__ import annotations

from remediation.settings.base import Section


class MonitoringSettings(Section):
    """Enhanced monitoring during an incident: a log level raised with expiry (runbook 001 "Security Incident Response")."""
