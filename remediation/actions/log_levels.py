"""Runbook 001 "Security Incident Response 3. Enable enhanced monitoring: increase log level",
for a bounded time, and back.

raise_log_level sets an application's configured Redis key (with a TTL: it reverts by
itself) and/or its configuration file's key (the previous value recorded in the state Redis
before the file changes); log_level_expiry reports a file raise whose time is up and
restore_log_level puts the previous value back. Only configured applications; never longer
than REMEDIATION_MONITORING__DURATION_SECONDS.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from pydantic import Field

from remediation.clients.redis import text
from remediation.context import ActionContext, CheckContext, Resolved
from remediation.errors import Refused
from remediation.findings import ActionResult
from remediation.params import ActionParams
from remediation.registry import action
from remediation.resolve import canonical, redis_target
from remediation.security import log_levels as ll
from remediation.settings.monitoring import LogLevelApp
from remediation.throttles import changed_by, iso

APPS_VAR = "REMEDIATION_MONITORING__APPS"
DURATION_VAR = "REMEDIATION_MONITORING__DURATION_SECONDS"


class RaiseLogLevelParams(ActionParams):
    """target: the application's name in REMEDIATION_MONITORING__APPS."""

    seconds: int | None = Field(
        None, ge=1, le=7 * 86400, description=f"shorter than {DURATION_VAR}, never longer"
    )


class RestoreLogLevelParams(ActionParams):
    """target: the application whose file raise_log_level changed."""

    force: bool = Field(False, description="restore now, before the raise is due to end")


def _resource(params: ActionParams) -> str:
    return f"loglevel:{params.target}"


def _app(ctx: CheckContext, name: str) -> LogLevelApp:
    app = ctx.settings.monitoring.app(name)
    if app is None:
        names = [a.name for a in ctx.settings.monitoring.apps][:20]
        raise Refused(f"no application named {name!r} in {APPS_VAR} (names: {names})")
    return app


def resolve_raise(ctx: CheckContext, params: RaiseLogLevelParams) -> Resolved:
    """The application as configured and the duration. Refused: an application not
    configured, its Redis target not configured, or seconds past DURATION_SECONDS."""
    app = _app(ctx, params.target)
    cap = ctx.settings.monitoring.duration_seconds
    if params.seconds is not None and params.seconds > cap:
        raise Refused(f"{params.seconds}s is longer than {DURATION_VAR} ({cap}s)")
    if app.redis_key is not None:
        redis_target(ctx, app.redis_target)
    return canonical(params, target=app.name, seconds=params.seconds or cap)


def resolve_restore(ctx: CheckContext, params: RestoreLogLevelParams) -> Resolved:
    """The application as its raise was recorded (configured or not any more). Refused when
    there is no record; quietly when it is not due yet (unless force)."""
    recorded = {a.lower(): a for a in ll.recorded_apps(ctx.state)}
    name = recorded.get(params.target.lower())
    if name is None:
        _app(ctx, params.target)  # a clear refusal for a name not configured at all
        raise Refused(f"{params.target}: no raised log level on record", notice=False)
    record = ll.read_record(ctx.state, name)
    if not params.force and ll.expires_at(record) > time.time():
        raise Refused(f"{name}: raised until {iso(record['expires_at'])}", notice=False)
    return canonical(params, target=name)


def _raise_key(ctx: ActionContext, app: LogLevelApp, seconds: int) -> dict[str, Any]:
    assert app.redis_key is not None
    client = ctx.redis(app.redis_target)
    reply = client.register_script(ll.SET_LEVEL)(keys=[app.redis_key], args=[app.level, seconds])
    status, previous, ttl = (text(v) for v in reply)
    return {
        "key": app.redis_key,
        "status": status,
        "before": previous or None,
        "expires_in_seconds": int(ttl) if status != "left_alone" else None,
    }


