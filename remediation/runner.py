"""validate -> resolve -> guard -> act -> verify -> audit -> notify, without Celery.

Tasks (tasks.py) are thin wrappers around Runner.run_check / Runner.run_action; the CLI's
`run CHECK --act` uses the same Runner with an in-process dispatcher.

The order for an action call (ENGINEERING.md, "The trust boundary"): its kwargs are bounded
in size and validated; its trigger header, if any, is verified; its resolve step names the
canonical resource from configuration, read-only, or refuses (audited, free for the guards);
only then do the guards run, every key derived from the canonical resource.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable
from typing import Any

import structlog
from pydantic import ValidationError

from remediation import metrics, playbook, signing
from remediation.audit.protocol import AuditTrail
from remediation.audit.store import AuditStore
from remediation.calls import ActionCall, ActionOutcome, CheckOutcome, validation_message
from remediation.clients import redis as redis_clients
from remediation.context import ActionContext, CheckContext, Resolved, Trigger
from remediation.errors import (
    AuditError,
    ConfigError,
    Deferred,
    GuardUnavailable,
    Refused,
    TriggerError,
    UnknownTaskError,
)
from remediation.findings import ActionResult, Finding
from remediation.guards import keys
from remediation.guards.chain import Admission, BlastAccount, GuardChain
from remediation.guards.lua import script
from remediation.logging import get_logger
from remediation.redact import bounded_text, redact_text, serialized_size, storable, truncated
from remediation.registry import ACTION_PREFIX, ActionSpec, get_action, get_check
from remediation.settings import Settings
from remediation.timing import ms_since

# dispatch(task_name, kwargs, trigger) sends an action for execution (Celery or in-process)
Dispatch = Callable[[str, dict[str, Any], Trigger | None], None]
NOTIFY_TEXT_MAX = 4000
"""The notify action's text bound; longer texts are cut, never rejected."""


