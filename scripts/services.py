"""What `make run` needs on a bare host: a Redis and a PostgreSQL that answer.

    python scripts/services.py start .data/services.env | stop      (make services, make stop)

The configured servers (read and validated by the product's own Settings) are used when they
answer; else private ones run on 127.0.0.1, reused by later runs: redis-server in .data/redis
and PostgreSQL in .data/pg (as the postgres user when we are root; in /tmp when that user
cannot enter .data). As root, missing Debian packages are installed. The audit database is
created when missing. OUTFILE (0600) gets `export` lines. The tests start their own servers."""

from __future__ import annotations

import glob
import hashlib
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis
from psycopg import sql
from pydantic import ValidationError

from remediation.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / ".data"
REDIS_DIR = DATA / "redis"
PG_BASES = [
    DATA / "pg",
    Path(f"/tmp/remediation-pg-{hashlib.sha256(bytes(ROOT)).hexdigest()[:12]}"),  # noqa: S108
]
IS_ROOT = os.geteuid() == 0
AS_POSTGRES = ["runuser", "-u", "postgres", "--"] if IS_ROOT else []


def log(message: str) -> None:
    print(f"services: {message}", file=sys.stderr)


def die(message: str) -> NoReturn:
    sys.exit(f"services: {message}")


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (it may hold passwords or the signing key)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def need(*packages: str) -> None:
    """Install Debian packages as root; otherwise say which ones and stop."""
    if not IS_ROOT:
        die(f"install them first: sudo apt-get install -y {' '.join(packages)}")
    log(f"installing {' '.join(packages)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=True, env=env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(what: str, ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not ready():
        if time.monotonic() > deadline:
            die(f"{what} did not answer within 30 s")
        time.sleep(0.2)


def redis_answers(url: str) -> bool:
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2) as client:
            return bool(client.ping())
    except (redis.RedisError, OSError, ValueError):
        return False


def private_redis() -> str:
    port_file, pid_file = REDIS_DIR / "port", REDIS_DIR / "redis.pid"
    url = f"redis://127.0.0.1:{port_file.read_text().strip()}/0" if port_file.exists() else ""
    if url and redis_answers(url):
        return url
    if shutil.which("redis-server") is None:
        need("redis-server")
    REDIS_DIR.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = REDIS_DIR / "redis.conf"
    conf.write_text(
        f'daemonize yes\nbind 127.0.0.1\nport {port}\ndir "{REDIS_DIR}"\npidfile "{pid_file}"\n'
        f'logfile "{REDIS_DIR / "redis.log"}"\nappendonly yes\nsave ""\n'
    )
    subprocess.run(["redis-server", str(conf)], check=True)
    port_file.write_text(f"{port}\n")
    url = f"redis://127.0.0.1:{port}/0"
    wait("the private redis-server", lambda: redis_answers(url))
    log(f"started a private redis-server on 127.0.0.1:{port} (data {REDIS_DIR})")
    return url


def postgres_usable(dsn: str) -> bool:
    """True when dsn answers; its database is created when only that is missing."""
    try:
        psycopg.connect(dsn, connect_timeout=3).close()
        return True
    except psycopg.OperationalError as exc:
        if "does not exist" not in str(exc):
            return False
    name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(dsn, dbname="postgres", autocommit=True, connect_timeout=3) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(str(name))))
    log(f"created database {name!r}")
    return True


def pg_bindir() -> Path | None:
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    dirs += [str(Path(p).parent) for p in [shutil.which("initdb")] if p]
    return next((Path(d) for d in dirs if (Path(d) / "pg_ctl").exists()), None)


def pg_base() -> Path:
    for base in PG_BASES:
        base.mkdir(parents=True, exist_ok=True)
        if IS_ROOT:
            shutil.chown(base, "postgres", "postgres")
        if subprocess.run([*AS_POSTGRES, "test", "-w", str(base)], cwd="/").returncode == 0:
            return base
    raise AssertionError("unreachable: /tmp is writable by every user")


