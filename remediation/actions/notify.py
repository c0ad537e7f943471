"""Tell a human: JSON to a Slack-compatible webhook, each incident once per window."""

from __future__ import annotations

import contextlib
from typing import Literal

import requests
from pydantic import Field

from remediation.context import ActionContext
from remediation.findings import ActionResult
from remediation.guards import keys
from remediation.params import ActionParams
from remediation.registry import action


class NotifyParams(ActionParams):
    text: str = Field(min_length=1, max_length=4000)
    incident: str = Field(min_length=1, max_length=200, description="dedupe key")
    kind: str = Field("notice", min_length=1, max_length=64)
    severity: Literal["info", "warning", "high", "critical"] = "high"


def _resource(params: NotifyParams) -> str:
    return f"{params.incident}:{params.kind}"


@action("notify", resource=_resource, breaker=False, lock=False, verify=False, flap=False)
def notify(ctx: ActionContext, params: NotifyParams) -> ActionResult:
    """POST {"text", "incident", "kind", "severity"} to REMEDIATION_NOTIFY__WEBHOOK_URL.

    Sent on action failure, unverified fix, breaker opening and unavailable guard state.
    The same incident and kind is sent once per REMEDIATION_NOTIFY__WINDOW_SECONDS."""
    cfg = ctx.settings.notify
    if cfg.webhook_url is None:
        ctx.log.warning("notification (no webhook configured)", text=params.text)
        return ActionResult(changed=False, summary="no webhook configured; logged only")
    dedupe = keys.notified(params.incident, params.kind)
    try:
        first = ctx.state.set(dedupe, "1", nx=True, ex=cfg.window_seconds)
    except Exception:  # without dedupe state, sending twice beats staying silent
        first = True
    if not first:
        return ActionResult(changed=False, summary="already sent within the window")
    body = params.model_dump(mode="json", exclude={"target"})
    status: int | None = None
    error: str | None = None
    try:
        resp = requests.post(cfg.webhook_url.get_secret_value(), json=body,
                             timeout=cfg.timeout_seconds)  # fmt: skip
        status = resp.status_code
    except requests.RequestException as exc:  # the message embeds the URL: report the type
        error = type(exc).__name__
    else:
        error = None if resp.status_code < 400 else f"HTTP {resp.status_code}"
    if error:
        with contextlib.suppress(Exception):  # let the next attempt send it
            ctx.state.delete(dedupe)
        return ActionResult(ok=False, changed=False, summary=f"webhook failed: {error}")
    return ActionResult(summary=f"sent ({status})", detail={"status": status})
