"""Redis clients, one per URL per process (prefork children must not share sockets)."""

from __future__ import annotations

import os

import redis

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


def use(url: str, replacement: redis.Redis) -> None:
    """Serve url from ``replacement`` in this process until reset(): the one injection
    point for an in-memory Redis (fakeredis in the unit tier) behind every client(url)."""
    _CLIENTS[(os.getpid(), url)] = replacement


def reset() -> None:
    """Forget clients (after fork, and between tests)."""
    _CLIENTS.clear()
