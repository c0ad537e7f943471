"""Thin Celery tasks: look the check or action up by name and call the runner."""

from __future__ import annotations

import functools
from typing import Any

import structlog
from billiard.exceptions import WorkerLostError
from celery import Celery, Task, signals

from remediation import causes, metrics, rechecks, registry, signing, slots
from remediation.approvals import APPROVAL_HEADER, Approvals
from remediation.approvals import header as approval_header
from remediation.audit.store import AuditStore
from remediation.calls import CheckOutcome
from remediation.context import Trigger
from remediation.guards import keys as guard_keys
from remediation.guards import lua as guard_lua
from remediation.outcomes import CheckStatus
from remediation.redact import redact_text, serialized_size, storable, truncated
from remediation.runner import Runner
from remediation.settings import get_settings

TRIGGER_HEADER = "remediation_trigger"
EXPIRE_TASK = "remediation.approvals.expire"
"""Beat runs it every EXPIRE_EVERY_SECONDS: pending approvals past their time expire."""
EXPIRE_EVERY_SECONDS = 30
PRUNE_TASK = "remediation.audit.prune"
"""Beat runs it every PRUNE_EVERY_SECONDS when REMEDIATION_RETENTION__ENABLED: audit rows past
their retention are deleted (remediation.audit.retention)."""
PRUNE_EVERY_SECONDS = 86400


def dispatch_via(app: Celery, key: bytes) -> Any:
    """A Runner dispatcher that sends action tasks through the broker, each trigger header
    signed with the key (REMEDIATION_SIGNING_KEY) together with the task and its kwargs, and
    an approved call's approval header signed with the task."""

    def dispatch(
        task_name: str,
        kwargs: dict[str, Any],
        trigger: Trigger | None,
        approval: str | None = None,
    ) -> None:
        headers = {TRIGGER_HEADER: trigger.to_header(key, task_name, kwargs)} if trigger else {}
        if approval is not None:
            headers[APPROVAL_HEADER] = approval_header(key, approval, task_name)
        app.send_task(task_name, kwargs=kwargs, headers=headers)

    return dispatch


def recheck_via(app: Celery) -> rechecks.Send:
    """Sends a deferred fix's check (with its signed event header) to run in a while."""

    def send(task_name: str, kwargs: dict[str, Any], headers: dict[str, Any], later: float) -> None:
        app.send_task(task_name, kwargs=kwargs, headers=headers, countdown=later)

    return send


@functools.cache
def runner(app: Celery) -> Runner:
    settings = get_settings()
    return Runner(settings, dispatch_via(app, signing.key_of(settings)), recheck=recheck_via(app))


def _header(task: Task, name: str = TRIGGER_HEADER) -> Any:
    """A raw header of the message being run (the trigger's; None: a call by hand); the
    runner verifies it before anything runs."""
    value = getattr(task.request, name, None)
    if value is None and isinstance(task.request.headers, dict):
        value = task.request.headers.get(name)
    return value


def register_tasks(app: Celery) -> None:
    """One task per check and action, named remediation.check.* / remediation.act.*."""
    registry.load_all()
    for check_spec in registry.CHECKS.values():
        _register_check(app, check_spec.name, check_spec.task_name)
    for action_spec in registry.ACTIONS.values():
        _register_action(app, action_spec.name, action_spec.task_name)

    @app.task(name=EXPIRE_TASK)
    def expire_approvals() -> int:
        """Expire pending approvals past REMEDIATION_APPROVALS__TTL_SECONDS (= denied,
        audited); run by beat every EXPIRE_EVERY_SECONDS."""
        r = runner(app)
        return Approvals(r.settings, r.store).expire_due()

    @app.task(name=PRUNE_TASK)
    def prune_audit() -> dict[str, Any]:
        """Delete audit rows past REMEDIATION_RETENTION__* (bounded batches, audited as a
        check run 'audit_prune'); run by beat daily when REMEDIATION_RETENTION__ENABLED."""
        from remediation.audit import retention

        settings = get_settings()
        if not settings.retention.enabled:
            return {"skipped": "REMEDIATION_RETENTION__ENABLED is false"}
        r = runner(app)
        result = retention.prune(
            AuditStore.from_settings(settings), settings.retention, r.state, apply=True
        )
        if result.skipped:
            structlog.get_logger("remediation").warning("audit prune skipped", why=result.skipped)
        return result.as_dict()


def _register_check(app: Celery, name: str, task_name: str) -> None:
    @app.task(name=task_name, bind=True)
    def run_check(self: Task, **kwargs: Any) -> dict[str, Any]:
        structlog.contextvars.bind_contextvars(check=name)
        r = runner(app)
        slot = _slot_of(r, name, _header(self, slots.SLOT_HEADER))
        duplicate = _slot_taken(r, name, kwargs, self.request.id, slot)
        if duplicate is not None:
            return duplicate.as_dict()
        cause = _cause(r, slot, _header(self, causes.EVENT_HEADER))
        return r.run_check(name, kwargs, task_id=self.request.id, cause=cause).as_dict()

    run_check.__doc__ = registry.CHECKS[name].doc


def _slot_of(r: Runner, name: str, raw: Any) -> tuple[str, int, int] | None:
    """(entry, slot, every) of the message's slot header; None for a call by hand or a header
    that is malformed or not ours (remediation.slots): the check runs as a call."""
    if raw is None:
        return None
    parsed = slots.parse(signing.key_of(r.settings), raw)
    if parsed is None:
        structlog.get_logger("remediation").warning(
            "slot header ignored: malformed, out of bounds or not signed", check=name
        )
    return parsed


