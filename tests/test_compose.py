"""docker-compose.yml and the Dockerfile cannot run here (no image registry): their shape, env
names, required secrets and interpolation are checked, and the Redis password set-up runs
against a real redis-server."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import yaml

from remediation.settings import AuditSettings, BackupSettings, MetricsSettings, env_names
from tests.support.base import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
REQUIRED = {"POSTGRES_PASSWORD", "REDIS_PASSWORD", "REMEDIATION_SIGNING_KEY"}
SECRETS = {
    "POSTGRES_PASSWORD": "pg-Pass1",
    "REDIS_PASSWORD": "redisPass2",
    "REMEDIATION_SIGNING_KEY": "k" * 64,
}
_REF = re.compile(r"\$\$|\$\{(\w+)(?:(:?[?-])([^}]*))?\}")


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def interpolate(value: Any, env: dict[str, str], missing: dict[str, str]) -> Any:
    """Compose's variable substitution: $$, ${VAR}, ${VAR:-default}, ${VAR:?message}; a
    required variable that is unset is recorded in ``missing`` with its message."""
    if isinstance(value, dict):
        return {k: interpolate(v, env, missing) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, missing) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        name, op, arg = match[1], match[2], match[3]
        got = env.get(name)
        if op in (":?", "?") and not got:
            missing[name] = arg
            return ""
        if op in (":-", "-") and not got:
            return arg
        return got or ""

    return _REF.sub(one, value)


def strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return [value] if isinstance(value, str) else []


def test_compose_services_healthchecks_and_env_names() -> None:
    """redis, postgres, worker, beat, serve, watch; all healthchecked; env names are real
    settings."""
    services = compose()["services"]
    assert set(services) == {"redis", "postgres", "worker", "beat", "serve", "watch"}
    assert all("healthcheck" in s for s in services.values())
    known = set(env_names())
    for name in ("worker", "beat", "serve", "watch"):
        assert services[name]["env_file"] == ".env"
        used = set(services[name]["environment"])
        assert used <= known, used - known
    sockets = {
        n for n, s in services.items() if any("docker.sock" in v for v in s.get("volumes", []))
    }
    assert sockets == {"worker", "watch"}, "the socket: only where actions and events need it"


def test_compose_command_uses_the_package_app() -> None:
    """Worker and beat run `celery -A remediation`, the same app `celery call` uses."""
    text = (ROOT / "docker-compose.yml").read_text()
    assert len(re.findall(r'"celery", "-A", "remediation"', text)) == 2


def test_secrets_are_required_variables_never_literals() -> None:
    """Without .env the stack does not start: exactly the two passwords and the signing key
    are required, each with a message naming .env; no password or key is written in the
    file (every URL's password and every secret-named variable is a required reference)."""
    missing: dict[str, str] = {}
    interpolate(compose(), {}, missing)
    assert set(missing) == REQUIRED
    assert all(f"set {name} in .env" in message for name, message in missing.items())
    raw = strings(compose())
    pattern = r"://[^/@\s:]*:(\$\{[^}]*\}|[^@\s]*)@"
    with_password = {text for text in raw if re.search(pattern, text)}
    assert len(with_password) == 4  # three Redis URLs and the audit DSN
    passwords = [p for text in with_password for p in re.findall(pattern, text)]
    for password in passwords:
        assert re.fullmatch(r"\$\{(\w+):\?[^}]+\}", password), password
    for service in compose()["services"].values():
        env = service.get("environment") or {}
        for name, value in env.items():
            if re.search(r"PASSWORD|SECRET|SIGNING_KEY|TOKEN", name):
                assert re.fullmatch(rf"\$\{{{name}:\?[^}}]+\}}", str(value)), (name, value)


def test_every_redis_url_carries_the_password_and_settings_accept_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With .env's values, every REMEDIATION_*_URL on the redis service has REDIS_PASSWORD,
    the audit DSN has POSTGRES_PASSWORD, and the settings load from that environment."""
    from remediation.settings import get_settings

    missing: dict[str, str] = {}
    services = interpolate(compose(), SECRETS, missing)["services"]
    assert missing == {}
    for name in ("worker", "beat"):
        env = services[name]["environment"]
        on_redis = [v for k, v in env.items() if k.endswith("_URL") or k.endswith("_BACKEND")]
        on_redis = [v for v in on_redis if urlsplit(v).hostname == "redis"]
        assert len(on_redis) == 3
        assert {urlsplit(v).password for v in on_redis} == {SECRETS["REDIS_PASSWORD"]}
        assert urlsplit(env["REMEDIATION_AUDIT_DSN"]).password == SECRETS["POSTGRES_PASSWORD"]
        assert env["REMEDIATION_SIGNING_KEY"] == SECRETS["REMEDIATION_SIGNING_KEY"]
        for var in [v for v in os.environ if v.startswith("REMEDIATION_")]:
            monkeypatch.delenv(var)
        for key, value in env.items():
            monkeypatch.setenv(key, str(value))
        get_settings.cache_clear()
        s = get_settings()
        assert s.state_redis_url.get_secret_value() == env["REMEDIATION_STATE_REDIS_URL"]
        assert s.audit_dsn.get_secret_value() == env["REMEDIATION_AUDIT_DSN"]
    redis_env = services["redis"]["environment"]
    assert redis_env["REDIS_PASSWORD"] == SECRETS["REDIS_PASSWORD"]
    assert "REDISCLI_AUTH" in " ".join(strings(services["redis"]["healthcheck"]))


def test_redis_service_password_set_up_on_a_real_redis(tmp_path: Path) -> None:
    """The redis service's start script, run by sh as compose would (config written to a
    temporary file), gives a config on which a real redis-server refuses PING without the
    password and answers with the URL the worker uses; the password is in no argv."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not installed")
    services = interpolate(compose(), SECRETS, {})["services"]
    command = services["redis"]["command"]
    assert command[:2] == ["sh", "-c"]
    script = command[2]
    assert "requirepass" in script and SECRETS["REDIS_PASSWORD"] not in script
    write = script.split("&& chown")[0].replace(
        "/tmp/redis.conf", shlex.quote(str(tmp_path / "r.conf"))
    )
    subprocess.run(
        ["sh", "-c", write],
        env={"REDIS_PASSWORD": SECRETS["REDIS_PASSWORD"], "PATH": "/usr/bin:/bin"},
        check=True,
    )
    assert (tmp_path / "r.conf").stat().st_mode & 0o077 == 0
    assert "exec docker-entrypoint.sh redis-server /tmp/redis.conf" in script
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            str(tmp_path / "r.conf"),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        anonymous = redis.Redis(port=port, socket_connect_timeout=0.5)
        wait_for(lambda: _refuses(anonymous), 10, 0.05, f"redis-server on {port}")
        url = services["worker"]["environment"]["REMEDIATION_STATE_REDIS_URL"]
        worker_url = url.replace("@redis:6379", f"@127.0.0.1:{port}")
        assert redis.Redis.from_url(worker_url).ping() is True
    finally:
        proc.terminate()
        proc.wait(10)


