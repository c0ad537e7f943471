"""notify against real local HTTP receivers: bounded in time and in what it reads."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from remediation.actions.notify import RESPONSE_MAX_BYTES, NotifyParams, notify
from remediation.context import ActionContext, CheckContext
from remediation.errors import Refused
from remediation.findings import ActionResult
from remediation.guards import keys
from remediation.logging import get_logger
from remediation.registry import get_action
from tests.support.http_doubles import WebhookReceiver

TIMEOUT = 1.0
ENDLESS_SECONDS = 30.0
"""How long a misbehaving receiver keeps going when nobody hangs up: far past the bound."""


class Receiver:
    """A real HTTP/1.1 server on 127.0.0.1 that reads the request, then answers as told:
    'dribble_body' (headers, then a byte every 50 ms), 'dribble_headers' (a header line
    that never ends, a byte every 50 ms) or 'flood' (headers, then an endless fast body)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.2)
        self.bodies: list[dict[str, Any]] = []
        self.sent = 0
        self.hung_up = threading.Event()  # the client closed the connection on us
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.getsockname()[1]}/hooks/secret-path"

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            with conn:
                self._answer(conn)

    def _request(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(4096)
        head, body = data.split(b"\r\n\r\n", 1)
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(body) < length:
            body += conn.recv(4096)
        self.bodies.append(json.loads(body))

    def _answer(self, conn: socket.socket) -> None:
        self._request(conn)
        start = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
        first, piece, pause = {
            "dribble_body": (start + b"\r\n", b"x", 0.05),
            "dribble_headers": (start + b"X-Slow: ", b"a", 0.05),
            "flood": (start + b"\r\n", b"x" * 65536, 0.0),
        }[self.mode]
        until = time.monotonic() + ENDLESS_SECONDS
        try:
            conn.sendall(first)
            while time.monotonic() < until and not self.stopping.is_set():
                conn.sendall(piece)
                self.sent += len(piece)
                time.sleep(pause)
        except OSError:  # broken pipe / reset: the client hung up
            self.hung_up.set()

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.server.close()


def send(s: Any, incident: str) -> tuple[ActionResult, float]:
    """notify once; the result and the seconds it took."""
    started = time.monotonic()
    result = notify(
        ActionContext(s, get_logger()), NotifyParams(text="disk full", incident=incident)
    )
    return result, time.monotonic() - started


@pytest.fixture
def hook_env(settings_env: Any, r: redis.Redis) -> Iterator[Any]:
    """settings_env with the notify deadline at TIMEOUT seconds."""

    def apply(url: str) -> Any:
        return settings_env(
            REMEDIATION_NOTIFY__WEBHOOK_URL=url, REMEDIATION_NOTIFY__TIMEOUT_SECONDS=str(TIMEOUT)
        )

    yield apply


def test_an_endless_slow_body_is_cut_at_the_deadline(hook_env: Any) -> None:
    """A receiver that answers 200 and then dribbles a body forever: notify returns within
    the deadline (plus slack), reports the answer as cut, and hangs up on the receiver."""
    with Receiver("dribble_body") as receiver:
        result, took = send(hook_env(receiver.url), "slow-body")
        assert took < TIMEOUT + 2
        assert result.ok and result.summary.startswith("sent (200); answer still arriving")
        assert result.detail["cut"] == "deadline" and result.detail["complete"] is False
        assert receiver.bodies[0]["text"] == "disk full"
        assert receiver.hung_up.wait(5)


def test_headers_that_never_end_fail_at_the_deadline(hook_env: Any, r: redis.Redis) -> None:
    """A receiver that never finishes its headers: notify fails within the deadline with a
    summary naming the setting, and clears its dedupe mark so the next attempt sends."""
    with Receiver("dribble_headers") as receiver:
        result, took = send(hook_env(receiver.url), "slow-headers")
        assert took < TIMEOUT + 2
        assert not result.ok
        assert result.summary == (
            f"webhook failed: no answer within {TIMEOUT:g}s (REMEDIATION_NOTIFY__TIMEOUT_SECONDS)"
        )
        assert not r.exists(keys.notified("slow-headers", "notice"))
        assert receiver.hung_up.wait(5)


def test_a_flooding_receiver_is_read_up_to_64_kib(hook_env: Any) -> None:
    """A receiver that sends an endless body as fast as it can: at most 64 KiB are read,
    the send counts as done, and the connection is closed."""
    with Receiver("flood") as receiver:
        result, _ = send(hook_env(receiver.url), "flood")
        assert result.ok and result.detail["read_bytes"] == RESPONSE_MAX_BYTES
        assert result.detail["cut"] == "size" and "cut after 65536 bytes" in result.summary
        assert receiver.hung_up.wait(5)


def test_a_plain_receiver_gets_the_message_once(
    hook_env: Any, webhook: WebhookReceiver, r: redis.Redis
) -> None:
    """A well-behaved receiver gets the JSON body, its whole answer is read, and the same
    incident is not sent again within the window; an error status fails and is retried."""
    s = hook_env(webhook.url)
    before = len(webhook.bodies)
    result, _ = send(s, "plain")
    assert result.ok and result.detail == {
        "status": 200,
        "read_bytes": 0,
        "complete": True,
        "cut": None,
    }
    assert webhook.bodies[before:] == [
        {"text": "disk full", "incident": "plain", "kind": "notice", "severity": "high"}
    ]
    again, _ = send(s, "plain")
    assert again.summary == "already sent within the window" and len(webhook.bodies) == before + 1
    webhook.status = 500
    try:
        failed, _ = send(s, "plain-500")
    finally:
        webhook.status = 200
    assert (failed.ok, failed.summary) == (False, "webhook failed: HTTP 500")
    assert not r.exists(keys.notified("plain-500", "notice"))


def test_the_target_is_always_self(settings_env: Any) -> None:
    """notify's resolve step turns 'SELF' into 'self' and refuses any other target."""
    ctx = CheckContext(settings_env(), get_logger())
    resolve = get_action("notify").resolve
    assert resolve is not None
    params = NotifyParams(target="SELF", text="t", incident="i")
    assert resolve(ctx, params).params.target == "self"
    with pytest.raises(Refused, match="always 'self'"):
        resolve(ctx, NotifyParams(target="app", text="t", incident="i"))
