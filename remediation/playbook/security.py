"""Security rules (issue 13): leaked secrets, hostile clients, enhanced monitoring, API keys,
vulnerable dependencies, certificates and image updates (runbooks 001, 003, 004).

One list per procedure, in the order RULES takes them.
"""

from __future__ import annotations

from typing import Any

from remediation.findings import Finding, Severity
from remediation.playbook.rule import Rule, notify_params, state_self
from remediation.settings import get_settings


def _log_file(f: Finding) -> dict[str, Any]:
    return {"target": "self", "file": f.subject}


def _app_container(f: Finding) -> dict[str, Any]:
    return {"target": "docker", "container": f.subject}


def _has_app_container(f: Finding) -> bool:
    """REMEDIATION_SECRETS__APP_CONTAINER names the application's container."""
    return bool(get_settings().secrets.app_container)


SECRETS: list[Rule] = [
    Rule(
        "log_secret_leaked",
        "quarantine_log",
        _log_file,
        "004 Security Check Failures, IBKR FA Scrubbing Failure: if found, rotate logs immediately",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "log_secret_leaked",
        "notify",
        notify_params,
        "004 Security Check Failures: IBKR FA credentials potentially exposed",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "log_scrubbing_off",
        "enable_log_scrubbing",
        state_self,
        "004 Security Check Failures: enable FA scrubbing in configs/security.yaml",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "log_scrubbing_restart_due",
        "restart_container",
        _app_container,
        "004 Security Check Failures: restart services (after enabling FA scrubbing)",
        min_severity=Severity.HIGH,
        when=_has_app_container,
    ),
]
"""Secrets in log files (runbook 004 "Security Check Failures")."""


CLIENTS: list[Rule] = []
"""Hostile clients in access logs (runbooks 003 "Review access logs", 001 "Block suspicious IPs")."""


MONITORING: list[Rule] = []
"""Enhanced monitoring during an incident (runbook 001 "Security Incident Response")."""


KEYS: list[Rule] = []
"""API keys (runbooks 003 "Rotate API keys", 004 "API key validation failure")."""


DEPENDENCIES: list[Rule] = []
"""Vulnerable dependencies (runbooks 003 "Update dependencies", 004 "Dependency vulnerabilities")."""


CERTIFICATES: list[Rule] = []
"""TLS certificates (runbook 001 "Monthly Operations 1. Security Updates": certbot renew)."""


IMAGES: list[Rule] = []
"""Image updates (runbook 001 "Monthly Operations 1. Security Updates": pull, rebuild)."""
