"""Events -> checks: per-resource coalescing and a rate bound over all sources. Pure logic.

Per resource (an event's ``resource``), a leading-and-trailing throttle: the first event
fires a check at once; events within the resource's minimum interval after a check are
merged into one pending check, fired when the interval has passed (the trailing edge), so a
fault that announces itself twice is still looked at after the second announcement. Over
all resources, a token bucket (``rate`` checks a second, ``burst`` at once): a check with
no token waits for one, merged with whatever else arrives for its resource meanwhile.
At most ``max_pending`` resources wait; an event for yet another one is dropped
("overflow") and :attr:`Coalescer.overflowed` names its source, so the watcher can send
that source's catch-up sweep once tokens are back: an event dropped is never a fault lost.

Accounting: every event offered is exactly one of: the first of a check (``triggered``
once the check fires), merged into a pending check (``coalesced``), or ``dropped``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from remediation.watch.events import Event

OVERFLOW = "overflow"


@dataclass
class Fire:
    """One check to send, and the events it answers."""

    event: Event
    """The latest event merged (its params are the check's kwargs)."""
    first: Event
    """The first: its time is where the fault-to-check latency starts."""
    received: float
    """Clock time the first event was offered."""
    events: int = 1
    kinds: set[str] = field(default_factory=set)

    def merge(self, ev: Event) -> None:
        self.event = ev
        self.events += 1
        self.kinds.add(ev.kind)


@dataclass
class _Resource:
    interval: float
    last_fire: float = float("-inf")
    pending: Fire | None = None
    due_at: float = 0.0


class Coalescer:
    def __init__(
        self,
        *,
        interval_of: Callable[[Event], float],
        rate: float,
        burst: int,
        max_pending: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval_of, self.rate, self.burst = interval_of, rate, burst
        self.max_pending, self.clock = max_pending, clock
        self.tokens, self._refilled = float(burst), clock()
        self._resources: dict[str, _Resource] = {}
        self._pending = 0
        self.counts: Counter[tuple[str, str]] = Counter()
        """(source, what) -> events: received, triggered, coalesced, dropped:<why>."""
        self.overflowed: set[str] = set()

    # --- tokens -------------------------------------------------------------------------

    def _refill(self, now: float) -> None:
        self.tokens = min(float(self.burst), self.tokens + (now - self._refilled) * self.rate)
        self._refilled = now

    def _take(self, now: float) -> bool:
        self._refill(now)
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    # --- events in, checks out ----------------------------------------------------------

    def offer(self, ev: Event, now: float | None = None) -> Fire | None:
        """The check to send at once for this event, or None (merged, waiting or dropped)."""
        now = self.clock() if now is None else now
        self.counts[(ev.source, "received")] += 1
        res = self._resources.get(ev.resource)
        if res is not None and res.pending is not None:
            res.pending.merge(ev)
            self.counts[(ev.source, "coalesced")] += 1
            return None
        if res is None:
            if self._pending >= self.max_pending:
                self.drop(ev, OVERFLOW)
                return None
            res = self._resources[ev.resource] = _Resource(self.interval_of(ev))
        due = res.last_fire + res.interval
        if now >= due and self._take(now):
            res.last_fire = now
            self.counts[(ev.source, "triggered")] += 1
            return Fire(ev, ev, now, kinds={ev.kind})
        if self._pending >= self.max_pending:
            self.drop(ev, OVERFLOW)
            return None
        res.pending, res.due_at = Fire(ev, ev, now, kinds={ev.kind}), max(due, now)
        self._pending += 1
        return None

    def drop(self, ev: Event, why: str) -> None:
        self.counts[(ev.source, f"dropped:{why}")] += 1
        if why == OVERFLOW:
            self.overflowed.add(ev.source)

    def due(self, now: float | None = None) -> list[Fire]:
        """Pending checks whose interval has passed, oldest first, as tokens allow."""
        now = self.clock() if now is None else now
        ready = sorted(
            (r for r in self._resources.values() if r.pending and r.due_at <= now),
            key=lambda r: r.due_at,
        )
        out: list[Fire] = []
        for res in ready:
            if not self._take(now):
                break
            fire = res.pending
            assert fire is not None
            res.pending, res.last_fire = None, now
            self._pending -= 1
            self.counts[(fire.first.source, "triggered")] += 1
            out.append(fire)
        self._forget(now)
        return out

    def next_due(self, now: float | None = None) -> float | None:
        """When due() may next return something (a pending check's time, or a token's)."""
        now = self.clock() if now is None else now
        times = [r.due_at for r in self._resources.values() if r.pending]
        if not times:
            return None
        self._refill(now)
        token_at = now if self.tokens >= 1 else now + (1 - self.tokens) / self.rate
        return max(min(times), token_at)

    def pending(self) -> int:
        return self._pending

    def _forget(self, now: float) -> None:
        """Resources with nothing pending whose interval is long over (the map stays bounded:
        at most max_pending waiting, plus those that fired within their interval)."""
        if len(self._resources) <= 2 * self.max_pending:
            return
        for key, res in list(self._resources.items()):
            if res.pending is None and now - res.last_fire > res.interval:
                del self._resources[key]
        if len(self._resources) > 2 * self.max_pending:  # a storm of distinct resources
            for key, res in list(self._resources.items()):
                if res.pending is None:
                    del self._resources[key]
