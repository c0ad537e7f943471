"""What the runner tells a human: notifications through the notify action, and warnings
about calls that did not run, rate-limited per action.

The runner's only outgoing messages besides the playbook's actions: every one goes through
its dispatcher (Celery or in-process) as a `remediation.act.notify` call, which has its own
guards and deduplicates per incident and kind.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from remediation.calls import ActionCall
from remediation.clients import redis as redis_clients
from remediation.context import Trigger
from remediation.guards import keys
from remediation.redact import bounded_text
from remediation.registry import ACTION_PREFIX
from remediation.settings import Settings

Dispatch = Callable[[str, dict[str, Any], Trigger | None], None]
"""dispatch(task_name, kwargs, trigger) sends an action for execution (Celery or in-process)."""
NOTIFY_TEXT_MAX = 4000
"""The notify action's text bound; longer texts are cut, never rejected."""


class Notices:
    """Notifications of one runner, sent through its dispatcher."""

    def __init__(self, settings: Settings, dispatch: Dispatch, log: Any) -> None:
        self.settings = settings
        self.dispatch = dispatch
        self.log = log

    def notify(
        self,
        kind: str,
        incident: str,
        text: str,
        severity: str = "high",
        approval: str | None = None,
    ) -> None:
        """Send a notification through the notify action (deduplicated per incident + kind).
        With ``approval``, the notify action adds that approval's signed links when it sends
        (the links never travel as task arguments)."""
        kwargs: dict[str, Any] = {
            "text": bounded_text(text, NOTIFY_TEXT_MAX),
            "incident": incident[:200],
            "kind": kind,
            "severity": severity,
        }
        if approval is not None:
            kwargs["approval"] = approval
        self.dispatch(ACTION_PREFIX + "notify", kwargs, None)

    def once(self, kind: str, call: ActionCall, text: str) -> None:
        """A warning about calls that did not run (refused, unresolvable): at most one per
        action and kind per REMEDIATION_NOTIFY__WINDOW_SECONDS, however many calls."""
        if call.spec.name == "notify":
            return
        try:
            first = redis_clients.state(self.settings).set(
                keys.notice(kind, call.spec.name),
                "1",
                nx=True,
                ex=self.settings.notify.window_seconds,
            )
        except Exception as exc:  # no state: stay quiet rather than page once per call
            self.log.warning("notice state unavailable", error=str(exc))
            return
        if first:
            self.notify(f"action_{kind}", call.notice_incident(kind), text, "warning")
