"""The notification webhook (REMEDIATION_NOTIFY__WEBHOOK_URL): well-formed, host resolvable.

Nothing is sent unless asked (``send_test``, the CLI's ``--send-test``): then one POST of a
harmless test message, with the notify action's own bounded client. The URL is a secret (its
path is the credential of a Slack-style hook): rows show its scheme and host only.
"""

from __future__ import annotations

import json
import socket
import threading
import urllib.parse
from typing import Any

from remediation.actions.notify import DeadlineExceeded, post_bounded
from remediation.doctor import PROBE_TIMEOUT, SEND_TEST, Result, fail, ok
from remediation.settings import Settings

AREA = "webhook"
VAR = "REMEDIATION_NOTIFY__WEBHOOK_URL"
NEEDED_BY = ("notify",)
TEST_MESSAGE = {
    "text": "remediation doctor: test message (nothing is wrong)",
    "kind": "doctor_test",
    "severity": "info",
}


def resolve(host: str, port: int, timeout: float = PROBE_TIMEOUT) -> list[str] | str:
    """The addresses of host, or why not (a string): getaddrinfo in a thread, given up on
    after ``timeout`` seconds (it has no timeout of its own; the thread ends by itself)."""
    found: dict[str, Any] = {}

    def run() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            found["addrs"] = sorted({str(info[4][0]) for info in infos})
        except (OSError, UnicodeError) as exc:
            found["error"] = f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or exc}"

    thread = threading.Thread(target=run, name=f"doctor-resolve-{host[:40]}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return f"no answer from the resolver within {timeout:g} s"
    return found.get("addrs") or found.get("error") or "no address"


def probe(settings: Settings, *, send_test: bool | None = None) -> list[Result]:
    """Rows: well-formed, resolvable, and (send_test, by default `doctor --send-test`) the
    test message's answer."""
    if send_test is None:
        send_test = SEND_TEST.get()
    secret = settings.notify.webhook_url
    if secret is None:
        return [ok(AREA, "webhook", "configured", f"{VAR} unset: notifications are logged only")]
    url = secret.get_secret_value()
    parts, problem = _parse(url)
    if parts is None:
        fix = f"set {VAR} to an http(s)://host/... URL"
        return [fail(AREA, "webhook", "URL well-formed", problem, fix, needed_by=NEEDED_BY)]
    shown = f"{parts.scheme}://{parts.hostname}"
    rows = [ok(AREA, shown, "URL well-formed", needed_by=NEEDED_BY)]
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addrs = resolve(parts.hostname or "", port)
    if isinstance(addrs, str):
        fix = f"correct the host of {VAR} or the machine's DNS"
        rows.append(fail(AREA, shown, "host resolves", addrs, fix, needed_by=NEEDED_BY))
        return rows
    rows.append(ok(AREA, shown, "host resolves", ", ".join(addrs[:4]), needed_by=NEEDED_BY))
    if send_test:
        rows.append(_send(url, shown, settings.notify.timeout_seconds))
    return rows


def _parse(url: str) -> tuple[urllib.parse.SplitResult | None, str]:
    """The split URL, or None and what is wrong (never the URL itself)."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return None, "not a URL (or a bad port)"
    if parts.scheme not in ("http", "https"):
        return None, f"scheme {parts.scheme[:10]!r} is not http or https"
    if not parts.hostname:
        return None, "no host"
    return parts, ""


def _send(url: str, shown: str, timeout: float) -> Result:
    what = "test message delivered"
    body = json.dumps(TEST_MESSAGE).encode()
    try:
        answer = post_bounded(url, body, min(timeout, PROBE_TIMEOUT))
    except DeadlineExceeded:
        why = f"no answer within {min(timeout, PROBE_TIMEOUT):g} s"
        return fail(AREA, shown, what, why, f"check {VAR}", needed_by=NEEDED_BY)
    except Exception as exc:  # any failure is a row; the message may carry the URL: not shown
        why = f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or 'failed'}"
        return fail(AREA, shown, what, why, f"check {VAR}", needed_by=NEEDED_BY)
    if 200 <= answer.status < 300:
        return ok(AREA, shown, what, f"HTTP {answer.status}", needed_by=NEEDED_BY)
    fix = f"check {VAR} (the hook may be revoked or its path wrong)"
    return fail(AREA, shown, what, f"HTTP {answer.status}", fix, needed_by=NEEDED_BY)
