"""Settings: one model, REMEDIATION_ prefix, clear errors naming the variable."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from remediation.errors import ConfigError, TargetError
from remediation.settings import env_names, load_settings
from tests.support.env import clean_environ

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No REMEDIATION_ variables and no .env from the developer's machine."""
    import os

    for name in list(os.environ):
        if name.startswith("REMEDIATION_") and not name.startswith("REMEDIATION_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_env_example_lists_every_setting_and_nothing_else() -> None:
    """.env.example and the Settings model name the same variables."""
    names = set(env_names())
    text = (ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^#?\s*(REMEDIATION_[A-Z0-9_]+)=", text, re.M))
    # mapping entries (REMEDIATION_POSTGRES_TARGETS__APP) document a mapping, not a setting
    listed = {n for n in listed if n in names or n.rsplit("__", 1)[0] not in names}
    assert names - listed == set(), "settings missing from .env.example"
    assert listed - names == set(), ".env.example lists variables the settings do not read"


def test_env_example_loads_as_a_dotenv(tmp_path: Path) -> None:
    """Copied to .env unchanged, the example is a valid configuration."""
    (tmp_path / ".env").write_text((ROOT / ".env.example").read_text())
    s = load_settings()
    assert s.job_queue.key == "job_queue" and s.breaker.minimum_calls == 4


def test_nested_and_mapping_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """__ nests into sections; a mapping takes JSON or one key per variable."""
    monkeypatch.setenv("REMEDIATION_BREAKER__MINIMUM_CALLS", "7")
    monkeypatch.setenv("REMEDIATION_POSTGRES_TARGETS__APP", "postgresql://u:pw@h:5432/app")
    monkeypatch.setenv("REMEDIATION_REDIS_TARGETS", '{"cache": "redis://h:6379/3"}')
    s = load_settings()
    assert s.breaker.minimum_calls == 7
    assert s.postgres_dsn("app") == "postgresql://u:pw@h:5432/app"
    assert s.redis_url("cache") == "redis://h:6379/3"
    assert s.postgres_dsn("self") == s.audit_dsn.get_secret_value()
    assert "pw" not in repr(s)


@pytest.mark.parametrize(
    ("name", "value", "named"),
    [
        ("REMEDIATION_BREAKER__MINIMUM_CALLS", "zero", "REMEDIATION_BREAKER__MINIMUM_CALLS"),
        (
            "REMEDIATION_BREAKER__FAILURE_RATE_THRESHOLD",
            "1.5",
            "REMEDIATION_BREAKER__FAILURE_RATE_THRESHOLD",
        ),
        ("REMEDIATION_AUDIT_DSN", "mysql://x", "REMEDIATION_AUDIT_DSN"),
        ("REMEDIATION_BROKER_URL", "http://x", "REMEDIATION_BROKER_URL"),
        ("REMEDIATION_LOG_LEVEL", "LOUD", "REMEDIATION_LOG_LEVEL"),
        ("REMEDIATION_BROKR_URL", "redis://x", "REMEDIATION_BROKR_URL"),
        ("REMEDIATION_GUARDS__NOPE", "1", "REMEDIATION_GUARDS__NOPE"),
        ("REMEDIATION_POSTGRES__CONNECTIONS_HIGH_RATIO", "0.5", "connections bands must rise"),
        (
            "REMEDIATION_POSTGRES__POOL_SIZE",
            "10",
            "pool_size and pool_application_name go together",
        ),
        (
            "REMEDIATION_POSTGRES__DATA_QUALITY",
            '[{"name": "x"}]',
            "REMEDIATION_POSTGRES__DATA_QUALITY__0__SQL",
        ),
    ],
)
def test_invalid_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, named: str
) -> None:
    """A bad value or an unknown variable is an error naming that variable."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=re.escape(named)):
        load_settings()


def test_unknown_target_is_a_clear_error() -> None:
    """Asking for a target that is not configured names the variable to set."""
    with pytest.raises(TargetError, match="REMEDIATION_POSTGRES_TARGETS"):
        load_settings().postgres_dsn("nope")


def test_worker_refuses_to_start_on_bad_config(tmp_path: Path) -> None:
    """`celery -A remediation worker` exits at once with a message naming the variable."""

    env = clean_environ()
    env["REMEDIATION_BREAKER__MINIMUM_CALLS"] = "-1"
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "celery"), "-A", "remediation", "worker"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "REMEDIATION_BREAKER__MINIMUM_CALLS" in proc.stderr


def test_worker_refuses_to_start_without_a_signing_key() -> None:
    """Without REMEDIATION_SIGNING_KEY a worker cannot sign or verify trigger headers: it
    exits at once naming the variable and how to make one."""
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "celery"), "-A", "remediation", "worker"],
        cwd=ROOT,
        env=clean_environ(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "REMEDIATION_SIGNING_KEY: not set" in proc.stderr and "token_hex" in proc.stderr


def test_short_signing_key_is_refused() -> None:
    """A key shorter than 32 characters is a configuration error naming the variable."""
    with pytest.raises(ConfigError, match="REMEDIATION_SIGNING_KEY"):
        load_settings(signing_key="short")
