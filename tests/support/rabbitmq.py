"""The test RabbitMQ: its URL, private vhosts made with rabbitmqctl, and the broker matrix
the integration tests run on (Redis or RabbitMQ)."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import kombu

from tests.support.env import missing
from tests.support.services import RedisServer

MAIN_SLOT = 1
"""The broker slot of the two shared workers (Redis db 1, as in service_env)."""


def amqp_test_url() -> str:
    """REMEDIATION_TEST_AMQP_URL when a broker answers there; skips (fails in CI) if not."""
    url = os.environ.get("REMEDIATION_TEST_AMQP_URL", "")
    if not url:
        missing("RabbitMQ (REMEDIATION_TEST_AMQP_URL is unset; scripts/ensure_services.sh)")
    try:
        with kombu.Connection(url, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0)
    except Exception as exc:  # any failure to connect means: no broker for these tests
        missing(f"RabbitMQ at {mask(url)} ({type(exc).__name__}: {exc})")
    return url


def mask(url: str) -> str:
    u = urlsplit(url)
    if u.password is None:
        return url
    return urlunsplit(u._replace(netloc=u.netloc.replace(f":{u.password}@", ":***@")))


def rabbitmqctl(*args: str) -> subprocess.CompletedProcess[str]:
    """rabbitmqctl on REMEDIATION_TEST_AMQP_NODE (its default node when unset)."""
    node = os.environ.get("REMEDIATION_TEST_AMQP_NODE")
    cmd = ["rabbitmqctl", *(["-n", node] if node else []), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd="/")


@dataclass
class Vhosts:
    """Private RabbitMQ vhosts of this session, one per slot, made on first use."""

    base_url: str
    prefix: str = field(default_factory=lambda: f"rem-test-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    made: dict[int, str] = field(default_factory=dict)

    def url(self, slot: int) -> str:
        if slot not in self.made:
            self.made[slot] = self._create(f"{self.prefix}-{slot}")
        u = urlsplit(self.base_url)
        return urlunsplit(u._replace(path="/" + quote(self.made[slot], safe="")))

    def _create(self, name: str) -> str:
        user = unquote(urlsplit(self.base_url).username or "guest")
        for args in (("add_vhost", name), ("set_permissions", "-p", name, user, ".*", ".*", ".*")):
            done = rabbitmqctl(*args)
            if done.returncode != 0:
                raise RuntimeError(f"rabbitmqctl {args[0]} failed: {done.stderr.strip()[-500:]}")
        return name

    def delete_all(self) -> None:
        for name in self.made.values():
            rabbitmqctl("delete_vhost", name)
        self.made.clear()


def vhosts_for(url: str) -> Vhosts:
    """Vhosts on the test broker; skips (fails in CI) when rabbitmqctl cannot make them."""
    if shutil.which("rabbitmqctl") is None:
        missing("rabbitmqctl (the RabbitMQ tests make a vhost per session with it)")
    probe = rabbitmqctl("-q", "list_vhosts", "name")
    if probe.returncode != 0:
        missing(f"rabbitmqctl access to the test broker ({probe.stderr.strip()[-300:]})")
    for name in probe.stdout.split():  # left behind by a session that was killed
        pid = name.split("-")[2] if name.startswith("rem-test-") else ""
        if pid.isdigit() and not _running(int(pid)):
            rabbitmqctl("delete_vhost", name)
    return Vhosts(url)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


@dataclass
class Broker:
    """One broker of the matrix: where workers get messages, and the Redis for the rest."""

    kind: str
    redis: RedisServer
    """Guard state (db 0) and results (db 2); the broker too (db = slot) for kind "redis"."""
    vhosts: Vhosts | None = None

    def url(self, slot: int = MAIN_SLOT) -> str:
        """The broker URL of a slot: a Redis db, or a private RabbitMQ vhost."""
        return self.redis.url(slot) if self.vhosts is None else self.vhosts.url(slot)
