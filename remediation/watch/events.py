"""What an event source hands the watcher: a hint that names the check to run now.

An event never acts. It names a check (``check``), the narrowed kwargs of that check for the
resource it saw (``params``, validated by the check's own model on the worker like any other
call) and a coalescing key (``resource``): events for one resource within the watcher's
minimum interval become one check run. ``detail`` is a few small facts kept with the check
run in the audit (the event that caused it), bounded by :func:`bounded`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

MAX_DETAIL_ITEMS = 16
MAX_DETAIL_TEXT = 200
CATCH_UP = "catch_up"
"""The kind of the events a source makes after it (re)connects: a whole sweep of its checks,
so events missed while no watcher listened are found by their effect."""


def bounded(detail: dict[str, Any]) -> dict[str, Any]:
    """At most MAX_DETAIL_ITEMS scalar facts, strings cut to MAX_DETAIL_TEXT characters."""
    out: dict[str, Any] = {}
    for key, value in list(detail.items())[:MAX_DETAIL_ITEMS]:
        if value is None or isinstance(value, bool | int | float):
            out[str(key)[:64]] = value
        else:
            out[str(key)[:64]] = str(value)[:MAX_DETAIL_TEXT]
    return out


@dataclass(frozen=True)
class Event:
    """One event, as the check it asks for."""

    source: str
    """The source's name: docker, celery, logs."""
    kind: str
    """What happened, in the source's words: die, oom, health_status: unhealthy,
    worker-offline, heartbeat_gap, task_failures, grew, catch_up."""
    check: str
    """The check to run (remediation.check.<check>)."""
    resource: str
    """Coalescing key: events for one resource within the minimum interval are one check."""
    params: dict[str, Any] = field(default_factory=dict)
    """The check's kwargs (narrowed to the resource where the check allows it)."""
    at: float = 0.0
    """When it happened (epoch seconds, the source's clock; 0 when unknown)."""
    detail: dict[str, Any] = field(default_factory=dict)


class Source(Protocol):
    """A stream of events. The watcher calls, in its own thread per source, while it holds
    the source's lease: ``connect()`` (raise on failure: the watcher backs off and calls it
    again), then ``catch_up()`` (the events of a whole sweep), then iterates ``events()``
    until it ends or raises (a dropped stream: back-off, connect, catch up again).
    ``close()`` may be called from another thread (the lease was lost, the watcher stops):
    the iteration must then end promptly."""

    name: str

    def connect(self) -> None: ...

    def catch_up(self) -> list[Event]: ...

    def events(self) -> Iterator[Event]: ...

    def close(self) -> None: ...


class Closable:
    """A close flag for sources whose iteration polls (logs, Celery events)."""

    def __init__(self) -> None:
        self.closed = threading.Event()

    def close(self) -> None:
        self.closed.set()