def _refuses(client: redis.Redis) -> bool:
    try:
        client.ping()
    except redis.AuthenticationError:
        return True
    except redis.ResponseError as exc:
        return "NOAUTH" in str(exc)
    except redis.ConnectionError:
        return False
    raise AssertionError("redis answered PING without the password")


def test_docker_socket_mount_is_marked_root_equivalent() -> None:
    """The comment right above each Docker socket mount says it is root-equivalent and what
    that means for the host."""
    lines = (ROOT / "docker-compose.yml").read_text().splitlines()
    mounts = [i for i, line in enumerate(lines) if "/var/run/docker.sock:" in line]
    assert len(mounts) == 2  # worker and watch
    for at in mounts:
        comment = []
        for line in reversed(lines[:at]):
            if not line.strip().startswith("#"):
                break
            comment.append(line.lower())
        text = " ".join(comment)
        assert "root-equivalent" in text and ("host" in text or "worker" in text), text


def _dockerfile() -> list[str]:
    """Instructions of the Dockerfile, continuation lines joined, comments left out."""
    text = (ROOT / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    return [
        " ".join(part.split())
        for part in "\n".join(lines).replace("\\\n", " ").splitlines()
        if part.strip()
    ]


def test_image_data_folders_belong_to_its_user() -> None:
    """The image creates the default spool, metrics and backup folders under its WORKDIR,
    gives them to the user it runs as before switching to it (spool 0700), and compose keeps
    them in a volume for the worker."""
    steps = _dockerfile()
    workdir = Path(next(s.split()[1] for s in steps if s.startswith("WORKDIR ")))
    (user_at,) = [i for i, s in enumerate(steps) if s.startswith("USER ")]
    user = steps[user_at].split()[1]
    before = " ".join(steps[:user_at])
    folders = [
        workdir / AuditSettings().spool_dir,
        workdir / MetricsSettings().multiproc_dir,
        workdir / BackupSettings().dir,
    ]
    assert all(Path(f).parent == workdir / ".data" for f in folders)
    mkdir = re.search(r"mkdir -p ([^&]+)", before)
    assert mkdir is not None and {str(f) for f in folders} <= set(mkdir[1].split())
    assert f"chown -R {user}:{user} {workdir / '.data'}" in before
    chmod = re.search(r"chmod 0?700 ([^&]+)", before)
    assert chmod is not None and str(folders[0]) in chmod[1].split()
    assert f"useradd --system --uid 10001 {user}" in before
    volumes = compose()["services"]["worker"]["volumes"]
    assert any(v.endswith(f":{workdir / '.data'}") for v in volumes)