def _raise_file(ctx: ActionContext, app: LogLevelApp, seconds: int) -> dict[str, Any]:
    """Record first, then write: a worker dying in between leaves a record whose restore
    finds the file unchanged and leaves it alone, never a raise nobody will undo."""
    state = ctx.state
    record, now = ll.read_record(state, app.name), time.time()
    out: dict[str, Any] = {"file": app.file, "file_key": app.file_key}
    if record:
        expires = max(ll.expires_at(record), now + seconds)
        state.hset(ll.record_key(app.name), "expires_at", repr(expires))
        return {**out, "status": "extended", "restore_at": iso(expires)}
    current = ll.current_level(app)
    if ll.same_level(current, app.level):
        return {**out, "status": "already", "before": current}
    fields = {
        "level": app.level,
        "previous": current or "",
        "previous_absent": "1" if current is None else "0",
        "file": app.file or "",
        "file_key": app.file_key or "",
        "file_format": app.file_format,
        "raised_at": repr(now),
        "expires_at": repr(now + seconds),
        "by": changed_by(ctx),
    }
    ll.write_record(state, app.name, fields)
    ll.set_level(app, app.level)
    return {
        **out,
        "status": "raised",
        "before": current,
        "after": app.level,
        "restore_at": iso(now + seconds),
    }


@action(
    "raise_log_level",
    resolve=resolve_raise,
    resource=_resource,
    cooldown=timedelta(minutes=5),
    max_per_hour=6,
    verify=False,
)
def raise_log_level(ctx: ActionContext, params: RaiseLogLevelParams) -> ActionResult:
    """Raise an application's log level for a while (runbook 001 "Security Incident Response
    3. Enable enhanced monitoring: increase log level").

    For an application of REMEDIATION_MONITORING__APPS: its redis_key is set to its level
    with a TTL of DURATION_SECONDS (a call may ask for less, never more), so it reverts by
    itself; its file's file_key (YAML or ini, edited atomically, comments kept) is set to
    the level after the previous value is recorded in the state Redis, and restored by
    restore_log_level once log_level_expiry finds it due. Again while raised: the end moves
    out, never past DURATION_SECONDS from now. A Redis key holding another level, or one
    without a TTL, is an operator's choice: left alone. Not verified (a louder log does not
    end a surge); its undo is."""
    app = _app(ctx, params.target)
    seconds = params.seconds or ctx.settings.monitoring.duration_seconds
    detail: dict[str, Any] = {"app": app.name, "level": app.level, "seconds": seconds}
    try:
        if app.redis_key is not None:
            detail["redis"] = _raise_key(ctx, app, seconds)
        if app.file is not None:
            detail["config_file"] = _raise_file(ctx, app, seconds)
    except ll.LevelFileError as exc:
        detail["error"] = str(exc)
        return ActionResult(ok=False, changed="redis" in detail, summary=str(exc), detail=detail)
    statuses = [detail[p]["status"] for p in ("redis", "config_file") if p in detail]
    changed = any(s in ("raised", "extended") for s in statuses)
    return ActionResult(
        changed=changed,
        summary=f"{app.name} log level {app.level} for {seconds}s ({', '.join(statuses)})",
        detail=detail,
    )


@action("restore_log_level", resolve=resolve_restore, resource=_resource, max_per_hour=60)
def restore_log_level(ctx: ActionContext, params: RestoreLogLevelParams) -> ActionResult:
    """Put back the log level raise_log_level wrote in an application's file once its time
    is up (or force): the previous value, or no key at all if there was none. A value
    someone changed since is theirs: left alone (the record is dropped either way).
    Verified by log_level_expiry no longer reporting it."""
    record = ll.read_record(ctx.state, params.target)
    if not record:
        raise Refused(f"{params.target}: no raised log level on record", notice=False)
    app = LogLevelApp(
        name=params.target,
        file=record.get("file") or None,
        file_key=record.get("file_key") or None,
        file_format="ini" if record.get("file_format") == "ini" else "yaml",
    )
    previous = None if record.get("previous_absent") == "1" else record.get("previous", "")
    detail: dict[str, Any] = {"app": app.name, "file": app.file, "previous": previous}
    try:
        current = ll.current_level(app)
        if ll.same_level(current, record.get("level")):
            ll.set_level(app, previous)
            status = "restored"
        else:
            status = "left_alone"
    except ll.LevelFileError as exc:
        detail["error"] = str(exc)
        return ActionResult(ok=False, changed=False, summary=str(exc), detail=detail)
    ll.drop_record(ctx.state, app.name)
    detail.update(status=status, before=current)
    summary = {
        "restored": f"{app.name} log level {current} -> {previous or '(key removed)'}",
        "left_alone": f"{app.name} log level was changed to {current} since; left as it is",
    }[status]
    return ActionResult(changed=status == "restored", summary=summary, detail=detail)
