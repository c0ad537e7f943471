"""Security rules (issue 13): leaked secrets, hostile clients, enhanced monitoring, API keys,
vulnerable dependencies, certificates and image updates (runbooks 001, 003, 004).

One list per procedure, in the order RULES takes them.
"""

from __future__ import annotations

from typing import Any

from remediation.findings import Finding, Severity
from remediation.playbook.rule import Rule, notify_params, state_self, target
from remediation.security.access_logs import parse_ip
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


def names_an_address(f: Finding) -> bool:
    """The finding's subject is one client address (the only thing block_ip bans)."""
    return parse_ip(f.subject) is not None


def ban_params(f: Finding) -> dict[str, Any]:
    """block_ip for the finding's client address, on behalf of the log that saw it."""
    return {"target": f.target, "ip": f.subject}


CLIENTS: list[Rule] = [
    Rule(
        "access_client_hostile",
        "block_ip",
        ban_params,
        "001 Security Incident Response: 1. block suspicious IPs, update firewall rules"
        " (003 Security Procedures: review access logs, 401/403/429)",
        when=names_an_address,
    ),
    Rule(
        "access_log_unreadable",
        "notify",
        notify_params,
        "003 Security Procedures: review access logs (the log cannot be read)",
    ),
    Rule(
        "access_hostile_surge",
        "notify",
        notify_params,
        "001 Security Incident Response: many hostile clients at once (investigate, document)",
        min_severity=Severity.HIGH,
    ),
]
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
