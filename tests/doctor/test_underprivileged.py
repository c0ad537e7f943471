"""The issue's must-show: `remediation doctor`, run as a non-root worker user against a
deliberately under-privileged setup (a PostgreSQL role without the rights, an unreadable
Docker socket, a read-only backup folder, a Prometheus rule with a typo), names each problem
with its fix and exits 1."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from remediation.cli import main
from remediation.settings import get_settings
from tests.support.alerting import Process
from tests.support.env import service_env
from tests.support.postgres import WeakRole
from tests.support.servers import in_child_as
from tests.support.services import PASSWORD, RedisServer

USER = "nobody"
TYPO = "sum(rate(scraper_errors_total[1h])"  # one parenthesis short


@pytest.fixture
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """A folder USER may enter holding a backup folder USER owns but may not write (0500)
    and a private spool folder USER owns."""
    base = Path(tempfile.mkdtemp(prefix="rem-doctor-weak-", dir="/tmp"))
    base.chmod(0o755)
    backups, spool = base / "backups", base / "spool"
    backups.mkdir(mode=0o500)
    spool.mkdir(mode=0o700)
    if os.geteuid() == 0:
        user = pwd.getpwnam(USER)
        for folder in (backups, spool):
            os.chown(folder, user.pw_uid, user.pw_gid)
    try:
        yield {"backups": backups, "spool": spool}
    finally:
        backups.chmod(0o700)
        shutil.rmtree(base)


def _doctor(env: dict[str, str], *args: str) -> dict[str, Any]:
    """`remediation [args] doctor` in this process with ``env`` as the environment: exit code
    and what it printed."""
    saved, cwd = dict(os.environ), os.getcwd()
    os.environ.clear()
    os.environ.update(env)
    get_settings.cache_clear()
    # from /, as a worker's service would run: USER may not enter CI's private clone, where
    # the settings would look for a .env file
    os.chdir("/")
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            code = main([*args, "doctor"])
    finally:
        with contextlib.suppress(OSError):  # USER's child may not go back; it ends anyway
            os.chdir(cwd)
        os.environ.clear()
        os.environ.update(saved)
        get_settings.cache_clear()
    return {"code": code, "out": out.getvalue()}


def test_underprivileged_setup_names_each_problem_with_its_fix(
    redis_server: RedisServer,
    audit_db: str,
    weak_role: WeakRole,
    setup: dict[str, Path],
    prometheus_server: Process,
    root_socket: Path,
) -> None:
    """As USER: the weak role's VACUUM, session and CREATEDB rights, the Docker socket, the
    backup folder and the rule's typo are each a blocking ✗ with its fix; exit 1; no password
    is printed."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run the doctor as a non-root user")
    rules = [
        {"name": "scraper_errors", "query": TYPO, "kind": "error_rate_high", "warning": 0.1},
        {"name": "up", "query": "sum(up)", "kind": "error_rate_high", "warning": 0.5},
    ]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        **service_env(
            redis_server,
            audit_db,
            REMEDIATION_POSTGRES_TARGETS__APP=weak_role.dsn,
            REMEDIATION_CONTAINERS__PROJECT="shop",
            REMEDIATION_CONTAINERS__DOCKER_URL=f"unix://{root_socket}",
            REMEDIATION_BACKUP__DIR=str(setup["backups"]),
            REMEDIATION_AUDIT__SPOOL_DIR=str(setup["spool"]),
            REMEDIATION_PROMETHEUS__URL=prometheus_server.url,
            REMEDIATION_PROMETHEUS__RULES=json.dumps(rules),
        ),
    }
    # Load every module the run imports while we may still read the checkout (CI's clone is a
    # private `mktemp -d` folder USER cannot enter).
    _doctor(env)
    _doctor(env, "--json")
    table = in_child_as(USER, lambda: _doctor(env))
    as_json = in_child_as(USER, lambda: _doctor(env, "--json"))

    assert table["code"] == 1 and as_json["code"] == 1, table["out"]
    text = table["out"]
    fixes = [line.strip() for line in text.splitlines() if line.strip().startswith("fix: ")]
    role = f'"{weak_role.role}"'
    for fix in (
        f'ALTER TABLE "public"."price_history" OWNER TO {role};',  # VACUUM / ANALYZE
        f"GRANT pg_signal_backend TO {role};",  # ending sessions
        f"ALTER ROLE {role} CREATEDB;",  # scratch database for restores
        f"usermod -aG docker {USER}",  # the Docker socket
        "chmod u+rwx",  # the read-only backup folder
        "correct REMEDIATION_PROMETHEUS__RULES[0].query (rule scraper_errors)",
    ):
        assert any(fix in line for line in fixes), (fix, text)
    assert "parse error" in text
    assert PASSWORD not in text + as_json["out"]

    rows = json.loads(as_json["out"])["rows"]
    blocking = {(r["area"], r["target"]) for r in rows if r["blocking"]}
    assert {("postgres", "app"), ("prometheus", "scraper_errors")} <= blocking
    assert {r["area"] for r in rows if r["blocking"]} >= {"postgres", "docker", "folder"}
    good = [r for r in rows if r["area"] == "prometheus" and r["target"] == "up"]
    assert good and good[0]["status"] == "ok"
