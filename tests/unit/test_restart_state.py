"""reset_container_restarts clears both flap guards on restart_container, in-process."""

from __future__ import annotations

import fakeredis

from remediation.actions.containers import forget_restarts
from remediation.context import ActionContext
from remediation.guards import keys
from remediation.logging import get_logger
from remediation.restarts import state_key
from remediation.settings import get_settings


def test_forget_restarts_clears_the_actions_and_the_chains_flap_state(
    state: fakeredis.FakeRedis,
) -> None:
    """The action's own back-off hash and the chain's flap record and suspension all go;
    another container's state stays."""
    for name in ("web", "db"):
        resource = f"docker/{name}"
        state.hset(state_key(name), mapping={"history": "[1.0]", "next_at": "2.0"})
        state.zadd(keys.flap("restart_container", resource), {"run": 1.0})
        state.set(keys.flap_suspended("restart_container", resource), "1")

    removed = forget_restarts(ActionContext(get_settings(), get_logger()), "web")

    assert removed == 3
    assert sorted(k.decode() for k in state.keys("rem:*")) == [
        "rem:flap:restart_container:docker/db",
        "rem:flapped:restart_container:docker/db",
        "rem:restart:db",
    ]
