"""The security rules (issue 13): enhanced monitoring follows a surge of hostile clients and
nothing else, never a secret leak; API key rotation only for keys configured rotatable."""

from __future__ import annotations

import json
from typing import Any

import pytest

from remediation import playbook
from remediation.findings import Finding, Severity
from remediation.playbook import security
from remediation.settings import get_settings

LOG_LEVEL_ACTIONS = {"raise_log_level", "restore_log_level"}


@pytest.fixture
def configured(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Settings with one monitored application ("shop") and two keys, one rotatable."""
    monkeypatch.setenv(
        "REMEDIATION_MONITORING__APPS", json.dumps([{"name": "shop", "redis_key": "shop:lvl"}])
    )
    keys = [
        {
            "name": "auto",
            "file": "/run/secrets/auto",
            "validate_url": "http://127.0.0.1:1/v",
            "rotatable": True,
            "generate_command": ["gen"],
            "revoke_command": ["rev"],
        },
        {"name": "manual", "env": "SOME_API_KEY"},
    ]
    monkeypatch.setenv("REMEDIATION_API_KEYS__KEYS", json.dumps(keys))
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def finding(kind: str, target: str = "shop", severity: str = "critical") -> Finding:
    return Finding(check="c", target=target, kind=kind, severity=severity)


def test_only_a_hostile_surge_raises_the_log_level(configured: Any) -> None:
    """Of every rule in the playbook, the only one that runs raise_log_level is the one for
    access_hostile_surge (restore_log_level only follows log_level_expired)."""
    raising = [r.kind for r in playbook.RULES if r.action == "raise_log_level"]
    assert raising == ["access_hostile_surge"]
    restoring = [r.kind for r in playbook.RULES if r.action == "restore_log_level"]
    assert restoring == ["log_level_expired"]


def test_a_secret_leak_never_changes_a_log_level(configured: Any) -> None:
    """log_secret_leaked at every severity, on a monitored application, triggers no log-level
    action: a louder log would write more of the secret."""
    for severity in Severity:
        rules = playbook.rules_for(finding("log_secret_leaked", "shop", severity.value))
        assert not {r.action for r in rules} & LOG_LEVEL_ACTIONS


def test_a_surge_raises_the_level_of_a_monitored_application_only(configured: Any) -> None:
    """A high surge on the access log named like a configured application raises its level
    (params: that name); a warning surge, or one on another log, does not."""
    (rule,) = [
        r
        for r in playbook.rules_for(finding("access_hostile_surge", "shop", "high"))
        if r.action in LOG_LEVEL_ACTIONS
    ]
    assert rule.params(finding("access_hostile_surge", "shop", "high")) == {"target": "shop"}
    assert rule in security.MONITORING
    warning = playbook.rules_for(finding("access_hostile_surge", "shop", "warning"))
    other = playbook.rules_for(finding("access_hostile_surge", "nginx", "high"))
    assert not {r.action for r in warning + other} & LOG_LEVEL_ACTIONS


def test_rotation_due_rotates_only_rotatable_keys(configured: Any) -> None:
    """A rotatable key's rotation_due runs rotate_api_key; another key's only notifies."""
    auto = playbook.rules_for(finding("api_key_rotation_due", "auto", "warning"))
    manual = playbook.rules_for(finding("api_key_rotation_due", "manual", "warning"))
    assert [r.action for r in auto] == ["rotate_api_key"]
    assert auto[0].params(finding("api_key_rotation_due", "auto")) == {"target": "auto"}
    assert [r.action for r in manual] == ["notify"]
    for kind in ("api_key_missing", "api_key_invalid", "api_key_unverifiable"):
        assert [r.action for r in playbook.rules_for(finding(kind, "auto"))] == ["notify"]
