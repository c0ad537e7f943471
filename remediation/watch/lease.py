"""One watcher per source across hosts: a lease in the state Redis, like beat's lock.

The holder renews it every fraction of its length; a standby tries to take it as often.
Locally a lease counts as held until a little before it can have expired on the server
(from the start of the last successful renewal), so a watcher cut off from Redis stops
sending before a standby can have taken over.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from remediation.guards import keys
from remediation.guards.lua import script

PACKAGE = "remediation.watch"
SAFETY = 0.8
"""Share of the lease a holder trusts after a renewal (clock rates differ a little)."""


class Lease:
    def __init__(
        self,
        client: redis.Redis,
        source: str,
        holder: str,
        seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client, self.source, self.holder = client, source, holder
        self.key = keys.watch_lease(source)
        self.ms = max(int(seconds * 1000), 1)
        self.clock = clock
        self.valid_until = 0.0
        self.taken_at: float | None = None
        """Clock time this holder last took the lease (not renewed it)."""

    def held(self) -> bool:
        return self.clock() < self.valid_until

    def refresh(self) -> bool:
        """Take the lease if free, renew it if ours: whether it is held now. When Redis does
        not answer, a held lease stays trusted only until it may have expired."""
        was = self.held()
        started = self.clock()
        try:
            ok = bool(
                script(self.client, "lease", PACKAGE)(keys=[self.key], args=[self.holder, self.ms])
            )
        except redis.RedisError:
            return self.held()  # trusted until it may have expired, not longer
        if ok:
            self.valid_until = started + self.ms / 1000 * SAFETY
            if not was:
                self.taken_at = started
        else:  # another holder has it: ours is gone whatever the local clock says
            self.valid_until = 0.0
        return ok

    def release(self) -> None:
        self.valid_until = 0.0
        try:
            script(self.client, "lease_release", PACKAGE)(keys=[self.key], args=[self.holder])
        except redis.RedisError:
            pass  # it expires by itself

    def holder_now(self) -> str | None:
        raw = self.client.get(self.key)
        return raw.decode() if isinstance(raw, bytes) else raw
