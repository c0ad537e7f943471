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


DEPENDENCIES: list[Rule] = []
"""Vulnerable dependencies (runbooks 003 "Update dependencies", 004 "Dependency vulnerabilities")."""


CERTIFICATES: list[Rule] = []
"""TLS certificates (runbook 001 "Monthly Operations 1. Security Updates": certbot renew)."""


def due_services(f: Finding) -> dict[str, Any]:
    """update_images for the services the image_updates check found due."""
    return {"target": "docker", "services": list(f.evidence.get("services") or {})[:32]}


IMAGES: list[Rule] = [
    Rule(
        "image_update_due",
        "update_images",
        due_services,
        "001 Monthly Operations 1. Security Updates: docker-compose pull; docker-compose up -d"
        " --build",
        min_severity=Severity.INFO,
    ),
    Rule(
        "image_service_missing",
        "notify",
        notify_params,
        "001 Monthly Operations 1. Security Updates: a configured service has no container",
    ),
]
"""Image updates (runbook 001 "Monthly Operations 1. Security Updates": pull, rebuild)."""
