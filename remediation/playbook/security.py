"""Security rules (issue 13): leaked secrets, hostile clients, enhanced monitoring, API keys,
vulnerable dependencies, certificates and image updates (runbooks 001, 003, 004).

One list per procedure, in the order RULES takes them.
"""

from __future__ import annotations

from typing import Any

from remediation.findings import Finding, Severity
from remediation.playbook.rule import Rule, notify_params

SECRETS: list[Rule] = []
"""Secrets in log files (runbook 004 "Security Check Failures")."""


CLIENTS: list[Rule] = []
"""Hostile clients in access logs (runbooks 003 "Review access logs", 001 "Block suspicious IPs")."""


MONITORING: list[Rule] = []
"""Enhanced monitoring during an incident (runbook 001 "Security Incident Response")."""


KEYS: list[Rule] = []
"""API keys (runbooks 003 "Rotate API keys", 004 "API key validation failure")."""


DEPENDENCIES: list[Rule] = [
    Rule(
        "dependency_vulnerable",
        "notify",
        notify_params,
        "004 Security Check Failures: Dependency Vulnerabilities (pip-audit; 003 Update"
        " Dependencies: safety check): review and apply security patches, test thoroughly"
        " before deploying to production, so a human upgrades (fixed versions in the message)",
    ),
    Rule(
        "dependency_scan_failed",
        "notify",
        notify_params,
        "004 Security Check Failures: Dependency Vulnerabilities: pip-audit could not run, so"
        " vulnerabilities are unknown (never reported as none)",
        min_severity=Severity.HIGH,
    ),
]
"""Vulnerable dependencies (runbooks 003 "Update dependencies", 004 "Dependency vulnerabilities")."""


def certificate(f: Finding) -> dict[str, Any]:
    """renew_certificate runs on the worker's own host for the configured certificate."""
    return {"target": "self", "certificate": f.subject}


CERTIFICATES: list[Rule] = [
    Rule(
        "certificate_expiring",
        "renew_certificate",
        certificate,
        "001 Monthly Operations 1. Security Updates: update SSL certificates if needed"
        " (certbot renew), when expiry is within the bands (30 / 14 / 7 days)",
    ),
    Rule(
        "certificate_expired",
        "renew_certificate",
        certificate,
        "001 Monthly Operations 1. Security Updates: certbot renew (expired)",
    ),
    Rule(
        "certificate_expiring",
        "notify",
        notify_params,
        "001 Monthly Operations 1. Security Updates: a certificate 14 days from expiry or closer",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "certificate_expired",
        "notify",
        notify_params,
        "001 Monthly Operations 1. Security Updates: an expired certificate",
    ),
    *(
        Rule(
            kind,
            "notify",
            notify_params,
            "001 Monthly Operations 1. Security Updates: a certificate renewal cannot fix"
            f" ({kind.removeprefix('certificate_').replace('_', ' ')})",
            min_severity=Severity.HIGH,
        )
        for kind in (
            "certificate_name_mismatch",
            "certificate_untrusted",
            "certificate_unreachable",
        )
    ),
]
"""TLS certificates (runbook 001 "Monthly Operations 1. Security Updates": certbot renew)."""


IMAGES: list[Rule] = []
"""Image updates (runbook 001 "Monthly Operations 1. Security Updates": pull, rebuild)."""