def _cause(r: Runner, slot: tuple[str, int, int] | None, event: Any) -> dict[str, Any] | None:
    """What the message says caused it, where its signature holds: the event a watcher saw,
    or the beat slot; None for a call (remediation.causes)."""
    if event is not None:
        parsed = causes.parse_event(signing.key_of(r.settings), event)
        if parsed is not None:
            return parsed
        structlog.get_logger("remediation").warning("event header ignored: malformed or unsigned")
    return causes.beat(slot[0], slot[1]) if slot is not None else None


def _slot_taken(
    r: Runner,
    name: str,
    kwargs: dict[str, Any],
    task_id: str | None,
    parsed: tuple[str, int, int] | None,
) -> CheckOutcome | None:
    """A beat firing whose (entry, slot) another message already ran: audited as a check run
    with status 'duplicate', nothing run. None (run the check) for a call by hand or a slot
    header we do not trust (_slot_of), the first message of the slot, the same message
    delivered again (its worker died), or when the state Redis does not answer (a check only
    looks; the actions it triggers have their own guards)."""
    if parsed is None:
        return None
    log = structlog.get_logger("remediation")
    entry, slot, every = parsed
    key = guard_keys.slot(entry, slot)
    ttl = slots.claim_ttl(every, r.settings.celery.redbeat_lock_timeout)
    mine = task_id or "-"
    try:
        if r.state.set(key, mine, nx=True, ex=ttl):
            _audit_missed(r, entry, slot, every)
            return None
        if r.state.get(key) in (mine, mine.encode()):
            return None
    except Exception as exc:
        log.error("slot state unavailable; running the check", error=str(exc))
        return None
    error = slots.describe(entry, slot)
    big = serialized_size(kwargs) > r.settings.guards.max_kwargs_bytes
    target = redact_text(str(kwargs.get("target", "?")))[:64]
    params = truncated(kwargs) if big else storable(kwargs)
    run_id = r.store.start_check_run(name, target, params, "detect", task_id)
    r.store.finish_check_run(run_id, CheckStatus.DUPLICATE, 0, 0.0, error)
    metrics.check_run(name, CheckStatus.DUPLICATE, 0.0)
    log.warning("duplicate slot: not run", check=name, entry=entry, slot=slot)
    return CheckOutcome(CheckStatus.DUPLICATE, run_id, error=error)


MISSED_CHECK, MISSED_METRIC = "beat", "missed_slots"
"""The observation recorded when a firing follows missed slots (README "Missed slots"):
check_name 'beat', target the entry's name, metric 'missed_slots', value how many."""


def _audit_missed(r: Runner, entry: str, slot: int, every: int) -> None:
    """The first run of a slot: if slots of its entry went by unrun since the last one (a beat
    outage; the policy runs the latest once, at once), log and audit how many (MISSED_*)."""
    if every <= 0:
        return  # crontab entries: no grid to count on
    log = structlog.get_logger("remediation")
    try:
        raw = guard_lua.script(r.state, "slot_last")(
            keys=[guard_keys.slot_last(entry)], args=[slot, max(slots.LAST_TTL, 3 * every)]
        )
        count = slots.missed(float(raw) if raw is not None else None, slot, every)
        if count:
            log.warning("missed slots: running the latest once", entry=entry, missed=count)
            r.store.record_observation(MISSED_CHECK, entry, MISSED_METRIC, float(count))
    except Exception as exc:  # the count is information: never keep the check from running
        log.error("could not count missed slots", entry=entry, error=str(exc))


def _register_action(app: Celery, name: str, task_name: str) -> None:
    timeout = registry.ACTIONS[name].timeout
    limits = {}
    if timeout is not None:  # hard limit a minute past the soft one, so cleanup can run
        soft = int(timeout.total_seconds())
        limits = {"soft_time_limit": soft, "time_limit": soft + 60}

    @app.task(name=task_name, bind=True, **limits)
    def run_action(self: Task, **kwargs: Any) -> dict[str, Any]:
        structlog.contextvars.bind_contextvars(action=name)
        outcome = runner(app).run_action(
            name,
            kwargs,
            task_id=self.request.id,
            header=_header(self),
            approval=_header(self, APPROVAL_HEADER),
        )
        return outcome.as_dict()

    run_action.__doc__ = registry.ACTIONS[name].doc


@signals.task_failure.connect
def _poison(
    sender: Task | None = None,
    task_id: str | None = None,
    exception: BaseException | None = None,
    kwargs: dict[str, Any] | None = None,
    **_: Any,
) -> None:
    """In the worker's main process: Celery gave up on an action whose worker died on every
    delivery (task_retry_on_worker_lost exhausted max_retries). Audit and notify it."""
    if not isinstance(exception, WorkerLostError) or sender is None or task_id is None:
        return
    name = str(sender.name or "")
    if not name.startswith(registry.ACTION_PREFIX):
        return
    try:
        runner(sender.app).record_worker_lost(
            name.removeprefix(registry.ACTION_PREFIX),
            dict(kwargs or {}),
            task_id,
            _header(sender),
            int(sender.request.retries or 0) + 1,
        )
    except Exception as exc:  # never break the worker's main process
        structlog.get_logger("remediation").error("could not record a poison task", error=str(exc))
