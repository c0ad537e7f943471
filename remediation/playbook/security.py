"""Security rules (issue 13): leaked secrets, hostile clients, enhanced monitoring, API keys,
vulnerable dependencies, certificates and image updates (runbooks 001, 003, 004).

One list per procedure, in the order RULES takes them.
"""

from __future__ import annotations

from remediation.findings import Finding, Severity
from remediation.playbook.rule import Rule, notify_params, target
from remediation.settings import get_settings

SECRETS: list[Rule] = []
"""Secrets in log files (runbook 004 "Security Check Failures")."""


CLIENTS: list[Rule] = []
"""Hostile clients in access logs (runbooks 003 "Review access logs", 001 "Block suspicious IPs")."""


def monitored_app(f: Finding) -> bool:
    """The surge's access log names an application of REMEDIATION_MONITORING__APPS."""
    return get_settings().monitoring.app(f.target) is not None


def rotatable_key(f: Finding) -> bool:
    """The key is configured rotatable (REMEDIATION_API_KEYS__KEYS: rotatable=true)."""
    key = get_settings().api_keys.key(f.target)
    return key is not None and key.rotatable


def manual_key(f: Finding) -> bool:
    return not rotatable_key(f)


MONITORING: list[Rule] = [
    Rule(
        "access_hostile_surge",
        "raise_log_level",
        target,
        "001 Security Incident Response 3. Enable enhanced monitoring: increase log level",
        min_severity=Severity.HIGH,
        when=monitored_app,
    ),
    Rule(
        "log_level_expired",
        "restore_log_level",
        target,
        "001 Security Incident Response 3. Enhanced monitoring ends: log level restored",
        min_severity=Severity.INFO,
    ),
]
"""Enhanced monitoring during an incident (runbook 001 "Security Incident Response")."""


KEYS: list[Rule] = [
    Rule(
        "api_key_missing",
        "notify",
        notify_params,
        "004 API Key Validation Failure: check which keys are missing; set missing keys",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "api_key_invalid",
        "notify",
        notify_params,
        "004 API Key Validation Failure: the key is refused (401/403); set a valid key",
        min_severity=Severity.HIGH,
    ),
    Rule(
        "api_key_unverifiable",
        "notify",
        notify_params,
        "004 API Key Validation Failure: the validation request itself fails",
    ),
    Rule(
        "api_key_rotation_due",
        "rotate_api_key",
        target,
        "003 Rotate API Keys: generate, update, test, revoke (monthly: review and rotate)",
        when=rotatable_key,
    ),
    Rule(
        "api_key_rotation_due",
        "notify",
        notify_params,
        "003 Monthly: review and rotate API keys (by hand; then `remediation keys rotated`)",
        when=manual_key,
    ),
    Rule(
        "api_key_age_unknown",
        "notify",
        notify_params,
        "003 Monthly: review and rotate API keys (no rotation on record)",
    ),
]
"""API keys (runbooks 003 "Rotate API keys", 004 "API key validation failure")."""


DEPENDENCIES: list[Rule] = []
"""Vulnerable dependencies (runbooks 003 "Update dependencies", 004 "Dependency vulnerabilities")."""


CERTIFICATES: list[Rule] = []
"""TLS certificates (runbook 001 "Monthly Operations 1. Security Updates": certbot renew)."""


IMAGES: list[Rule] = []
"""Image updates (runbook 001 "Monthly Operations 1. Security Updates": pull, rebuild)."""
