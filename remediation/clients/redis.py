"""Redis clients, one per URL per process (prefork children must not share sockets)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import redis

if TYPE_CHECKING:
    from remediation.settings import Settings

_CLIENTS: dict[tuple[int, str], redis.Redis] = {}


def client(url: str, *, timeout: float = 5.0) -> redis.Redis:
    """A decoded-bytes Redis client for url, created once per process."""
    key = (os.getpid(), url)
    if key not in _CLIENTS:
        _CLIENTS[key] = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=min(timeout, 3.0),
            health_check_interval=30,
            retry_on_timeout=False,
        )
    return _CLIENTS[key]


def state(settings: Settings) -> redis.Redis:
    """The state Redis (guards, incidents, the actions' own state) of these settings."""
    return client(settings.state_redis_url.get_secret_value())


def text(value: Any, errors: str = "strict") -> str:
    """A Redis reply as text: the client does not decode, so replies are bytes."""
    return value.decode("utf-8", errors) if isinstance(value, bytes) else str(value)


def use(url: str, replacement: redis.Redis) -> None:
    """Serve url from ``replacement`` in this process until reset(): the one injection
    point for an in-memory Redis (fakeredis in the unit tier) behind every client(url)."""
    _CLIENTS[(os.getpid(), url)] = replacement


def reset() -> None:
    """Forget clients (after fork, and between tests)."""
    _CLIENTS.clear()
