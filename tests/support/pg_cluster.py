"""A private PostgreSQL cluster the tests can stop (-m immediate) and start again."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from remediation.audit import store as store_module
from tests.support.base import free_port, wait_for


def pg_bindir() -> Path | None:
    """The directory holding initdb and pg_ctl, newest PostgreSQL first."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    initdb = shutil.which("initdb")
    for d in [*candidates, *([str(Path(initdb).parent)] if initdb else [])]:
        if all((Path(d) / tool).exists() for tool in ("initdb", "pg_ctl")):
            return Path(d)
    return None


class Cluster:
    """initdb in a temp dir, on a free loopback port; start/stop as the postgres OS user."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.base = Path(tempfile.mkdtemp(prefix="rem-audit-pg-"))
        if self.as_owner:
            shutil.chown(self.base, "postgres", "postgres")
        self.data, self.port = self.base / "data", free_port()

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _pg_ctl(self, *args: str, check: bool = True) -> None:
        subprocess.run(
            [*self.as_owner, str(self.bindir / "pg_ctl"), "-D", str(self.data), *args],
            check=check,
            capture_output=True,
            timeout=60,
        )

    def init(self) -> Cluster:
        initdb = [*self.as_owner, str(self.bindir / "initdb"), "-D", str(self.data)]
        initdb += "-U postgres --auth=trust --no-locale -E UTF8 -N".split()
        subprocess.run(initdb, check=True, capture_output=True, timeout=120)
        return self.start()

    def start(self) -> Cluster:
        opts = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port}"
            f" -c unix_socket_directories={self.base} -c fsync=off"
        )
        self._pg_ctl("-l", str(self.base / "log"), "-w", "-t", "60", "-o", opts, "start")
        wait_for(self.answers, 30, 0.1, "private PostgreSQL answers")
        return self

    def stop(self) -> None:
        """Crash-stop: every connection dies at once, as in a real outage."""
        self._pg_ctl("-m", "immediate", "-w", "stop", check=False)

    def answers(self) -> bool:
        try:
            psycopg.connect(self.dsn, connect_timeout=2).close()
            return True
        except psycopg.OperationalError:
            return False

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


@contextmanager
def private_cluster() -> Iterator[Cluster | None]:
    """A running private cluster, or None when the server binaries are not installed."""
    bindir = pg_bindir()
    if bindir is None or (os.geteuid() == 0 and shutil.which("runuser") is None):
        yield None
        return
    cluster = Cluster(bindir)
    try:
        yield cluster.init()
    finally:
        cluster.destroy()


@contextmanager
def outage(cluster: Cluster) -> Iterator[None]:
    """PostgreSQL crash-stopped inside the block, started again (and answering) after it."""
    cluster.stop()
    try:
        yield
    finally:
        cluster.start()


def past_down_window() -> None:
    """Let the store try PostgreSQL again (it spools without trying for DOWN_SECONDS)."""
    time.sleep(store_module.DOWN_SECONDS + 0.1)