class Runner:
    """The pipeline for one process. Holds no per-call state."""

    def __init__(self, settings: Settings, dispatch: Dispatch, store: AuditTrail | None = None):
        self.settings = settings
        self.dispatch = dispatch
        # PostgreSQL (spooling while it is down) unless given one (MemoryAuditStore in tests)
        self.store: AuditTrail = store or AuditStore.from_settings(settings)
        self.log = get_logger("remediation.runner")

    @property
    def state(self) -> Any:
        return redis_clients.state(self.settings)

    def _validated(self, model: Any, kwargs: Any) -> tuple[Any, str | None]:
        """(params, None), or (None, why not): too big to look at (the size is checked first,
        REMEDIATION_GUARDS__MAX_KWARGS_BYTES), or not what the model accepts."""
        limit = self.settings.guards.max_kwargs_bytes
        size = serialized_size(kwargs)
        if size > limit:
            return None, (
                f"kwargs too large: {size} bytes serialized, the limit is {limit}"
                " (REMEDIATION_GUARDS__MAX_KWARGS_BYTES)"
            )
        try:
            return model.model_validate(kwargs), None
        except ValidationError as exc:
            return None, validation_message(exc)

    def _stored(self, kwargs: Any) -> Any:
        """Rejected kwargs as audited: storable, or only size + sha256 + prefix when big."""
        if serialized_size(kwargs) > self.settings.guards.max_kwargs_bytes:
            return truncated(kwargs)
        return storable(kwargs)

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
        params, problem = self._validated(spec.params_model, kwargs)
        if problem is not None:
            run_id = self.store.rejected_check(spec.name, self._stored(kwargs), problem, task_id)
            metrics.check_run(spec.name, "rejected", 0.0)
            self.log.warning("check rejected", check=spec.name, reason=problem)
            return CheckOutcome("rejected", run_id, error=problem)
        structlog.contextvars.bind_contextvars(check=spec.name, target=params.target)
        run_id = self.store.start_check_run(
            spec.name, params.target, params.model_dump(mode="json"), purpose, task_id
        )
        started = time.monotonic()
        try:
            findings = spec.fn(CheckContext(self.settings, self.log, self.store), params)
        except Exception as exc:  # a broken check is recorded, never fatal to the worker
            error = redact_text(f"{type(exc).__name__}: {exc}")
            self.store.finish_check_run(run_id, "error", 0, ms_since(started), error)
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
        self.store.finish_check_run(run_id, "ok", len(findings), ms_since(started))
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
            return redis_clients.text(current) if current else candidate
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
        trigger: Trigger | None = None, header: Any = None,
    ) -> ActionOutcome:  # fmt: skip
        """Bound, validate, verify the trigger, resolve, guard, act, record, verify, notify.

        ``trigger`` comes from an in-process dispatcher; ``header`` is a Celery message's raw
        trigger header, verified here (signature, shape, age) before anything else runs.
        Never raises on purpose."""
        spec = get_action(name)
        params, problem = self._validated(spec.params_model, kwargs)
        if problem is None:
            try:
                trigger = self._trigger(spec, kwargs, trigger, header)
            except TriggerError as exc:
                problem, trigger = f"trigger header refused: {exc}", None
        if problem is not None:
            return self._reject(spec, kwargs, problem, task_id, trigger)
        call = ActionCall(spec, params, task_id, trigger)
        try:
            resolved = self._resolve(call)
        except (Refused, Deferred) as exc:
            return self._declined_early(call, exc)
        except Exception as exc:  # its target did not answer: undecided, never acted on
            return self._unresolved(call, exc)
        call = dataclasses.replace(call, params=resolved.params, facts=resolved.facts)
        structlog.contextvars.bind_contextvars(
            action=spec.name, target=call.target, resource=call.resource
        )
        return self._guard(call)

    def _trigger(
        self, spec: ActionSpec, kwargs: dict[str, Any], trigger: Trigger | None, header: Any
    ) -> Trigger | None:
        """The call's trigger, verified: signed (a header), well-formed, naming a known check
        with params that check accepts. TriggerError otherwise."""
        if header is not None:
            try:
                key = signing.key_of(self.settings)
            except ConfigError as exc:
                raise TriggerError(str(exc)) from None
            trigger = Trigger.from_header(header, key, spec.task_name, kwargs)
        if trigger is None:
            return None
        trigger.validate()
        try:
            check = get_check(trigger.check)
        except UnknownTaskError:
            raise TriggerError(f"no check named {trigger.check!r}") from None
        _, problem = self._validated(check.params_model, trigger.check_params)
        if problem is not None:
            raise TriggerError(f"params of check {trigger.check}: {problem}")
        return trigger

    def _resolve(self, call: ActionCall) -> Resolved:
        """The action's resolve step: canonical params, read-only, before any guard."""
        ctx = CheckContext(self.settings, self.log, self.store)
        resolved: Resolved = call.spec.resolve(ctx, call.params)
        return resolved

    def _reject(
        self,
        spec: ActionSpec,
        kwargs: Any,
        message: str,
        task_id: str | None,
        trigger: Trigger | None,
    ) -> ActionOutcome:
        """Kwargs (or a trigger) refused before anything runs: one audited row, no guard."""
        stored = self._stored(kwargs)
        target = kwargs.get("target", "?") if isinstance(kwargs, dict) else "?"
        run_id = self.store.add_action_run(
            action=spec.name,
            target=redact_text(str(storable(target)))[:64],
            resource=None,
            params=stored,
            outcome="rejected",
            error=message,
            finding_id=trigger.finding_id if trigger else None,
            task_id=task_id,
        )
        self.log.warning("action rejected", action=spec.name, reason=message)
        metrics.action_run(spec.name, "rejected", None)
        return ActionOutcome("rejected", action_run_id=run_id, reason=message)

    def _declined_early(self, call: ActionCall, exc: Refused | Deferred) -> ActionOutcome:
        """Refused or deferred by the resolve step: a decision row, nothing held or spent."""
        refused = isinstance(exc, Refused)
        decision = "refused" if refused else "deferred"
        guard = "resolve" if refused else exc.guard  # type: ignore[union-attr]
        reason = _reason(exc)
        decision_id = self.store.add_decision(
            **call.decision(), decision=decision, guard=guard, reason=reason
        )
        metrics.guard_decision(call.spec.name, decision, guard)
        self.log.info(f"action {decision}", action=call.spec.name, reason=reason)
        if refused and exc.notice:  # type: ignore[union-attr]
            self._notice_once("refused", call, f"{call.what} refused: {reason}")
        return ActionOutcome(decision, decision_id, reason=reason)

    def _unresolved(self, call: ActionCall, exc: Exception) -> ActionOutcome:
        """The resolve step could not read what it needs (the target did not answer)."""
        reason = redact_text(f"could not resolve: {type(exc).__name__}: {exc}")[:1000]
        decision_id = self.store.add_decision(
            **call.decision(), decision="unavailable", guard="resolve", reason=reason
        )
        metrics.guard_decision(call.spec.name, "unavailable", "resolve")
        self.log.error("action not decided", action=call.spec.name, reason=reason)
        self._notice_once("unresolved", call, f"{call.what} not run: {reason}")
        return ActionOutcome("unavailable", decision_id, reason=reason)

    def _guard(self, call: ActionCall) -> ActionOutcome:
        """Admit or refuse the canonical call; act when admitted."""
        spec = call.spec
        chain = GuardChain(self.state, self.settings, spec)
        try:
            upfront = spec.upfront(self.settings, call.params) if spec.upfront else None
            adm = chain.admit(
                call.target, call.resource, call.idempotency_key, call.task_id or "", upfront
            )
        except GuardUnavailable as exc:
            if spec.name == "notify":  # telling a human is safe without guard state
                return self._notify_without_state(call, chain)
            decision_id = self.store.add_decision(
                **call.decision(), decision="unavailable", guard="state", reason=str(exc)
            )
            self.log.error("guard state unavailable; not acting", error=str(exc))
            metrics.guard_decision(spec.name, "unavailable", "state")
            self._notify("guard_unavailable", call.incident, f"{call.what} not run: {exc}")
            return ActionOutcome("unavailable", decision_id, reason=str(exc))
        try:
            decision_id = self.store.add_decision(
                **call.decision(), decision=adm.decision, guard=adm.guard, reason=adm.reason
            )
        except AuditError:  # never act without an audit row: give back what the guards took
            chain.abandon(adm, call.target, call.resource)
            raise
        metrics.guard_decision(spec.name, adm.decision, adm.guard)
        if adm.decision == "dry_run":
            run_id = self.store.add_action_run(
                **call.audit, params=call.params.model_dump(mode="json"), outcome="dry_run",
                decision_id=decision_id, finding_id=call.finding_id, task_id=call.task_id,
            )  # fmt: skip
            self.log.info("dry-run: would act", params=call.params.model_dump(mode="json"))
            metrics.action_run(spec.name, "dry_run", None)
            return ActionOutcome("dry_run", decision_id, run_id, adm.reason)
        if not adm.admitted:
            self.log.info("action suppressed", guard=adm.guard, reason=adm.reason)
            if adm.flap_escalate:  # once per suspension: the refusal that started it
                self._notify(
                    "flapping",
                    f"flap:{spec.name}:{call.resource}",
                    f"{call.what} is flapping: {adm.reason}; suspended for "
                    f"{self.settings.guards.flap_suspend_minutes} min",
                )
            return ActionOutcome(adm.decision, decision_id, reason=adm.reason)
        if adm.resumed:
            self.log.warning("resuming an action whose worker died mid-action",
                             claimed_at=adm.claimed_at)  # fmt: skip
        return self._act(call, chain, adm, decision_id)

    def record_worker_lost(
        self, name: str, kwargs: dict[str, Any], task_id: str, header: Any, attempts: int
    ) -> None:
        """A poison task: its worker died on every delivery and Celery gave up. Audit it, give
        back its claim (the holder is dead), count a breaker failure, notify."""
        spec = get_action(name)
        params, problem = self._validated(spec.params_model, kwargs)
        if problem is not None:
            return  # never admitted: its rejection is already audited
        try:
            trigger = self._trigger(spec, kwargs, None, header)
        except TriggerError:
            return  # never admitted either
        call = ActionCall(spec, params, task_id, trigger)
        try:  # the same canonical resource its admission held
            resolved = self._resolve(call)
            call = dataclasses.replace(call, params=resolved.params, facts=resolved.facts)
        except Exception:  # noqa: S110 - the resource as given is the best left to free
            pass
        chain = GuardChain(self.state, self.settings, spec)
        adm = Admission(True, "admitted", idempotency_key=call.idempotency_key, call_id=task_id)
        error = f"worker lost on all {attempts} deliveries: given up (poison task)"
        try:
            chain.give_up(adm, call.target, call.resource, task_id)
        except GuardUnavailable as exc:
            self.log.error("could not release a poison task's guard holds", error=str(exc))
        self.store.add_action_run(
            **call.audit, params=call.params.model_dump(mode="json"), outcome="failed",
            error=error, finding_id=call.finding_id, task_id=task_id, verification="skipped",
        )  # fmt: skip
        metrics.action_run(spec.name, "failed", None)
        self.log.error("poison task given up", action=spec.name, attempts=attempts)
        self._notify("poison_task", call.incident, f"{call.what}: {error}")

    def _notify_without_state(self, call: ActionCall, chain: GuardChain) -> ActionOutcome:
        reason = "guard state unavailable; notifications are sent regardless"
        decision_id = self.store.add_decision(
            **call.decision(), decision="admitted", guard="state", reason=reason
        )
        adm = Admission(True, "admitted", idempotency_key=call.idempotency_key)
        return self._act(call, chain, adm, decision_id)

    def _act(
        self, call: ActionCall, chain: GuardChain, adm: Admission, decision_id: int
    ) -> ActionOutcome:
        blast = BlastAccount(chain, pool=adm.blast_granted)
        ctx = ActionContext(
            self.settings, self.log, self.store, call.trigger, facts=call.facts,
            resumed_since=adm.claimed_at if adm.resumed else None,
            idempotency_key=adm.idempotency_key, reserve_units=blast.take,
        )  # fmt: skip
        started = time.monotonic()
        error: str | None = None
        try:
            result = call.spec.fn(ctx, call.params)
        except (Refused, Deferred) as exc:  # decided at run time: free, like a refusal
            return self._declined(call, chain, adm, blast, decision_id, exc, started)
        except BaseException as exc:  # SoftTimeLimitExceeded included: record, release
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                chain.complete(
                    adm, call.target, call.resource, False, blast.settle(adm.blast_granted)
                )
                raise
            error = redact_text(f"{type(exc).__name__}: {exc}")
            result = ActionResult(ok=False, changed=False, summary=error)
        return self._record(call, chain, adm, blast, decision_id, result, error, started)

    def _declined(
        self,
        call: ActionCall,
        chain: GuardChain,
        adm: Admission,
        blast: BlastAccount,
        decision_id: int,
        exc: Refused | Deferred,
        started: float,
    ) -> ActionOutcome:
        """The action refused or deferred after admission: everything the admission took is
        given back (claim, lock, budget, flap count, blast units), no outcome is recorded on
        the breaker, nothing is verified, nobody is paged about a failure."""
        outcome = "refused" if isinstance(exc, Refused) else "deferred"
        reason = _reason(exc)
        try:
            blast.settle(adm.blast_granted, everything=True)
            chain.abandon(adm, call.target, call.resource)
        except GuardUnavailable as exc2:
            self.log.error("could not give back guard holds", error=str(exc2))
        retry_at = getattr(exc, "retry_at", None)
        run_id = self.store.add_action_run(
            **call.audit,
            params=call.params.model_dump(mode="json"),
            outcome=outcome,
            error=reason,
            result={"retry_at": retry_at} if retry_at else None,
            duration_ms=ms_since(started),
            decision_id=decision_id,
            finding_id=call.finding_id,
            task_id=call.task_id,
            verification="skipped",
        )
        metrics.action_run(call.spec.name, outcome, time.monotonic() - started)
        self.log.info(f"action {outcome}", reason=reason)
        if isinstance(exc, Refused) and exc.notice:
            self._notice_once("refused", call, f"{call.what} refused: {reason}")
        return ActionOutcome(outcome, decision_id, run_id, reason, "skipped")

    def _record(
        self,
        call: ActionCall,
        chain: GuardChain,
        adm: Admission,
        blast: BlastAccount,
        decision_id: int,
        result: ActionResult,
        error: str | None,
        started: float,
    ) -> ActionOutcome:
        spec, success = call.spec, result.ok
        try:
            transition = chain.complete(
                adm, call.target, call.resource, success, blast.settle(adm.blast_granted)
            )
        except GuardUnavailable as exc:
            transition = ""
            self.log.error("could not record the outcome in guard state", error=str(exc))
        outcome = "succeeded" if success else "failed"
        verification = None if success and spec.guards.verify and call.trigger else "skipped"
        run_id = self.store.add_action_run(
            **call.audit, params=call.params.model_dump(mode="json"), outcome=outcome,
            error=error or (None if success else result.summary),
            result=result.model_dump(mode="json"), duration_ms=ms_since(started),
            decision_id=decision_id, finding_id=call.finding_id, task_id=call.task_id,
            verification=verification,
        )  # fmt: skip
        self.log.info("action done", outcome=outcome, summary=result.summary)
        metrics.action_run(spec.name, outcome, time.monotonic() - started)
        done = ActionOutcome(outcome, decision_id, run_id, result.summary, verification)
        done.result = result.model_dump(mode="json")
        for step in result.follow_up:  # before verifying: the next step need not wait for it
            self._dispatch(ACTION_PREFIX + step.action, dict(step.params), call.trigger)
        if not success and spec.name != "notify":  # never notify about notifying
            self._notify("action_failed", call.incident, f"{call.what} failed: {result.summary}")
        if transition == "opened":
            name = chain.breaker_name(call.target)
            self._notify(
                "breaker_open",
                f"breaker:{name}",
                f"circuit {name} opened after {call.what} failed; further runs are"
                f" suppressed until it half-opens or `remediation breakers reset"
                f" {name}`",
            )
        if verification is None and call.trigger is not None:
            done.verification = self._verify(run_id, call)
            metrics.verification(spec.name, done.verification)
        return done

    def _verify(self, action_run_id: int, call: ActionCall) -> str:
        """Re-run the originating check until the condition is gone (bounded). A fix that did
        not recover leaves the incident open and its idempotency record freed: the next sweep
        may act again, within the cooldown, budget, flap guard and breaker."""
        assert call.trigger is not None
        trigger, cfg = call.trigger, self.settings.verify
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
        try:
            if verdict == "recovered":
                self.state.delete(keys.incident(trigger.fingerprint))
            else:
                self.state.delete(keys.idempotency(call.idempotency_key))
        except Exception as exc:
            self.log.warning("could not update the incident", error=str(exc))
        if verdict != "recovered" and call.spec.guards.escalate_unverified:
            self._notify(
                "unverified_fix",
                trigger.incident,
                f"{call.what} ran but the check still fails ({verdict})",
            )
        return verdict

    def _notice_once(self, kind: str, call: ActionCall, text: str) -> None:
        """A warning about calls that did not run (refused, unresolvable): at most one per
        action and kind per REMEDIATION_NOTIFY__WINDOW_SECONDS, however many calls."""
        if call.spec.name == "notify":
            return
        try:
            first = self.state.set(
                keys.notice(kind, call.spec.name),
                "1",
                nx=True,
                ex=self.settings.notify.window_seconds,
            )
        except Exception as exc:  # no state: stay quiet rather than page once per call
            self.log.warning("notice state unavailable", error=str(exc))
            return
        if first:
            self._notify(f"action_{kind}", f"{kind}:{call.spec.name}", text, "warning")

    def _notify(self, kind: str, incident: str, text: str, severity: str = "high") -> None:
        """Send a notification through the notify action (deduplicated per incident + kind)."""
        kwargs = {
            "text": bounded_text(text, NOTIFY_TEXT_MAX),
            "incident": incident[:200],
            "kind": kind,
            "severity": severity,
        }
        self._dispatch(ACTION_PREFIX + "notify", kwargs, None)

    def _dispatch(self, task: str, kwargs: dict[str, Any], trigger: Trigger | None) -> None:
        try:
            self.dispatch(task, kwargs, trigger)
        except Exception as exc:  # the broker may be what is down: log, never crash the task
            self.log.error("could not dispatch", task=task, error=str(exc))


def _reason(exc: Refused | Deferred) -> str:
    reason = redact_text(exc.reason)
    retry_at = getattr(exc, "retry_at", None)
    if retry_at:
        reason += f" (may act after {time.strftime('%H:%M:%S', time.gmtime(retry_at))} UTC)"
    return bounded_text(reason, 1000)
