"""The test RabbitMQ: its URL, private vhosts made with rabbitmqctl, and the broker matrix
the integration tests run on (Redis or RabbitMQ)."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from tests.support.env import missing
from tests.support.servers import Rabbit
from tests.support.services import RedisServer

MAIN_SLOT = 1
"""The broker slot of the two shared workers (Redis db 1, as in service_env)."""


def mask(url: str) -> str:
    u = urlsplit(url)
    if u.password is None:
        return url
    return urlunsplit(u._replace(netloc=u.netloc.replace(f":{u.password}@", ":***@")))


@dataclass
class Vhosts:
    """Private RabbitMQ vhosts of this session, one per slot, made on first use."""

    rabbit: Rabbit
    prefix: str = field(default_factory=lambda: f"rem-test-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    made: dict[int, str] = field(default_factory=dict)

    def url(self, slot: int) -> str:
        if slot not in self.made:
            self.made[slot] = self._create(f"{self.prefix}-{slot}")
        u = urlsplit(self.rabbit.url)
        return urlunsplit(u._replace(path="/" + quote(self.made[slot], safe="")))

    def _create(self, name: str) -> str:
        user = unquote(urlsplit(self.rabbit.url).username or "guest")
        for args in (("add_vhost", name), ("set_permissions", "-p", name, user, ".*", ".*", ".*")):
            done = self.rabbit.ctl(*args)
            if done.returncode != 0:
                raise RuntimeError(f"rabbitmqctl {args[0]} failed: {done.stderr.strip()[-500:]}")
        return name

    def delete_all(self) -> None:
        for name in self.made.values():
            self.rabbit.ctl("delete_vhost", name)
        self.made.clear()


def vhosts_for(rabbit: Rabbit) -> Vhosts:
    """Vhosts on the test broker; skips (fails in CI) when rabbitmqctl cannot make them."""
    probe = rabbit.ctl("-q", "list_vhosts", "name")
    if probe.returncode != 0:
        missing(f"rabbitmqctl access to the test broker ({probe.stderr.strip()[-300:]})")
    for name in probe.stdout.split():  # left behind by a session that was killed
        pid = name.split("-")[2] if name.startswith("rem-test-") else ""
        if pid.isdigit() and not _running(int(pid)):
            rabbit.ctl("delete_vhost", name)
    return Vhosts(rabbit)


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
