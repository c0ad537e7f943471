"""api_keys against a real HTTP API on 127.0.0.1 and a real Redis: missing, invalid, cannot
tell, rotation due by file age or recorded rotation; never a key value in a finding."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from remediation.checks.api_keys import ApiKeysParams, api_keys
from remediation.context import CheckContext
from remediation.findings import Finding
from remediation.guards.keys import API_KEY_ROTATIONS
from remediation.logging import get_logger
from tests.support.key_api import KeyApi

GOOD = "good-key-0123456789abcdef"
BAD = "bad-key-0123456789abcdef"


@pytest.fixture
def api() -> Iterator[KeyApi]:
    server = KeyApi(GOOD)
    yield server
    server.stop()


def run(settings: Any, **params: Any) -> list[Finding]:
    return api_keys(CheckContext(settings, get_logger()), ApiKeysParams(**params))


def configure(settings_env: Any, *keys: dict[str, Any]) -> Any:
    return settings_env(REMEDIATION_API_KEYS__KEYS=json.dumps(list(keys)))


def kinds(findings: list[Finding]) -> dict[str, str]:
    return {f.target: f.kind for f in findings}


def test_missing_variable_file_and_empty_file_are_missing(
    settings_env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unset variable, an absent file and an empty file are each api_key_missing, high."""
    monkeypatch.delenv("REM_TEST_UNSET_KEY", raising=False)
    (tmp_path / "empty").write_text("\n")
    s = configure(
        settings_env,
        {"name": "groq", "env": "REM_TEST_UNSET_KEY"},
        {"name": "etherscan", "file": str(tmp_path / "absent")},
        {"name": "blank", "file": str(tmp_path / "empty")},
    )
    found = run(s)
    assert kinds(found) == {n: "api_key_missing" for n in ("groq", "etherscan", "blank")}
    assert {f.severity for f in found} == {"high"}
    assert "REM_TEST_UNSET_KEY" in found[0].summary


def test_valid_invalid_and_cannot_tell(
    settings_env: Any, api: KeyApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The accepted key has no finding; a refused one is invalid (401); a 500 and a closed
    port are 'cannot validate', not invalid; no key value appears in any finding."""
    monkeypatch.setenv("REM_TEST_GOOD", GOOD)
    monkeypatch.setenv("REM_TEST_BAD", BAD)
    url = api.url("validate")
    s = configure(
        settings_env,
        {"name": "good", "env": "REM_TEST_GOOD", "validate_url": url, "max_age_days": None},
        {"name": "bad", "env": "REM_TEST_BAD", "validate_url": url, "max_age_days": None},
        {
            "name": "nowhere",
            "env": "REM_TEST_GOOD",
            "validate_url": "http://127.0.0.1:1/validate",
            "max_age_days": None,
        },
    )
    found = run(s)
    assert kinds(found) == {"bad": "api_key_invalid", "nowhere": "api_key_unverifiable"}
    assert next(f for f in found if f.target == "bad").observed == 401
    api.validate_status = 500
    assert kinds(run(s, keys=["good"])) == {"good": "api_key_unverifiable"}
    text = json.dumps([f.model_dump(mode="json") for f in found])
    assert GOOD not in text and BAD not in text
    assert ("validate", GOOD) in api.log and ("validate", BAD) in api.log


def test_rotation_due_from_the_file_age_and_a_recorded_rotation(
    settings_env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 40-day-old secret file with a 30-day limit is due; a rotation recorded since makes it
    young; a variable without any record is api_key_age_unknown."""
    key_file = tmp_path / "key"
    key_file.write_text(GOOD + "\n")
    old = time.time() - 40 * 86400
    os.utime(key_file, (old, old))
    monkeypatch.setenv("REM_TEST_GOOD", GOOD)
    s = configure(
        settings_env,
        {"name": "filed", "file": str(key_file), "max_age_days": 30},
        {"name": "env", "env": "REM_TEST_GOOD", "max_age_days": 30},
    )
    found = run(s)
    assert kinds(found) == {"filed": "api_key_rotation_due", "env": "api_key_age_unknown"}
    due = next(f for f in found if f.target == "filed")
    assert 39.9 < float(due.observed or 0) < 40.1 and due.threshold == 30
    state = redis.Redis.from_url(s.state_redis_url.get_secret_value())
    state.hset(API_KEY_ROTATIONS, mapping={"filed": time.time(), "env": time.time()})
    assert run(s) == []


def test_missing_keys_are_still_reported_while_the_state_redis_is_down(
    settings_env: Any, tmp_path: Path
) -> None:
    """With the state Redis on a closed port, a missing key is still api_key_missing and no
    age is judged (no false api_key_age_unknown or rotation_due)."""
    old = tmp_path / "old"
    old.write_text(GOOD)
    os.utime(old, (0, 0))
    s = settings_env(
        REMEDIATION_API_KEYS__KEYS=json.dumps(
            [{"name": "gone", "file": str(tmp_path / "absent")}, {"name": "old", "file": str(old)}]
        ),
        REMEDIATION_STATE_REDIS_URL="redis://127.0.0.1:1/0",
    )
    assert kinds(run(s)) == {"gone": "api_key_missing"}
