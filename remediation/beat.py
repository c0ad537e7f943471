"""The beat scheduler: celery-redbeat's, with slots on every firing, interval entries on a
spread grid, and nothing sent by a beat that no longer holds the lock (remediation.slots)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from celery.beat import ScheduleEntry
from celery.schedules import crontab, schedstate
from celery.utils.log import get_logger
from redbeat.schedulers import (
    LUA_EXTEND_TO_SCRIPT,
    RedBeatScheduler,
    RedBeatSchedulerEntry,
    get_redis,
)
from redis.exceptions import LockError, RedisError

from remediation import signing, slots
from remediation.settings import get_settings

logger = get_logger("celery.beat")
OFFSETS_CONF = "remediation_slot_offsets"
"""app.conf key: {entry name: offset in seconds} for interval entries (celery_app)."""


def now() -> float:
    """The clock the grid is read with (a function, so a test can move it)."""
    return time.time()


class SlotEntry(RedBeatSchedulerEntry):  # type: ignore[misc]
    """An entry whose interval schedule fires on ``offset + k * every`` (epoch seconds)."""

    def _offset(self) -> float | None:
        """The entry's offset on its grid; None for crontab and other schedules."""
        if not slots.is_interval(self.schedule):
            return None
        offsets = self.app.conf.get(OFFSETS_CONF) or {}
        return float(offsets.get(self.name, 0))

    def _every(self) -> float:
        return float(self.schedule.run_every.total_seconds())

    def is_due(self) -> Any:
        offset = self._offset()
        if offset is None or not self.enabled:
            return super().is_due()
        every, at = self._every(), now()
        slot = slots.grid_slot(at, every, offset)
        next_in = slot + every - at
        last = self.last_run_at.timestamp() if self.last_run_at else None
        # missed slots (an outage) collapse into one run at once, named by the latest slot
        return schedstate(last is None or last < slot, next_in)

    @property
    def due_at(self) -> datetime | None:
        offset = self._offset()
        if offset is None:
            return super().due_at  # type: ignore[no-any-return]
        if self.last_run_at is None:
            return self._default_now()  # type: ignore[no-any-return]
        every = self._every()
        following = slots.grid_slot(self.last_run_at.timestamp(), every, offset) + every
        return datetime.fromtimestamp(following, tz=UTC)

    def slot(self) -> float:
        """The due time this firing is for (call before the entry is advanced)."""
        offset = self._offset()
        if offset is not None:
            return slots.grid_slot(now(), self._every(), offset)
        if isinstance(self.schedule, crontab) and self.last_run_at is not None:
            return slots.crontab_slot(self.schedule, self.last_run_at)
        return now()  # never run before: the slot is now


class SlotScheduler(RedBeatScheduler):  # type: ignore[misc]
    """RedBeatScheduler that signs a slot header onto each firing and confirms it still
    holds the lock before each send (a beat whose lock was taken sends nothing).

    Redis not answering (a beat cut off from the network) is not fatal: the beat sends
    nothing until Redis answers again, then goes on if its lock is still its own, or waits
    as a standby. redbeat alone lets the beat process die there: a RedisError from the lock
    extension ends the loop, and a standby whose blocking acquire at start failed is left
    with no lock at all (redbeat then crashes on ``None.extend``)."""

    Entry = SlotEntry

    def __init__(self, app: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(app, *args, **kwargs)
        self._key = signing.key_of(get_settings())
        self.lost = False
        self.unreachable = False

    def _owned(self) -> bool:
        try:
            return bool(self.lock.owned())
        except RedisError as exc:
            logger.error("beat: cannot confirm the lock (%s): not sending", exc)
            return False

    def _unreachable(self, doing: str, exc: Exception) -> None:
        """Log once per outage that Redis does not answer; nothing is sent meanwhile."""
        if not self.unreachable:
            logger.error("beat: Redis does not answer (%s: %s): sending nothing", doing, exc)
        self.unreachable = True

    def _take(self) -> bool:
        """No lock yet (the blocking acquire at start failed: Redis did not answer): make
        one as redbeat does and try, without waiting, to take it."""
        try:
            client = get_redis(self.app)
            lock = client.lock(self.lock_key, timeout=self.lock_timeout, sleep=self.max_interval)
            lock.lua_extend = client.register_script(LUA_EXTEND_TO_SCRIPT)
            taken = bool(lock.acquire(blocking=False))
        except RedisError as exc:
            self._unreachable("taking the lock", exc)
            return False
        self.unreachable = False
        if taken:
            logger.info("beat: Acquired lock")
            self.lock, self.lost = lock, False
        return taken

    def _hold(self) -> bool:
        """Extend the lock; if it is gone, try once to take it again (a standby's poll)."""
        if self.lock is None:
            return self._take()
        try:
            self.lock.extend(int(self.lock_timeout))
            if self.lost or self.unreachable:
                logger.warning("beat: holds the lock again")
            self.lost = self.unreachable = False
            return True
        except LockError:
            pass
        except RedisError as exc:
            self._unreachable("extending the lock", exc)
            return False
        self.unreachable = False
        if not self.lost:
            logger.error("beat: lost the lock (another beat holds it): sending nothing")
        self.lost = True
        try:
            if self.lock.acquire(blocking=False):
                logger.warning("beat: Acquired lock again")
                self.lost = False
                return True
        except (LockError, RedisError) as exc:
            logger.error("beat: cannot take the lock: %s", exc)
        return False

    def tick(self, min: Any = min, **kwargs: Any) -> Any:
        if not self.lock_key:
            return super().tick(min=min, **kwargs)
        if not self._hold():
            return self.max_interval
        remaining = []
        try:
            for entry in self.schedule.values():
                next_time_to_run = self.maybe_due(entry, **self._maybe_due_kwargs)
                if next_time_to_run:
                    remaining.append(next_time_to_run)
        except RuntimeError:
            logger.debug("beat: RuntimeError", exc_info=True)
        except RedisError as exc:  # reading the schedule: the next tick tries again
            self._unreachable("reading the schedule", exc)
            return self.max_interval
        return min([*remaining, self.max_interval])

    def close(self) -> None:
        try:
            super().close()
        except RedisError as exc:  # the lock expires on its own
            logger.error("beat: could not release the lock: %s", exc)

    def maybe_due(self, entry: ScheduleEntry, **kwargs: Any) -> Any:
        if self.lost:
            return self.max_interval
        is_due, next_time_to_run = entry.is_due()
        if not is_due:
            return next_time_to_run
        if self.lock_key and (self.lock is None or not self._owned()):
            self.lost = True
            logger.error(
                "beat: lost the lock mid-tick: not sending %s or anything else", entry.name
            )
            return self.max_interval
        return super().maybe_due(entry, **kwargs)

    def apply_async(
        self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any
    ) -> Any:
        every = entry._every() if slots.is_interval(entry.schedule) else 0
        mark = slots.header(self._key, entry.name, entry.slot(), every)
        options = dict(entry.options or {})
        options["headers"] = {**(options.get("headers") or {}), slots.SLOT_HEADER: mark}
        entry.options = options
        return super().apply_async(entry, producer, advance, **kwargs)
