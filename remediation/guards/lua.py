"""Load Lua scripts shipped beside the guards and actions; redis-py re-sends on NOSCRIPT."""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import redis

_PACKAGES = ("remediation.guards", "remediation.actions")


@functools.cache
def source(name: str) -> str:
    for package in _PACKAGES:
        path = resources.files(package).joinpath(f"{name}.lua")
        if path.is_file():
            return path.read_text()
    raise FileNotFoundError(f"no Lua script {name}.lua in {_PACKAGES}")


def script(client: redis.Redis, name: str) -> Any:
    """A registered Script bound to client (EVALSHA, falling back to EVAL)."""
    return client.register_script(source(name))
