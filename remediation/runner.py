"""detect -> guard -> act -> verify -> audit -> notify, without Celery.

Tasks (tasks.py) are thin wrappers around Runner.run_check / Runner.run_action; the CLI's
`run CHECK --act` uses the same Runner with an in-process dispatcher.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from pydantic import ValidationError

from remediation import metrics, playbook
from remediation.audit.store import AuditStore
from remediation.clients import redis as redis_clients
from remediation.context import ActionContext, CheckContext, Trigger
from remediation.errors import AuditError, GuardUnavailable
from remediation.findings import ActionResult, Finding
from remediation.guards import keys
from remediation.guards.chain import Admission, BlastAccount, GuardChain
from remediation.guards.lua import script
from remediation.logging import get_logger
from remediation.redact import redact_text, storable
from remediation.registry import ACTION_PREFIX, get_action, get_check
from remediation.settings import Settings

# dispatch(task_name, kwargs, trigger) sends an action for execution (Celery or in-process)
Dispatch = Callable[[str, dict[str, Any], Trigger | None], None]


@dataclass
class CheckOutcome:
    status: str  # ok | error | rejected
    check_run_id: int
    findings: list[Finding] = field(default_factory=list)
    finding_ids: list[int] = field(default_factory=list)
    dispatched: int = 0
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "check_run_id": self.check_run_id,
            "findings": [f.model_dump(mode="json") for f in self.findings],
            "dispatched": self.dispatched,
            "error": self.error,
        }


@dataclass
class ActionOutcome:
    outcome: str  # succeeded | failed | rejected | dry_run | suppressed | duplicate | unavailable
    decision_id: int | None = None
    action_run_id: int | None = None
    reason: str = ""
    verification: str | None = None
    result: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def validation_message(exc: ValidationError) -> str:
    """One line per problem, naming the kwarg, without echoing the rejected values (and
    storable: a kwarg's name may hold anything)."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "kwargs"
        parts.append(f"{loc}: {err['msg']}")
    return str(storable("; ".join(parts)))


class Runner:
    """The pipeline for one process. Holds no per-call state."""

    def __init__(self, settings: Settings, dispatch: Dispatch, store: AuditStore | None = None):
        self.settings = settings
        self.dispatch = dispatch
        self.store = store or AuditStore.from_settings(settings)  # spools while PG is down
        self.log = get_logger("remediation.runner")

    @property
    def state(self) -> Any:
        return redis_clients.client(self.settings.state_redis_url.get_secret_value())

    # --- checks ---------------------------------------------------------------------------

    def run_check(
        self,
        name: str,
        kwargs: dict[str, Any],
        *,
        task_id: str | None = None,
        purpose: str = "detect",
        act: bool = True,
    ) -> CheckOutcome:
        """Run one check, audit its findings and (for detection) fan out the playbook."""
        spec = get_check(name)
        try:
            params = spec.params_model.model_validate(kwargs)
        except ValidationError as exc:
            message = validation_message(exc)
            run_id = self.store.rejected_check(spec.name, storable(kwargs), message, task_id)
            metrics.check_run(spec.name, "rejected", 0.0)
            self.log.warning("check rejected", check=spec.name, reason=message)
            return CheckOutcome("rejected", run_id, error=message)
        structlog.contextvars.bind_contextvars(check=spec.name, target=params.target)
        run_id = self.store.start_check_run(
            spec.name, params.target, params.model_dump(mode="json"), purpose, task_id
        )
        started = time.monotonic()
        try:
            findings = spec.fn(CheckContext(self.settings, self.log, self.store), params)
        except Exception as exc:  # a broken check is recorded, never fatal to the worker
            error = redact_text(f"{type(exc).__name__}: {exc}")
            self.store.finish_check_run(run_id, "error", 0, _ms(started), error)
            metrics.check_run(spec.name, "error", time.monotonic() - started)
            self.log.error("check failed", error=error)
            return CheckOutcome("error", run_id, error=error)
        outcome = CheckOutcome("ok", run_id, findings=findings)
        detect = purpose == "detect" and act
        streaks = self._streaks(spec.name, params.target, findings) if detect else {}
        for n, finding in enumerate(findings):
            seen, needed = streaks.get(finding.fingerprint, (1, 1))
            if seen < needed:  # hysteresis: not yet seen in enough consecutive runs
                evidence = {**finding.evidence, "consecutive_runs": f"{seen}/{needed}"}
                finding = findings[n] = finding.model_copy(update={"evidence": evidence})
            incident = self._incident(finding) if detect and seen >= needed else None
            finding_id = self.store.add_finding(run_id, finding, incident)
            metrics.finding(spec.name, finding.kind, str(finding.severity))
            outcome.finding_ids.append(finding_id)
            if incident:
                outcome.dispatched += self._fan_out(finding, finding_id, incident, params)
        self.store.finish_check_run(run_id, "ok", len(findings), _ms(started))
        metrics.check_run(spec.name, "ok", time.monotonic() - started)
        self.log.info("check done", findings=len(findings), dispatched=outcome.dispatched)
        return outcome

    def _streaks(
        self, check: str, target: str, findings: list[Finding]
    ) -> dict[str, tuple[int, int]]:
        """(consecutive runs seen, runs needed) per fingerprint, when the check needs more
        than one run (settings.guards.consecutive_runs / consecutive_overrides)."""
        g = self.settings.guards
        needed = g.consecutive_overrides.get(check, g.consecutive_runs)
        if needed <= 1:
            return {}
        fingerprints = [f.fingerprint for f in findings]
        try:
            counts = script(self.state, "streak")(
                keys=[keys.streak(check, target)], args=[8 * 86400, *fingerprints]
            )
        except Exception as exc:  # no state, no streak: nothing triggers (fail safe)
            self.log.error("hysteresis state unavailable; not triggering", error=str(exc))
            counts = [0] * len(fingerprints)
        return {fp: (int(n), needed) for fp, n in zip(fingerprints, counts, strict=True)}

    def _incident(self, finding: Finding) -> str | None:
        """The open incident for this condition, opened now if there is none."""
        key = keys.incident(finding.fingerprint)
        candidate = f"{finding.fingerprint}-{uuid.uuid4().hex[:8]}"
        try:
            ttl = self.settings.guards.incident_ttl_seconds
            if self.state.set(key, candidate, nx=True, ex=ttl):
                return candidate
            current = self.state.get(key)
            return current.decode() if current else candidate
        except Exception as exc:  # without state, no incident: the action's guards refuse too
            self.log.error("incident state unavailable", error=str(exc))
            return candidate

    def _fan_out(self, finding: Finding, finding_id: int, incident: str, params: Any) -> int:
        trigger = Trigger(
            finding_id=finding_id,
            check=finding.check,
            check_params=params.model_dump(mode="json"),
            fingerprint=finding.fingerprint,
            incident=incident,
        )
        rules = playbook.rules_for(finding)
        for rule in rules:  # a follow-up check is not an action: it carries no trigger
            self.dispatch(
                rule.task_name, rule.params(finding), trigger if rule.run == "act" else None
            )
        return len(rules)

    # --- actions --------------------------------------------------------------------------

    def run_action(
        self, name: str, kwargs: dict[str, Any], *, task_id: str | None = None,
        trigger: Trigger | None = None,
    ) -> ActionOutcome:  # fmt: skip
        """Validate, pass the guards, act, record, verify, notify. Never raises on purpose."""
        spec = get_action(name)
        finding_id = trigger.finding_id if trigger else None
        try:
            params = spec.params_model.model_validate(kwargs)
        except ValidationError as exc:
            message = validation_message(exc)
            safe = storable(kwargs)  # rejected input may hold anything: NUL, NaN, huge ints
            run_id = self.store.add_action_run(
                action=spec.name, target=redact_text(str(safe.get("target", "?")))[:64],
                resource=None, params=safe, outcome="rejected", error=message,
                finding_id=finding_id, task_id=task_id,
            )  # fmt: skip
            self.log.warning("action rejected", action=spec.name, reason=message)
            metrics.action_run(spec.name, "rejected", None)
            return ActionOutcome("rejected", action_run_id=run_id, reason=message)
        target, resource = params.target, spec.resource(params)
        structlog.contextvars.bind_contextvars(action=spec.name, target=target, resource=resource)
        idem = (
            f"{spec.name}:{resource}:{trigger.incident}"
            if trigger
            else f"{spec.name}:{resource}:task:{task_id or uuid.uuid4().hex}"
        )
        chain = GuardChain(self.state, self.settings, spec)
        # the audit copy of identifiers is redacted (a credential URL given as a key)
        audit: dict[str, Any] = {
            "action": spec.name, "target": redact_text(target), "resource": redact_text(resource)
        }  # fmt: skip
        try:
            upfront = spec.upfront(self.settings, params) if spec.upfront else None
            adm = chain.admit(target, resource, idem, task_id or "", upfront)
        except GuardUnavailable as exc:
            if spec.name == "notify":  # telling a human is safe without guard state
                return self._notify_without_state(
                    spec, params, chain, idem, trigger, task_id, audit
                )
            decision_id = self.store.add_decision(
                **audit, decision="unavailable", guard="state", reason=str(exc),
                finding_id=finding_id, task_id=task_id, idempotency_key=redact_text(idem),
            )  # fmt: skip
            self.log.error("guard state unavailable; not acting", error=str(exc))
            metrics.guard_decision(spec.name, "unavailable", "state")
            incident = trigger.incident if trigger else f"{spec.name}:{resource}"
            self._notify("guard_unavailable", incident, f"{spec.name} on {resource} not run: {exc}")
            return ActionOutcome("unavailable", decision_id, reason=str(exc))
        try:
            decision_id = self.store.add_decision(
                **audit, decision=adm.decision, guard=adm.guard, reason=adm.reason,
                finding_id=finding_id, task_id=task_id, idempotency_key=redact_text(idem),
            )  # fmt: skip
        except AuditError:  # never act without an audit row: give back what the guards took
            chain.abandon(adm, target, resource)
            raise
        metrics.guard_decision(spec.name, adm.decision, adm.guard)
        if adm.decision == "dry_run":
            run_id = self.store.add_action_run(
                **audit, params=params.model_dump(mode="json"), outcome="dry_run",
                decision_id=decision_id, finding_id=finding_id, task_id=task_id,
            )  # fmt: skip
            self.log.info("dry-run: would act", params=params.model_dump(mode="json"))
            metrics.action_run(spec.name, "dry_run", None)
            return ActionOutcome("dry_run", decision_id, run_id, adm.reason)
        if not adm.admitted:
            self.log.info("action suppressed", guard=adm.guard, reason=adm.reason)
            if adm.flap_escalate:  # once per suspension: the refusal that started it
                self._notify("flapping", f"flap:{spec.name}:{resource}",
                             f"{spec.name} on {resource} is flapping: {adm.reason}; suspended "
                             f"for {self.settings.guards.flap_suspend_minutes} min")  # fmt: skip
            return ActionOutcome(adm.decision, decision_id, reason=adm.reason)
        if adm.resumed:
            self.log.warning("resuming an action whose worker died mid-action",
                             claimed_at=adm.claimed_at)  # fmt: skip
        return self._act(spec, params, chain, adm, decision_id, trigger, task_id, audit)

    def record_worker_lost(
        self, name: str, kwargs: dict[str, Any], task_id: str, trigger: Trigger | None,
        attempts: int,
    ) -> None:  # fmt: skip
        """A poison task: its worker died on every delivery and Celery gave up. Audit it, give
        back its claim (the holder is dead), count a breaker failure, notify."""
        spec = get_action(name)
        try:
            params = spec.params_model.model_validate(kwargs)
        except ValidationError:
            return  # never admitted: its rejection is already audited
        target, resource = params.target, spec.resource(params)
        idem = (
            f"{spec.name}:{resource}:{trigger.incident}"
            if trigger
            else f"{spec.name}:{resource}:task:{task_id}"
        )
        chain = GuardChain(self.state, self.settings, spec)
        adm = Admission(True, "admitted", idempotency_key=idem, call_id=task_id)
        error = f"worker lost on all {attempts} deliveries: given up (poison task)"
        try:
            chain.give_up(adm, target, resource, task_id)
        except GuardUnavailable as exc:
            self.log.error("could not release a poison task's guard holds", error=str(exc))
        self.store.add_action_run(
            action=spec.name, target=target, resource=resource,
            params=params.model_dump(mode="json"), outcome="failed", error=error,
            finding_id=trigger.finding_id if trigger else None, task_id=task_id,
            verification="skipped",
        )  # fmt: skip
        metrics.action_run(spec.name, "failed", None)
        self.log.error("poison task given up", action=spec.name, attempts=attempts)
        incident = trigger.incident if trigger else f"{spec.name}:{resource}"
        self._notify("poison_task", incident, f"{spec.name} on {resource}: {error}")

    def _notify_without_state(
        self, spec: Any, params: Any, chain: GuardChain, idem: str, trigger: Trigger | None,
        task_id: str | None, audit: dict[str, Any],
    ) -> ActionOutcome:  # fmt: skip
        reason = "guard state unavailable; notifications are sent regardless"
        decision_id = self.store.add_decision(**audit, decision="admitted", guard="state",
                                              reason=reason, task_id=task_id)  # fmt: skip
        adm = Admission(True, "admitted", idempotency_key=idem)
        return self._act(spec, params, chain, adm, decision_id, trigger, task_id, audit)

    def _act(
        self, spec: Any, params: Any, chain: GuardChain, adm: Any, decision_id: int,
        trigger: Trigger | None, task_id: str | None, audit: dict[str, Any],
    ) -> ActionOutcome:  # fmt: skip
        target, resource = params.target, spec.resource(params)  # unredacted: guard keys
        blast = BlastAccount(chain, pool=adm.blast_granted)
        ctx = ActionContext(
            self.settings, self.log, self.store, trigger,
            resumed_since=adm.claimed_at if adm.resumed else None,
            idempotency_key=adm.idempotency_key, reserve_units=blast.take,
        )  # fmt: skip
        started = time.monotonic()
        error: str | None = None
        try:
            result = spec.fn(ctx, params)
        except (
            BaseException
        ) as exc:  # SoftTimeLimitExceeded included: record, release, re-raise none
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                chain.complete(adm, target, resource, False, blast.settle(adm.blast_granted))
                raise
            error = redact_text(f"{type(exc).__name__}: {exc}")
            result = ActionResult(ok=False, changed=False, summary=error)
        success = result.ok
        try:
            refund = blast.settle(adm.blast_granted)
            transition = chain.complete(adm, target, resource, success, refund)
        except GuardUnavailable as exc:
            transition = ""
            self.log.error("could not record the outcome in guard state", error=str(exc))
        outcome = "succeeded" if success else "failed"
        verification = None if success and spec.guards.verify and trigger else "skipped"
        run_id = self.store.add_action_run(
            **audit, params=params.model_dump(mode="json"), outcome=outcome,
            error=error or (None if success else result.summary),
            result=result.model_dump(mode="json"), duration_ms=_ms(started),
            decision_id=decision_id, finding_id=trigger.finding_id if trigger else None,
            task_id=task_id, verification=verification,
        )  # fmt: skip
        self.log.info("action done", outcome=outcome, summary=result.summary)
        metrics.action_run(spec.name, outcome, time.monotonic() - started)
        done = ActionOutcome(outcome, decision_id, run_id, result.summary, verification)
        done.result = result.model_dump(mode="json")
        what = f"{spec.name} on {audit['resource']}"
        incident = trigger.incident if trigger else f"{spec.name}:{audit['resource']}"
        if not success and spec.name != "notify":  # never notify about notifying
            self._notify("action_failed", incident, f"{what} failed: {result.summary}")
        if transition == "opened":
            name = chain.breaker_name(target)
            self._notify("breaker_open", f"breaker:{name}",
                         f"circuit {name} opened after {what} failed; further runs are suppressed"
                         f" until it half-opens or `remediation breakers reset {name}`")  # fmt: skip
        if verification is None and trigger is not None:
            done.verification = self._verify(run_id, trigger, what)
            metrics.verification(spec.name, done.verification)
        return done

    def _verify(self, action_run_id: int, trigger: Trigger, what: str) -> str:
        """Re-run the originating check until the condition is gone (bounded)."""
        cfg = self.settings.verify
        verdict, check_run_id = "not_recovered", None
        for attempt in range(cfg.attempts):
            if attempt:
                time.sleep(cfg.delay_seconds)
            outcome = self.run_check(
                trigger.check, trigger.check_params, purpose="verify", act=False
            )
            check_run_id = outcome.check_run_id
            if outcome.status != "ok":
                verdict = "error"
                continue
            if all(f.fingerprint != trigger.fingerprint for f in outcome.findings):
                verdict = "recovered"
                break
            verdict = "not_recovered"
        self.store.set_verification(action_run_id, verdict, check_run_id)
        self.log.info("verification", verification=verdict)
        if verdict == "recovered":
            try:
                self.state.delete(keys.incident(trigger.fingerprint))
            except Exception as exc:
                self.log.warning("could not close incident", error=str(exc))
        else:
            self._notify("unverified_fix", trigger.incident,
                         f"{what} ran but the check still fails ({verdict})")  # fmt: skip
        return verdict

    def _notify(self, kind: str, incident: str, text: str) -> None:
        """Send a notification through the notify action (deduplicated per incident + kind)."""
        kwargs = {"text": text, "incident": incident[:200], "kind": kind, "severity": "high"}
        try:
            self.dispatch(ACTION_PREFIX + "notify", kwargs, None)
        except Exception as exc:  # the broker may be what is down: log, never crash the task
            self.log.error("could not dispatch notification", kind=kind, error=str(exc))


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 3)
