"""Restart state of a container, shared by the container check and the container actions.

restart_container keeps, per container, one hash in the state Redis,
``rem:restart:<container>``: recent restart times, when the next restart is allowed, and
``unmonitored_at`` once it gave up on the container (runbook 000 Docker management). The
docker_containers check reads the give-up (container_given_up) and recreate_service clears
it after a hard reboot that brought the service back.
"""

from __future__ import annotations

from typing import Any

from remediation.guards import keys as guard_keys

KEY_PREFIX = guard_keys.RESTART
GIVEN_UP_FIELD = "unmonitored_at"
REQUESTED_FIELD = "requested_at"
"""Set by the worker itself (enable_log_scrubbing) when a running container must restart to
read a changed configuration; restart_container then restarts it although it is running,
and clears the field. No kwarg can set it."""
REQUEST_SECONDS = 86400


def state_key(container: str) -> str:
    """The Redis hash holding a container's restart history and back-off."""
    return KEY_PREFIX + container


def given_up(state: Any, names: list[str]) -> dict[str, float]:
    """container name -> when restart_container gave up on it, for those it gave up on."""
    if not names:
        return {}
    pipe = state.pipeline(transaction=False)
    for name in names:
        pipe.hget(state_key(name), GIVEN_UP_FIELD)
    return {n: float(v) for n, v in zip(names, pipe.execute(), strict=True) if v is not None}


def request(state: Any, name: str, at: float) -> None:
    """Ask restart_container to restart the container although it runs (a changed config)."""
    key = state_key(name)
    ttl = state.ttl(key)  # -2: no state yet; -1: kept for good (given up): left so
    state.hset(key, REQUESTED_FIELD, at)
    if ttl == -2 or 0 <= ttl < REQUEST_SECONDS:
        state.expire(key, REQUEST_SECONDS)


def requested(state: Any, name: str) -> bool:
    """Whether a restart of the running container was asked for and not done yet."""
    return bool(state.hexists(state_key(name), REQUESTED_FIELD))
