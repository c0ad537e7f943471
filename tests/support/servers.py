"""Private servers for one test session, started by the maintained fixtures' executors:
PostgreSQL with pytest-postgresql's PostgreSQLExecutor (pg_ctl, initdb, trust auth) and
RabbitMQ with pytest-rabbitmq's RabbitMqExecutor, both on 127.0.0.1 and a free port, both
removed at the end. Their own process fixtures are not used as they are: they put the data
under pytest's temporary directory, which only the user running the tests can enter, and
as root PostgreSQL and RabbitMQ must run as their system users (pg_ctl refuses root;
RabbitMQ's Erlang cookie lives in the rabbitmq user's home)."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shlex
import shutil
import subprocess
import tempfile
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mirakuru.exceptions import ProcessExitedWithError
from pytest_postgresql.executors import PostgreSQLExecutor
from pytest_rabbitmq.factories.executor import RabbitMqExecutor

from tests.support.base import free_port
from tests.support.pg_cluster import pg_bindir

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
"""Debian's rabbitmq-server and rabbitmqctl (the /usr/sbin ones are wrappers that su)."""


def as_user(user: str) -> list[str]:
    """The argv prefix that runs a program as `user` when we are root; empty otherwise."""
    return ["runuser", "-u", user, "--"] if os.geteuid() == 0 else []


def owned_tempdir(prefix: str, user: str) -> Path:
    """A new private directory the server's system user owns (when we are root)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        shutil.chown(path, user, user)
    return path


def _wrapper(base: Path, program: Path, user: str) -> Path:
    """An executable that runs `program` as `user` from /, for libraries that take one path."""
    script = base / program.name
    quoted = shlex.join([*as_user(user), str(program)])
    script.write_text(f'#!/bin/sh\ncd / || exit 1\nexec {quoted} "$@"\n')
    script.chmod(0o755)
    return script


@contextlib.contextmanager
def private_postgres() -> Iterator[str]:
    """A PostgreSQL server of this session's own; yields its admin DSN (user postgres)."""
    bindir = pg_bindir()
    if bindir is None:
        raise RuntimeError("initdb/pg_ctl are not installed (apt-get install postgresql)")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        raise RuntimeError("running as root without runuser: pg_ctl cannot run as postgres")
    base = owned_tempdir("rem-test-pg-", "postgres")
    port = free_port()
    executor = PostgreSQLExecutor(
        executable=str(_wrapper(base, bindir / "pg_ctl", "postgres")),
        host="127.0.0.1",
        port=port,
        datadir=str(base / "data"),
        unixsocketdir=str(base),
        logfile=str(base / "postgresql.log"),
        startparams="-w -t 60",
        dbname="postgres",
        postgres_options="-c listen_addresses=127.0.0.1 -c fsync=off",
    )
    try:
        executor.start()
        executor.wait_for_postgres()
        yield f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
    finally:
        with contextlib.suppress(Exception):
            executor.stop()
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class Rabbit:
    """A RabbitMQ broker the tests may use: its URL and rabbitmqctl on its node."""

    url: str
    node: str | None = None
    env: dict[str, str] | None = None

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """rabbitmqctl on this broker's node (the default node for an external broker)."""
        private = self.env is not None
        binary = str(RABBITMQ_BIN / "rabbitmqctl") if private else "rabbitmqctl"
        prefix = as_user("rabbitmq") if private else []
        node = ["-n", self.node] if self.node else []
        return subprocess.run(
            [*prefix, binary, *node, *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
            env=self.env,
            check=False,
        )


@contextlib.contextmanager
def private_rabbitmq() -> Iterator[Rabbit]:
    """A RabbitMQ node of this session's own (guest/guest, loopback only, no plugins)."""
    server = RABBITMQ_BIN / "rabbitmq-server"
    if not server.exists():
        raise RuntimeError(f"{server} is missing (apt-get install rabbitmq-server)")
    base = owned_tempdir("rem-test-rabbitmq-", "rabbitmq")
    port, dist_port = free_port(), free_port()
    node = f"rem-test-{port}@localhost"
    (base / "plugins").write_text("[].\n")  # no management plugin: a faster start
    (base / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{port}\n")
    (base / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq's: it names the system node
    if os.geteuid() == 0:
        for path in base.iterdir():
            shutil.chown(path, "rabbitmq", "rabbitmq")
    executor = RabbitMqExecutor(
        shlex.join([*as_user("rabbitmq"), str(server)]),
        "127.0.0.1",
        port,
        dist_port,
        str(RABBITMQ_BIN / "rabbitmqctl"),
        logpath=base / "log",
        path=base,
        plugin_path=base,
        node_name=node,
    )
    extra = {
        "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
        "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
        "RABBITMQ_LOG_BASE": str(base / "log"),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
    }
    executor._envvars.update(extra)
    env = {**executor.envvars, **extra}
    try:
        executor.start()
        yield Rabbit(f"amqp://guest:guest@127.0.0.1:{port}//", node, env)
    finally:
        with contextlib.suppress(ProcessExitedWithError, Exception):
            executor.stop()
        shutil.rmtree(base, ignore_errors=True)


def in_child_as(user: str, work: Callable[[], Any]) -> Any:
    """``work()`` in a forked child running as ``user`` (root ignores file modes), its
    JSON-able answer sent back through a pipe; in this process when we are not root. The
    child needs nothing on disk (the code is already loaded), so it works from a private
    checkout such as CI's `mktemp -d` clone, which other users cannot enter."""
    if os.geteuid() != 0:
        return work()
    account = pwd.getpwnam(user)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to user, work, answer through the pipe
        code = 1
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)
            with os.fdopen(write, "w") as pipe:
                json.dump(work(), pipe)
            code = 0
        except BaseException:
            traceback.print_exc()  # the parent only sees the exit code
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"the child running as {user} failed"
    return json.loads(data)
