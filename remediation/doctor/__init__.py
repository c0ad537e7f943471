"""`remediation doctor`: will every configured target and every action the playbook could send
to it work when needed? Read-only probes, each answering with ``Result`` rows (✓, ✗ with the
fix, or "cannot tell").

One module per area (``postgres``, ``redis``, ``docker``, ``prometheus``, ``http``, ``folders``,
``webhook``, ``schedule``), each exposing ``probe(settings) -> list[Result]``. ``run`` (in
``runner``) calls them all, each bounded in time, an exception becoming a ✗ row, and decides
the exit code: a ✗ blocks when an enabled action needs it (``needed_by``) or when nothing names
a need (the core: audit database, state Redis, schedule).
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["ok", "fail", "unknown"]

# Each probe's network calls use at most this many seconds (connect and read).
PROBE_TIMEOUT = 5.0

SEND_TEST: ContextVar[bool] = ContextVar("SEND_TEST", default=False)
"""True under `remediation doctor --send-test`: a probe that can send a test message (the
webhook) sends one; otherwise nothing is sent. ``runner.run`` sets it in each probe's thread."""


@dataclass(frozen=True)
class Result:
    """One line of the doctor's table.

    ``area``: postgres, redis, docker, prometheus, http, proxy, folder, webhook, schedule.
    ``target``: the configured name it is about (``app``, ``state``, ``backup_dir``...).
    ``what``: what was checked, for the operator ("VACUUM on public.price_history").
    ``status``: ok / fail / unknown ("cannot tell": say why in ``detail``).
    ``detail``: what was seen (never a secret: DSNs and URLs go through ``redact``).
    ``fix``: for fail and unknown, what to do ("GRANT pg_signal_backend TO app_user").
    ``needed_by``: the actions that need this; empty for the core (always needed).
    """

    area: str
    target: str
    what: str
    status: Status
    detail: str = ""
    fix: str = ""
    needed_by: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def as_dict(self) -> dict[str, Any]:
        return {
            "area": self.area,
            "target": self.target,
            "what": self.what,
            "status": self.status,
            "detail": self.detail,
            "fix": self.fix,
            "needed_by": list(self.needed_by),
        }


def ok(
    area: str, target: str, what: str, detail: str = "", *, needed_by: tuple[str, ...] = ()
) -> Result:
    return Result(area, target, what, "ok", detail, "", needed_by)


def fail(
    area: str, target: str, what: str, detail: str, fix: str, *, needed_by: tuple[str, ...] = ()
) -> Result:
    return Result(area, target, what, "fail", detail, fix, needed_by)


def unknown(
    area: str, target: str, what: str, detail: str, fix: str, *, needed_by: tuple[str, ...] = ()
) -> Result:
    return Result(area, target, what, "unknown", detail, fix, needed_by)
