"""Load Lua scripts shipped beside the guards and actions; redis-py re-sends on NOSCRIPT.

A script whose first lines are ``-- include: NAME`` gets each NAME.lua prepended, so the breaker
state machine is written once and used by every script that needs it.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import redis

_PACKAGES = ("remediation.guards", "remediation.actions")
_INCLUDE = "-- include: "


@functools.cache
def source(name: str) -> str:
    for package in _PACKAGES:
        path = resources.files(package).joinpath(f"{name}.lua")
        if path.is_file():
            text = path.read_text()
            included = []
            for line in text.splitlines():
                if not line.startswith(_INCLUDE):
                    break
                included.append(source(line.removeprefix(_INCLUDE).strip()))
            return "\n".join([*included, text])
    raise FileNotFoundError(f"no Lua script {name}.lua in {_PACKAGES}")


def script(client: redis.Redis, name: str) -> Any:
    """A registered Script bound to client (EVALSHA, falling back to EVAL)."""
    return client.register_script(source(name))
