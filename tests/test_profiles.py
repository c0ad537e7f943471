"""examples/*/: the five runbook profiles load as the worker and beat would load them, so none rots.

Each profile is a folder with profile.env (REMEDIATION_* variables in dotenv syntax, each
commented with the runbook step it serves), schedule.py (SCHEDULE for beat) and README.md.
No service is needed: settings and schedule are validated, nothing connects.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from dotenv import dotenv_values

from remediation.schedule import load_schedule
from remediation.settings import Settings, env_names, load_settings

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
FOLDERS = sorted(
    p.name for p in EXAMPLES.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))
)
RUNBOOKS = 5  # ../shared/runbooks/000..004: one profile each

# What a schedule entry's "target" kwarg names, by task. A task a profile schedules that is in
# none of these sets fails the test: classify it here first.
POSTGRES_TASKS = {
    "remediation.check.postgres_connections",
    "remediation.check.postgres_sessions",
    "remediation.check.postgres_slow_queries",
    "remediation.check.postgres_data_quality",
    "remediation.check.postgres_database_size",
    "remediation.check.postgres_backups",
    "remediation.check.postgres_dead_tuples",
    "remediation.check.postgres_unused_indexes",
    "remediation.act.verify_backup",
    "remediation.act.backup_database",
}
REDIS_TASKS = {
    "remediation.check.redis_job_queue",
    "remediation.check.redis_cache",
    "remediation.check.proxy_pool_health",
    "remediation.check.scrape_backoff",
    "remediation.check.api_rate_limits",
}
# Checks whose data sits on the one Redis a setting names (their actions refuse any other).
REDIS_OF_SETTING = {
    "remediation.check.proxy_pool_health": "proxies",
    "remediation.check.scrape_backoff": "backoff",
    "remediation.check.api_rate_limits": "rate_limits",
}
# The target is a label (findings' target) or "self"; what they read comes from settings.
LABEL_TASKS = {
    "remediation.check.prometheus_slo",
    "remediation.check.http_endpoints",
    "remediation.check.docker_containers",
    "remediation.check.celery_workers",
    "remediation.check.celery_queues",
    "remediation.check.celery_stuck_tasks",
    "remediation.check.celery_paused_queues",
    "remediation.check.host_disk",
    "remediation.check.host_memory",
    "remediation.check.access_log_clients",
    "remediation.check.image_updates",
    "remediation.check.python_dependencies",
    "remediation.check.tls_certificates",
    "remediation.check.log_level_expiry",
    "remediation.check.api_keys",
    "remediation.check.log_secrets",
    "remediation.act.backup_files",
}
_ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=")
_URL = re.compile(r"[a-z][a-z0-9+.\-]*://[^\s\"']+")


def profile_env(folder: str) -> Path:
    return EXAMPLES / folder / "profile.env"


def read_profile(folder: str) -> dict[str, str]:
    """The variables of a profile as python-dotenv (pydantic-settings' .env reader) reads them."""
    values = dotenv_values(profile_env(folder), interpolate=False)
    assert all(v is not None for v in values.values()), f"{folder}: a variable without '='"
    return {k: v for k, v in values.items() if v is not None}


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    """No REMEDIATION_* variable of the caller's and no .env file can leak into Settings."""
    for name in list(os.environ):
        if name.startswith("REMEDIATION_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield monkeypatch


def settings_of(folder: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings built from the profile's values only (as after `set -a; . profile.env`)."""
    for key, value in read_profile(folder).items():
        monkeypatch.setenv(key, value)
    return load_settings(_env_file=None)


def test_there_is_one_profile_per_runbook() -> None:
    """examples/ holds exactly one folder per runbook system, so a deleted profile fails."""
    assert len(FOLDERS) == RUNBOOKS, FOLDERS
    assert (EXAMPLES / "__init__.py").is_file()
    served = []
    for folder in FOLDERS:
        first = profile_env(folder).read_text().splitlines()[0]
        match = re.match(r"# Profile: .* of runbook (00[0-4]) ", first)
        assert match, f"{folder}/profile.env: the first line names no runbook: {first!r}"
        served.append(match.group(1))
    assert sorted(served) == [f"{n:03d}" for n in range(RUNBOOKS)], served


@pytest.mark.parametrize("folder", FOLDERS)
def test_profile_settings_validate(folder: str, isolated: pytest.MonkeyPatch) -> None:
    """Every variable of the profile is a known setting and the whole profile validates."""
    values = read_profile(folder)
    assert values, f"{folder}: profile.env sets nothing"
    known = set(env_names())
    unknown = sorted(k for k in values if k not in known)
    assert not unknown, f"{folder}: not settings (typos are silently ignored): {unknown}"
    settings = settings_of(folder, isolated)  # raises ConfigError naming the variable
    # Values that name a Redis must name one the profile configures (or the state Redis).
    for section in ("proxies", "backoff", "headers", "rate_limits"):
        settings.redis_target(getattr(settings, section).redis_target)
    for app in settings.monitoring.apps:
        settings.redis_target(app.redis_target)


@pytest.mark.parametrize("folder", FOLDERS)
def test_every_variable_cites_its_runbook(folder: str) -> None:
    """Each assignment follows a comment block naming the runbook ("runbook 00N") it serves."""
    block: list[str] = []
    seen = []
    for number, line in enumerate(profile_env(folder).read_text().splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("#"):
            block.append(stripped)
            continue
        match = _ASSIGNMENT.match(stripped)
        if match:
            assert re.search(r"runbook 00[0-4]", " ".join(block)), (
                f"{folder}/profile.env:{number}: {match.group(1)} has no runbook comment above"
            )
            seen.append(match.group(1))
        else:
            assert not stripped, f"{folder}/profile.env:{number}: not KEY=value nor a comment"
        block = []
    assert sorted(seen) == sorted(read_profile(folder)), f"{folder}: parsers disagree"
    assert len(seen) == len(set(seen)), f"{folder}: a variable is set twice"


@pytest.mark.parametrize("folder", FOLDERS)
def test_profile_holds_no_password(folder: str) -> None:
    """No URL or DSN a profile sets carries a password: secrets come from .pgpass or the env."""
    urls = [url for value in read_profile(folder).values() for url in _URL.findall(value)]
    assert urls, f"{folder}: no URL at all"
    for url in urls:
        assert urlsplit(url).password is None, f"{folder}: a password in {url.split('@')[-1]}"


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
@pytest.mark.parametrize("folder", FOLDERS)
def test_bash_reads_what_the_worker_reads(folder: str) -> None:
    """`set -a; . profile.env` in bash exports exactly the values python-dotenv reads."""
    script = 'set -a; . "$1"; set +a; env -0'
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    out = subprocess.run(
        ["bash", "-c", script, "bash", str(profile_env(folder))],
        env=env,
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout.decode()
    exported = dict(item.split("=", 1) for item in out.split("\0") if item)
    got = {k: v for k, v in exported.items() if k.startswith("REMEDIATION_")}
    assert got == read_profile(folder)


def _targets(settings: Settings) -> tuple[set[str], set[str]]:
    postgres = {name.lower() for name in settings.postgres_targets} | {"self"}
    redis = {name.lower() for name in settings.redis_targets} | {"self"}
    return postgres, redis


@pytest.mark.parametrize("folder", FOLDERS)
def test_profile_schedule_validates_and_names_configured_targets(
    folder: str, isolated: pytest.MonkeyPatch
) -> None:
    """The schedule passes beat's validation and every target it names is in the profile."""
    settings = settings_of(folder, isolated)
    module = f"examples.{folder}.schedule"
    sys.modules.pop(module, None)
    entries = load_schedule(module)
    assert entries, f"{module}: empty SCHEDULE"
    postgres, redis = _targets(settings)
    for name, entry in entries.items():
        task, target = entry["task"], str(entry["kwargs"].get("target", "self")).lower()
        if task in POSTGRES_TASKS:
            assert target in postgres, f"{module} {name}: {target!r} not in POSTGRES_TARGETS"
        elif task in REDIS_TASKS:
            assert target in redis, f"{module} {name}: {target!r} not in REDIS_TARGETS"
            section = REDIS_OF_SETTING.get(task)
            if section is not None:
                wanted = getattr(settings, section).redis_target.lower()
                assert target == wanted, f"{module} {name}: {section} data is on {wanted!r}"
        else:
            assert task in LABEL_TASKS, f"{module} {name}: classify {task} in this test"


@pytest.mark.parametrize("folder", FOLDERS)
def test_readme_says_how_to_load_the_profile(folder: str) -> None:
    """The folder's README gives the exact commands that load this profile and its schedule."""
    readme = (EXAMPLES / folder / "README.md").read_text()
    assert f". examples/{folder}/profile.env" in readme
    assert f"REMEDIATION_SCHEDULE_MODULE=examples.{folder}.schedule" in readme
    assert (EXAMPLES / folder / "__init__.py").is_file()
