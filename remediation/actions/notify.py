"""Tell a human: JSON to a Slack-compatible webhook, each incident once per window.

The POST is bounded whatever the receiver does: one deadline
(REMEDIATION_NOTIFY__TIMEOUT_SECONDS) covers connect, send and read, and at most
RESPONSE_MAX_BYTES of the answer are read. A per-read timeout alone would not do: a
receiver that sends a byte just inside it, forever, would hold the worker forever.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from remediation import signing
from remediation.approvals import links as approval_links
from remediation.approvals import state as approval_state
from remediation.context import ActionContext, CheckContext, Resolved
from remediation.findings import ActionResult
from remediation.guards import keys
from remediation.params import ActionParams
from remediation.registry import action
from remediation.resolve import canonical, self_target

RESPONSE_MAX_BYTES = 64 * 1024
"""What is read of a webhook's answer; the rest is never read (the connection is closed)."""
_CHUNK = 16 * 1024


class NotifyParams(ActionParams):
    text: str = Field(min_length=1, max_length=4000)
    incident: str = Field(min_length=1, max_length=200, description="dedupe key")
    kind: str = Field("notice", min_length=1, max_length=64)
    severity: Literal["info", "warning", "high", "critical"] = "high"
    approval: str | None = Field(
        None,
        min_length=16,
        max_length=16,
        pattern=r"^[0-9a-f]{16}$",
        description="an approval the text asks for: its signed approve/deny links are added"
        " when sent (REMEDIATION_APPROVALS__LINK_BASE_URL), never stored",
    )


def _resource(params: NotifyParams) -> str:
    return f"{params.incident}:{params.kind}"


def _resolve(ctx: CheckContext, params: NotifyParams) -> Resolved:
    """Notifications go to the configured webhook from this worker: the target is "self"."""
    return canonical(params, target=self_target(params.target, "notify"))


class DeadlineExceeded(Exception):
    """The webhook did not finish answering within the deadline."""


@dataclass
class Answer:
    """What the webhook said, as far as it was read."""

    status: int
    read_bytes: int
    complete: bool  # the whole answer was read (not cut at the size cap or the deadline)
    cut: str = ""  # "size" | "deadline" when not complete


class _Watchdog:
    """Shuts the connection's socket down at the deadline, so a read blocked in the middle
    of headers or body returns at once (a socket timeout alone restarts on every byte)."""

    def __init__(self, conn: http.client.HTTPConnection, seconds: float) -> None:
        self.conn, self.fired = conn, False
        self.timer = threading.Timer(seconds, self._fire)
        self.timer.daemon = True

    def _fire(self) -> None:
        self.fired = True
        sock = self.conn.sock
        if sock is not None:  # the plain socket's shutdown: a TLS one keeps its state
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def __enter__(self) -> _Watchdog:
        self.timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.timer.cancel()


