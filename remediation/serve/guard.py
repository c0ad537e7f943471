"""ASGI middleware in front of every route: bearer-token check, then the body size limit.

Both answer before the application reads anything: a request without a valid token is a
401 whatever its body, a body over REMEDIATION_SERVE__MAX_BODY_BYTES a 413 (by its
Content-Length, or while it streams). Neither is audited (a stranger must not be able to
fill the audit database); both are counted (remediation_intake_rejected). The web console's
paths (/console...) skip the bearer check only: they authenticate by session cookie in
remediation.serve.console; the body limit applies to them too."""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from remediation import metrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

PUBLIC = frozenset({"/openapi.json", "/healthz"})
"""Paths that need no token: the API description and a liveness probe (nothing secret)."""
CONSOLE = "/console"
"""The web console's paths (``/console`` and under it) need no bearer token: the browser has
none. The console authenticates them itself (remediation.serve.console: a signed session
cookie from a login with one of the same tokens, CSRF on every POST). Every other path,
the API, still needs the bearer token."""


LINK = re.compile(r"^/approvals/[0-9a-f]{16}/link$")
"""An approval's signed link: no bearer token (a notification's reader has none); the
signature checked by remediation.serve.approvals_api is its credential."""


def is_console(path: str) -> bool:
    return path == CONSOLE or path.startswith(CONSOLE + "/")


def is_link(path: str) -> bool:
    return bool(LINK.match(path))


def token_id(token: bytes) -> str:
    """Who a token is in the audit and the logs: a short hash, never the token."""
    return "token-" + hmac.new(b"console", token, "sha256").hexdigest()[:8]


async def problem(
    send: Send, status: int, detail: str, headers: dict[str, str] | None = None
) -> None:
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def token_ok(header: bytes | None, tokens: list[bytes]) -> bool:
    """Constant-time: every configured token is compared, whatever matched earlier."""
    if header is None or not header[:7].lower() == b"bearer ":
        return False
    return known_token(header[7:].strip(), tokens)


def known_token(given: bytes, tokens: list[bytes]) -> bool:
    """Constant-time: every configured token is compared, whatever matched earlier."""
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(given, token)
    return matched and bool(given)


class TokenAuth:
    """401 unless ``Authorization: Bearer <one of the configured tokens>``."""

    def __init__(self, app: App, tokens: list[bytes]) -> None:
        self.app, self.tokens = app, tokens
        self.api: Any = None  # the FastAPI app inside, for whoever adds routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        if scope["type"] != "http" or path in PUBLIC or is_console(path) or is_link(path):
            await self.app(scope, receive, send)
            return
        auth = dict(scope.get("headers") or []).get(b"authorization")
        if not token_ok(auth, self.tokens):
            metrics.intake_rejected("unauthorized")
            await problem(
                send, 401, "a valid bearer token is required", {"www-authenticate": "Bearer"}
            )
            return
        await self.app(scope, receive, send)


class BodyLimit:
    """413 for a body over ``limit`` bytes; the application sees the body only when it fits."""

    def __init__(self, app: App, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await self._refuse(send, 413 if length.isdigit() else 400)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._refuse(send, 413)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, sent = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send, status: int) -> None:
        metrics.intake_rejected("too_large" if status == 413 else "invalid")
        detail = (
            f"request body over {self.limit} bytes (REMEDIATION_SERVE__MAX_BODY_BYTES)"
            if status == 413
            else "Content-Length is not a number"
        )
        await problem(send, status, detail)
