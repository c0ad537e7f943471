"""The web console of `remediation serve` (issue 14), under /console: server-rendered pages.

Incidents (recent, and one incident's timeline), breakers with reset, pause/resume, recent
check runs, and approvals: the pending ones with their plan and Approve/Deny forms (a deny
needs a reason), and the recent decided ones. A decision goes through Approvals.decide like
the CLI's, the API's and the signed links', audited as ``console:<user>`` (the user is the
hash of the token that logged in); 404 for an unknown approval, 409 for one decided already
or expired.

Authentication: the API's bearer token does not reach a browser, so TokenAuth lets /console
through (guard.is_console) and every route here checks a session cookie instead. The cookie
is signed (itsdangerous, a key made at start-up: a restart logs everyone out), HttpOnly,
SameSite=Strict, path /console, Secure under https, and expires after
REMEDIATION_SERVE__CONSOLE_SESSION_SECONDS. It is issued by the login form, which compares
the token given with REMEDIATION_SERVE__TOKENS in constant time (guard.known_token). Every
session, logged in or not, carries a CSRF token; every POST (login included) must send it
back as the form field ``csrf``, else 403 and nothing is done.

Nothing secret is rendered: every value printed by a template passes through
redact.redact_text (the Jinja2 ``finalize`` hook), autoescaping is on for every template.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer
from jinja2 import Environment, FileSystemLoader, select_autoescape

from remediation import incident_report, report
from remediation.approvals import Approvals
from remediation.approvals.state import valid_id as valid_approval_id
from remediation.logging import get_logger
from remediation.redact import redact, redact_text
from remediation.serve.guard import CONSOLE, known_token, token_id
from remediation.settings import Settings

log = get_logger("remediation.serve.console")
T = TypeVar("T")
COOKIE = "remediation_console"
RECENT_CHECK_RUNS = 50
INCIDENT_WINDOW = timedelta(days=7)
MAX_FIELD = 500
"""Characters a form field may have; longer is a 400."""
MAX_PAUSE_SECONDS = 7 * 86400
RECENT_APPROVALS = 50

_CHECK_RUNS = """
    SELECT id, check_name, target, purpose, status, error, findings_count, started_at,
           finished_at
    FROM check_runs ORDER BY started_at DESC, id DESC LIMIT %(limit)s
"""


class Refused(Exception):
    """A client error shown as a page: status and a message (never a 500)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _finalize(value: Any) -> Any:
    """Every value a template prints: None as '', text redacted (autoescaping follows)."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return redact_text(str(value))


def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        finalize=_finalize,
        auto_reload=False,
    )
    return env


class Console:
    """State and helpers shared by the routes: the signer, the tokens, the stores."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.tokens = [t.get_secret_value().encode() for t in settings.serve.tokens]
        self.signer = URLSafeTimedSerializer(secrets.token_bytes(32), salt="console-session")
        self.max_age = settings.serve.console_session_seconds
        self.env = environment()

    # --- sessions ------------------------------------------------------------------------

    def session(self, request: Request) -> dict[str, Any] | None:
        raw = request.cookies.get(COOKIE)
        if not raw or len(raw) > 2000:
            return None
        try:
            data = self.signer.loads(raw, max_age=self.max_age)
        except BadSignature:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("csrf"), str):
            return None
        return data

    def set_session(self, request: Request, response: Response, data: dict[str, Any]) -> None:
        response.set_cookie(
            COOKIE,
            self.signer.dumps(data),
            max_age=self.max_age,
            path=CONSOLE,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )

    # --- pages ---------------------------------------------------------------------------

    def page(
        self,
        request: Request,
        template: str,
        session: dict[str, Any] | None,
        status: int = 200,
        **context: Any,
    ) -> HTMLResponse:
        fresh = session is None
        if session is None:
            session = {"csrf": secrets.token_urlsafe(32), "user": None}
        html = self.env.get_template(template).render(
            csrf=session["csrf"],
            user=session.get("user"),
            base=CONSOLE,
            **redact(context),
        )
        response = HTMLResponse(html, status_code=status, headers=HEADERS)
        if fresh:
            self.set_session(request, response, session)
        return response

    def refused(self, request: Request, exc: Refused) -> HTMLResponse:
        return self.page(request, "error.html", self.session(request), exc.status, message=str(exc))

    # --- the stores ----------------------------------------------------------------------

    def audit(self) -> Any:
        from remediation.audit.store import AuditStore

        return AuditStore(self.settings.audit_dsn.get_secret_value())

    def state(self) -> Any:
        from remediation.clients import redis as redis_clients

        return redis_clients.state(self.settings)


HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


async def read_form(request: Request) -> dict[str, str]:
    """The urlencoded form (the body limit already applies); 400 for anything else."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise Refused(400, "expected a form (application/x-www-form-urlencoded)")
    try:
        raw = (await request.body()).decode("utf-8")
        fields = parse_qs(raw, keep_blank_values=True, strict_parsing=False, max_num_fields=20)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Refused(400, "the form could not be read") from exc
    form = {}
    for key, values in fields.items():
        if len(values) != 1 or len(values[0]) > MAX_FIELD:
            raise Refused(400, f"field {key[:40]!r}: one value of at most {MAX_FIELD} characters")
        form[key] = values[0]
    return form


def _csrf_ok(session: dict[str, Any] | None, form: dict[str, str]) -> bool:
    if session is None:
        return False
    given = form.get("csrf", "")
    return bool(given) and hmac.compare_digest(given.encode(), str(session["csrf"]).encode())


def console_router(settings: Settings, approvals: Approvals | None = None) -> APIRouter:
    """The console's routes (not in the OpenAPI description: they are pages, not the API).
    ``approvals`` decides approvals (sending approved calls to the worker)."""
    console = Console(settings)
    router = APIRouter(prefix=CONSOLE, include_in_schema=False)

    def logged_in(request: Request) -> dict[str, Any]:
        session = console.session(request)
        if session is None or not session.get("user"):
            raise Refused(401, "log in first")
        return session

    async def posted(request: Request, need_login: bool = True) -> dict[str, str]:
        """The form of a POST: 403 (nothing done) without the session's CSRF token, 401
        without a login."""
        session = console.session(request)
        form = await read_form(request)
        if not _csrf_ok(session, form):
            raise Refused(403, "missing or wrong CSRF token; reload the page and try again")
        if need_login and not (session and session.get("user")):
            raise Refused(401, "log in first")
        return form

    @router.get("/login")
    def login_page(request: Request) -> Response:
        return console.page(request, "login.html", console.session(request))

    @router.post("/login")
    async def login(request: Request) -> Response:
        try:
            form = await posted(request, need_login=False)
        except Refused as exc:
            return console.refused(request, exc)
        token = form.get("token", "").strip().encode()
        if not known_token(token, console.tokens):
            time.sleep(0.2)  # a little friction for guessing, no state to fill
            log.warning("console login refused")
            return console.page(
                request,
                "login.html",
                console.session(request),
                401,
                error="that token is not one of REMEDIATION_SERVE__TOKENS",
            )
        # a new session (new CSRF token) at login: nothing from before the login carries over
        user = token_id(token)
        response = RedirectResponse(CONSOLE + "/", status_code=303, headers=HEADERS)
        console.set_session(request, response, {"csrf": secrets.token_urlsafe(32), "user": user})
        log.info("console login", user=user)
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        try:
            await posted(request)
        except Refused as exc:
            return console.refused(request, exc)
        response = RedirectResponse(CONSOLE + "/login", status_code=303, headers=HEADERS)
        response.delete_cookie(COOKIE, path=CONSOLE)
        return response

    def view(request: Request, template: str, load: Any) -> Response:
        """A page for a logged-in user: the login page otherwise, an error page for a
        Refused (a client error)."""
        try:
            session = logged_in(request)
        except Refused:
            return RedirectResponse(CONSOLE + "/login", status_code=303, headers=HEADERS)
        try:
            return console.page(request, template, session, **load())
        except Refused as exc:
            return console.refused(request, exc)

    @router.get("")
    def root(request: Request) -> Response:
        return RedirectResponse(CONSOLE + "/", status_code=303, headers=HEADERS)

    @router.get("/")
    def incidents(request: Request) -> Response:
        def load() -> dict[str, Any]:
            since = datetime.now(UTC) - INCIDENT_WINDOW
            rows = console.audit().query(
                report._INCIDENTS, {"since": since, "limit": report.RECENT_INCIDENTS}
            )
            return {"incidents": rows, "page_name": "incidents", "days": INCIDENT_WINDOW.days}

        return view(request, "incidents.html", load)

    @router.get("/incidents/{incident}")
    def incident(request: Request, incident: str) -> Response:
        def load() -> dict[str, Any]:
            try:
                incident_report.valid_id(incident)
                data = incident_report.build(console.audit(), incident)
            except ValueError as exc:
                raise Refused(404, "not an incident id") from exc
            except incident_report.IncidentNotFound as exc:
                raise Refused(404, "no such incident in the audit trail") from exc
            return {"data": data, "page_name": "incidents"}

        return view(request, "incident.html", load)

    @router.get("/checks")
    def checks(request: Request) -> Response:
        def load() -> dict[str, Any]:
            rows = console.audit().query(_CHECK_RUNS, {"limit": RECENT_CHECK_RUNS})
            return {"runs": rows, "page_name": "checks", "limit": RECENT_CHECK_RUNS}

        return view(request, "checks.html", load)

    @router.get("/control")
    def control(request: Request) -> Response:
        def load() -> dict[str, Any]:
            from remediation.guards import breaker, keys

            r = console.state()
            rows = breaker.snapshot(r)
            for row in rows:
                if row["open_until"]:
                    row["open_until"] = datetime.fromtimestamp(row["open_until"], UTC)
            paused = r.get(keys.PAUSE)
            ttl = r.ttl(keys.PAUSE) if paused is not None else None
            return {
                "breakers": rows,
                "paused": paused.decode("utf-8", "replace") if paused is not None else None,
                "pause_ttl": ttl if ttl and ttl > 0 else None,
                "page_name": "control",
                "done": request.query_params.get("done", "")[:100],
            }

        return view(request, "control.html", load)

    def done(what: str, where: str = "control") -> Response:
        return RedirectResponse(f"{CONSOLE}/{where}?done={what}", status_code=303, headers=HEADERS)

    @router.post("/breakers/reset")
    async def breaker_reset(request: Request) -> Response:
        try:
            form = await posted(request)
            name = form.get("name", "")
            if not name:
                raise Refused(400, "which breaker? (name)")
            user = logged_in(request)["user"]
            return await _in_thread(lambda: _reset(console, name, user))
        except Refused as exc:
            return console.refused(request, exc)

    def _reset(c: Console, name: str, user: str) -> Response:
        """What `remediation breakers reset NAME` does, audited the same way first: when
        the audit database does not answer, the breaker stays as it is."""
        from remediation.guards import breaker, keys

        r = c.state()
        if not r.sismember(keys.BREAKER_INDEX, name):
            raise Refused(404, "no breaker of that name")
        action, _, target = name.partition(":")
        c.audit().add_decision(
            action=action,
            target=target or "?",
            resource=target or "?",
            decision="breaker_reset",
            guard="breaker",
            reason=f"reset by operator (web console, {user})",
        )
        breaker.reset(r, name)
        log.info("console breaker reset", breaker=name, user=user)
        return done("reset")

    @router.post("/pause")
    async def pause(request: Request) -> Response:
        try:
            form = await posted(request)
            reason = form.get("reason", "").strip()
            if not reason or len(reason) > 200:
                raise Refused(400, "give a reason (1 to 200 characters)")
            seconds_text = form.get("seconds", "").strip()
            seconds: int | None = None
            if seconds_text:
                if not seconds_text.isdigit() or not 1 <= int(seconds_text) <= MAX_PAUSE_SECONDS:
                    raise Refused(400, f"seconds: a whole number 1 to {MAX_PAUSE_SECONDS}")
                seconds = int(seconds_text)
            user = logged_in(request)["user"]
            return await _in_thread(lambda: _pause(console, f"{reason} ({user})", seconds))
        except Refused as exc:
            return console.refused(request, exc)

    def _pause(c: Console, reason: str, seconds: int | None) -> Response:
        from remediation.guards.chain import set_pause

        set_pause(c.state(), reason, seconds)  # what `remediation pause` does
        log.info("console pause", reason=reason, seconds=seconds)
        return done("paused")

    @router.post("/resume")
    async def resume(request: Request) -> Response:
        try:
            await posted(request)
            return await _in_thread(lambda: _resume(console))
        except Refused as exc:
            return console.refused(request, exc)

    def _resume(c: Console) -> Response:
        from remediation.guards.chain import clear_pause

        clear_pause(c.state())  # what `remediation resume` does
        log.info("console resume")
        return done("resumed")

    # --- approvals ----------------------------------------------------------------------

    @router.get("/approvals")
    def approvals_page(request: Request) -> Response:
        def load() -> dict[str, Any]:
            decider = _approvals()
            now = time.time()
            pending = [_shown(a.as_dict(), now) for a in decider.pending()]
            recent = [_shown(a.as_dict(), now) for a in decider.recent(RECENT_APPROVALS)]
            return {
                "pending": pending,
                "recent": [a for a in recent if a["state"] != "pending"],
                "page_name": "approvals",
                "done": request.query_params.get("done", "")[:100],
            }

        return view(request, "approvals.html", load)

    def _approvals() -> Approvals:
        if approvals is None:
            raise Refused(503, "this console cannot decide approvals (no approvals service)")
        return approvals

    @router.post("/approvals/{approval_id}/approve")
    async def approve(request: Request, approval_id: str) -> Response:
        return await _decide(request, approval_id, True)

    @router.post("/approvals/{approval_id}/deny")
    async def deny(request: Request, approval_id: str) -> Response:
        return await _decide(request, approval_id, False)

    async def _decide(request: Request, approval_id: str, approve: bool) -> Response:
        """Approve or deny from the console: the id is checked first, then the form (CSRF,
        login); a deny needs a reason. Audited by Approvals.decide as console:<user>."""
        try:
            if not valid_approval_id(approval_id):
                raise Refused(404, "not an approval id")
            form = await posted(request)
            reason = form.get("reason", "").strip()
            if not approve and not reason:
                raise Refused(400, "give a reason to deny")
            decider = _approvals()
            by = f"console:{logged_in(request)['user']}"
            result = await _in_thread(lambda: decider.decide(approval_id, approve, by, reason))
        except Refused as exc:
            return console.refused(request, exc)
        if result.status != 200:
            message = "no such approval" if result.status == 404 else result.message
            return console.refused(request, Refused(result.status, message))
        log.info("console approval decided", approval=approval_id, result=result.result, by=by)
        return done(result.result, "approvals")

    return router


async def _in_thread(work: Callable[[], T]) -> T:
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(work)


def _shown(approval: dict[str, Any], now: float) -> dict[str, Any]:
    """An approval as the page shows it: times as datetimes, and how long until it expires."""
    shown = dict(approval)
    for name in ("requested_at", "expires_at", "decided_at"):
        if shown.get(name) is not None:
            shown[name] = datetime.fromtimestamp(shown[name], UTC)
    left = approval["expires_at"] - now
    shown["expires_in"] = report.duration(left) if left > 0 else "now"
    return shown
