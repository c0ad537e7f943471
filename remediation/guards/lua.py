"""Load Lua scripts shipped in a package (the guards' own by default; an action passes its
own package); redis-py re-sends on NOSCRIPT.

A script whose first lines are ``-- include: NAME`` gets each NAME.lua prepended, so the breaker
state machine is written once and used by every script that needs it.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import redis

GUARDS = "remediation.guards"
_INCLUDE = "-- include: "


@functools.cache
def source(name: str, package: str = GUARDS) -> str:
    """NAME.lua from package, with the scripts it includes (from the same package) first."""
    path = resources.files(package).joinpath(f"{name}.lua")
    if not path.is_file():
        raise FileNotFoundError(f"no Lua script {name}.lua in {package}")
    text = path.read_text()
    included = []
    for line in text.splitlines():
        if not line.startswith(_INCLUDE):
            break
        included.append(source(line.removeprefix(_INCLUDE).strip(), package))
    return "\n".join([*included, text])


def script(client: redis.Redis, name: str, package: str = GUARDS) -> Any:
    """A registered Script bound to client (EVALSHA, falling back to EVAL)."""
    return client.register_script(source(name, package))