def _connection(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    """A connection to the URL's host (not yet opened) and the request path with query."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "", parts.port
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if parts.scheme == "https":
        context = ssl.create_default_context()
        return http.client.HTTPSConnection(host, port, timeout=timeout, context=context), path
    if parts.scheme == "http":
        return http.client.HTTPConnection(host, port, timeout=timeout), path
    raise ValueError("the webhook URL is neither http:// nor https://")


def post_bounded(url: str, body: bytes, timeout: float) -> Answer:
    """POST body as JSON; connect, send and read all within ``timeout`` seconds, reading at
    most RESPONSE_MAX_BYTES of the answer. DeadlineExceeded when no status line and
    headers arrived in time; OSError / HTTPException for other failures (their messages
    may name the host, never the path)."""
    deadline = time.monotonic() + timeout
    conn, path = _connection(url, timeout)
    headers = {"Content-Type": "application/json", "User-Agent": "remediation-notify"}
    try:
        with _Watchdog(conn, timeout) as watchdog:
            try:
                conn.request("POST", path, body=body, headers=headers)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException):
                if watchdog.fired or time.monotonic() >= deadline:
                    raise DeadlineExceeded from None
                raise
            if watchdog.fired:  # the shutdown ended the headers early: they are not whole
                raise DeadlineExceeded
            answer = Answer(resp.status, 0, False)
            _read_body(conn, resp, answer, deadline, watchdog)
            return answer
    finally:
        conn.close()


def _read_body(
    conn: http.client.HTTPConnection,
    resp: http.client.HTTPResponse,
    answer: Answer,
    deadline: float,
    watchdog: _Watchdog,
) -> None:
    """Read the answer in chunks until its end, the size cap or the deadline."""
    while True:
        room = RESPONSE_MAX_BYTES - answer.read_bytes
        left = deadline - time.monotonic()
        if room <= 0 or left <= 0 or watchdog.fired:
            answer.cut = "size" if room <= 0 else "deadline"
            return
        if conn.sock is not None:
            conn.sock.settimeout(left)
        try:
            chunk = resp.read1(min(_CHUNK, room))
        except (OSError, http.client.HTTPException):
            if watchdog.fired or time.monotonic() >= deadline:
                answer.cut = "deadline"
                return
            raise
        if not chunk:
            if watchdog.fired:  # the shutdown looks like an end: it is not one
                answer.cut = "deadline"
            else:
                answer.complete = True
            return
        answer.read_bytes += len(chunk)


@action(
    "notify",
    resolve=_resolve,
    resource=_resource,
    breaker=False,
    lock=False,
    verify=False,
    flap=False,
)
def notify(ctx: ActionContext, params: NotifyParams) -> ActionResult:
    """POST {"text", "incident", "kind", "severity"} to REMEDIATION_NOTIFY__WEBHOOK_URL.

    Sent on action failure, unverified fix, breaker opening and unavailable guard state.
    The same incident and kind is sent once per REMEDIATION_NOTIFY__WINDOW_SECONDS.
    One deadline, REMEDIATION_NOTIFY__TIMEOUT_SECONDS, covers connecting, sending and
    reading the answer, of which at most 64 KiB are read: a receiver that answers slowly
    or endlessly cannot hold the worker. The target is always "self"."""
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
    message = params.model_dump(mode="json", exclude={"target"}, exclude_none=True)
    if params.approval is not None and (links := _links(ctx, params.approval)):
        message.update(links)  # and in the text, which is what a chat shows
        message["text"] += f"\nApprove: {links['approve_url']}\nDeny: {links['deny_url']}"
    body = json.dumps(message).encode()
    answer: Answer | None = None
    error: str | None
    try:
        answer = post_bounded(cfg.webhook_url.get_secret_value(), body, cfg.timeout_seconds)
    except DeadlineExceeded:
        error = f"no answer within {cfg.timeout_seconds:g}s (REMEDIATION_NOTIFY__TIMEOUT_SECONDS)"
    except (OSError, http.client.HTTPException, ValueError) as exc:  # never echo the URL
        error = type(exc).__name__
    else:
        error = None if answer.status < 400 else f"HTTP {answer.status}"
    if error or answer is None:
        with contextlib.suppress(Exception):  # let the next attempt send it
            ctx.state.delete(dedupe)
        return ActionResult(ok=False, changed=False, summary=f"webhook failed: {error}")
    return ActionResult(summary=_sent(answer, cfg.timeout_seconds), detail=_detail(answer))


def _links(ctx: ActionContext, approval_id: str) -> dict[str, str]:
    """The approval's signed approve/deny links, added to the text sent (made here, at
    sending, so no task argument, audit row or log line ever holds one); none while the
    approval is not pending or no REMEDIATION_APPROVALS__LINK_BASE_URL is set."""
    base = ctx.settings.approvals.link_base_url
    if base is None:
        return {}
    found = approval_state.get(ctx.state, approval_id)
    if found is None or found.state != approval_state.PENDING:
        return {}
    key = signing.key_of(ctx.settings)
    expires = int(found.expires_at)
    approve = approval_links.make(key, base, approval_id, "approve", expires)
    deny = approval_links.make(key, base, approval_id, "deny", expires)
    return {"approve_url": approve, "deny_url": deny}


def _sent(answer: Answer, timeout: float) -> str:
    summary = f"sent ({answer.status})"
    if answer.cut == "size":
        summary += f"; answer cut after {RESPONSE_MAX_BYTES} bytes (not read further)"
    elif answer.cut == "deadline":
        summary += (
            f"; answer still arriving at the {timeout:g}s deadline, cut after"
            f" {answer.read_bytes} bytes"
        )
    return summary


def _detail(answer: Answer) -> dict[str, object]:
    return {
        "status": answer.status,
        "read_bytes": answer.read_bytes,
        "complete": answer.complete,
        "cut": answer.cut or None,
    }