def private_postgres(dbname: str) -> str:
    if pg_bindir() is None:
        need("postgresql")
    if (bindir := pg_bindir()) is None:
        die("postgresql is installed but pg_ctl was not found")
    base = pg_base()
    data, conf = base / "data", base / "data" / "remediation.conf"
    pg_ctl = [*AS_POSTGRES, str(bindir / "pg_ctl"), "-D", str(data)]
    if not (data / "PG_VERSION").exists():
        initdb = [*AS_POSTGRES, str(bindir / "initdb"), "-D", str(data), "-U", "postgres"]
        initdb += ["--auth=trust", "-E", "UTF8", "--no-locale"]
        subprocess.run(initdb, check=True, cwd="/", stdout=subprocess.DEVNULL)
        with (data / "postgresql.conf").open("a") as f:
            f.write("include_if_exists = 'remediation.conf'\n")
    if subprocess.run([*pg_ctl, "status"], cwd="/", stdout=subprocess.DEVNULL).returncode != 0:
        conf.write_text(
            f"listen_addresses = '127.0.0.1'\nport = {free_port()}\n"
            f"unix_socket_directories = '{base}'\n"
        )
        if IS_ROOT:
            shutil.chown(conf, "postgres", "postgres")
        started = subprocess.run(
            [*pg_ctl, "-l", str(base / "postgres.log"), "-w", "-t", "60", "start"],
            cwd="/",
            stdout=subprocess.DEVNULL,
        )
        if started.returncode != 0:
            die(f"the private PostgreSQL did not start; see {base / 'postgres.log'}")
        log(f"started a private PostgreSQL cluster (data {data})")
    port = conf.read_text().split("port = ")[1].split()[0]
    dsn = f"postgresql://postgres@127.0.0.1:{port}/{dbname}"
    wait("the private PostgreSQL", lambda: postgres_usable(dsn))
    return dsn


def start(outfile: Path) -> None:
    DATA.mkdir(exist_ok=True)
    DATA.chmod(0o755)  # the postgres system user may need to pass through
    try:
        settings = Settings()
    except ValidationError as exc:
        die(f"the configuration is invalid:\n{exc}")
    explicit = settings.model_fields_set
    state = settings.state_redis_url.get_secret_value()
    env = {}
    if not redis_answers(state):
        log("the configured state Redis does not answer")
        env["REMEDIATION_STATE_REDIS_URL"] = state = private_redis()
    for name, db in (("broker_url", 1), ("result_backend", 2)):
        url = getattr(settings, name).get_secret_value()
        keep = name in explicit and (not url.startswith("redis") or redis_answers(url))
        derived = urlunsplit(urlsplit(state)._replace(path=f"/{db}"))
        env[f"REMEDIATION_{name.upper()}"] = url if keep else derived
    audit = settings.audit_dsn.get_secret_value()
    if not postgres_usable(audit):
        log("the configured audit PostgreSQL does not answer")
        dbname = psycopg.conninfo.conninfo_to_dict(audit).get("dbname") or "remediation"
        env["REMEDIATION_AUDIT_DSN"] = private_postgres(str(dbname))
    if settings.signing_key is None:
        key_file = DATA / "signing.key"
        if not key_file.exists():
            write_private(key_file, secrets.token_hex(32) + "\n")
            log(f"created {key_file} (set REMEDIATION_SIGNING_KEY to use your own)")
        env["REMEDIATION_SIGNING_KEY"] = key_file.read_text().strip()
    write_private(outfile, "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()))
    log(f"wrote {outfile} ({', '.join(env) or 'nothing to override'})")


def stop() -> None:
    """Stop the private servers this script started; their data stays."""
    pid_file = REDIS_DIR / "redis.pid"
    if pid_file.exists():
        try:
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
            log("stopped the private redis-server")
        except (ProcessLookupError, ValueError):
            pass
    bindir = pg_bindir()
    for data in (base / "data" for base in PG_BASES):
        if bindir and (data / "PG_VERSION").exists():
            cmd = [*AS_POSTGRES, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"]
            if subprocess.run(cmd, cwd="/", capture_output=True).returncode == 0:
                log(f"stopped the private PostgreSQL ({data})")


if __name__ == "__main__":
    if sys.argv[1:2] == ["start"] and len(sys.argv) == 3:
        start(Path(sys.argv[2]).resolve())
    elif sys.argv[1:] == ["stop"]:
        stop()
    else:
        die("usage: services.py start OUTFILE | stop")
