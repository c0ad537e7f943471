"""validate -> resolve -> guard -> act -> verify -> audit -> notify, without Celery.

Tasks (tasks.py) are thin wrappers around Runner.run_check / Runner.run_action; the CLI's
`run CHECK --act` uses the same Runner with an in-process dispatcher.

The order for an action call (ENGINEERING.md, "The trust boundary"): its kwargs are bounded
in size and validated; its trigger header, if any, is verified; its resolve step names the
canonical resource from configuration, read-only, or refuses (audited, free for the guards);
only then do the guards run, every key derived from the canonical resource. What an admitted
call does next (act, record, verify) is remediation.acting; notifications go through
remediation.notices; incident and hysteresis state live with the guards.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import structlog
from pydantic import ValidationError

from remediation import causes, metrics, playbook, rechecks, signing
from remediation.acting import Acting, reason_of
from remediation.approving import Gate
from remediation.audit.protocol import AuditTrail
from remediation.audit.store import AuditStore
from remediation.calls import (
    ActionCall,
    ActionOutcome,
    Admitted,
    CheckOutcome,
    validation_message,
)
from remediation.clients import redis as redis_clients
from remediation.context import CheckContext, Resolved, Trigger
from remediation.errors import (
    AuditError,
    ConfigError,
    Deferred,
    GuardUnavailable,
    Refused,
    TriggerError,
    UnknownTaskError,
)
from remediation.findings import Finding
from remediation.guards import incidents, streaks
from remediation.guards.chain import Admission, BlastAccount, GuardChain, is_dry_run
from remediation.logging import get_logger
from remediation.notices import Dispatch, Notices
from remediation.outcomes import CheckStatus, Decision, Outcome, Verification
from remediation.redact import redact_text, serialized_size, storable, truncated
from remediation.registry import ActionSpec, get_action, get_check
from remediation.settings import Settings
from remediation.timing import ms_since


class Runner:
    """The pipeline for one process. Holds no per-call state."""

    def __init__(
        self,
        settings: Settings,
        dispatch: Dispatch,
        store: AuditTrail | None = None,
        recheck: rechecks.Send | None = None,
    ):
        self.settings = settings
        self.dispatch = dispatch
        self.recheck = recheck
        """Sends a deferred fix's check to run when its wait ends (remediation.rechecks);
        None: the next sweep asks again."""
        # PostgreSQL (spooling while it is down) unless given one (MemoryAuditStore in tests)
        self.store: AuditTrail = store or AuditStore.from_settings(settings)
        self.log = get_logger("remediation.runner")
        self.notices = Notices(settings, self._dispatch, self.log)
        self.gate = Gate(settings, self.store, self.log, self.notices)
        self.acting = Acting(
            settings,
            self.store,
            self.log,
            self.notices,
            self._dispatch,
            self.run_check,
            self.gate,
            self._recheck,
        )

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
        cause: dict[str, Any] | None = None,
    ) -> CheckOutcome:
        """Run one check, audit its findings and (for detection) fan out the playbook.
        ``cause``: the event or beat slot it runs for (remediation.causes), audited."""
        spec = get_check(name)
        params, problem = self._validated(spec.params_model, kwargs)
        if problem is not None:
            run_id = self.store.rejected_check(spec.name, self._stored(kwargs), problem, task_id)
            metrics.check_run(spec.name, CheckStatus.REJECTED, 0.0)
            self.log.warning("check rejected", check=spec.name, reason=problem)
            return CheckOutcome(CheckStatus.REJECTED, run_id, error=problem)
        structlog.contextvars.bind_contextvars(check=spec.name, target=params.target)
        run_id = self.store.start_check_run(
            spec.name, params.target, params.model_dump(mode="json"), purpose, task_id, cause
        )
        metrics.check_cause(spec.name, causes.by(cause) if purpose == "detect" else purpose)
        started = time.monotonic()
        try:
            findings = spec.fn(CheckContext(self.settings, self.log, self.store), params)
        except Exception as exc:  # a broken check is recorded, never fatal to the worker
            error = redact_text(f"{type(exc).__name__}: {exc}")
            self.store.finish_check_run(run_id, CheckStatus.ERROR, 0, ms_since(started), error)
            metrics.check_run(spec.name, CheckStatus.ERROR, time.monotonic() - started)
            self.log.error("check failed", error=error)
            return CheckOutcome(CheckStatus.ERROR, run_id, error=error)
        outcome = CheckOutcome(CheckStatus.OK, run_id, findings=findings)
        detect = purpose == "detect" and act
        streaks = self._streaks(spec.name, params.scope, findings) if detect else {}
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
        self.store.finish_check_run(run_id, CheckStatus.OK, len(findings), ms_since(started))
        metrics.check_run(spec.name, CheckStatus.OK, time.monotonic() - started)
        self.log.info("check done", findings=len(findings), dispatched=outcome.dispatched)
        return outcome

    def _streaks(
        self, check: str, target: str, findings: list[Finding]
    ) -> dict[str, tuple[int, int]]:
        """(consecutive runs seen, runs needed) per fingerprint, when the check needs more
        than one run (hysteresis, remediation.guards.streaks)."""
        needed = streaks.needed(self.settings.guards, check)
        if needed <= 1:
            return {}
        fingerprints = [f.fingerprint for f in findings]
        try:
            counts = streaks.count(self.state, check, target, fingerprints)
        except Exception as exc:  # no state, no streak: nothing triggers (fail safe)
            self.log.error("hysteresis state unavailable; not triggering", error=str(exc))
            counts = [0] * len(fingerprints)
        return {fp: (n, needed) for fp, n in zip(fingerprints, counts, strict=True)}

    def _incident(self, finding: Finding) -> str:
        """The open incident for this condition, opened now if there is none."""
        candidate = incidents.new_id(finding.fingerprint)
        ttl = self.settings.guards.incident_ttl_seconds
        try:
            return incidents.open_or_join(self.state, finding.fingerprint, candidate, ttl)
        except Exception as exc:  # without state, no incident: the action's guards refuse too
            self.log.error("incident state unavailable", error=str(exc))
            return candidate

    def record_external(self, run_id: int, finding: Finding, params: Any) -> tuple[int, str, int]:
        """A finding seen outside a check (an Alertmanager alert), audited under ``run_id``:
        its incident opened or joined and the playbook fanned out, as a check's finding is.
        ``params`` are the verifying check's (finding.check) validated params.
        Returns (finding id, incident, tasks dispatched)."""
        incident = self._incident(finding)
        finding_id = self.store.add_finding(run_id, finding, incident)
        metrics.finding(finding.check, finding.kind, str(finding.severity))
        return finding_id, incident, self._fan_out(finding, finding_id, incident, params)

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
        self,
        name: str,
        kwargs: dict[str, Any],
        *,
        task_id: str | None = None,
        trigger: Trigger | None = None,
        header: Any = None,
        approval: Any = None,
    ) -> ActionOutcome:
        """Bound, validate, verify the trigger, resolve, [ask for approval], guard, act,
        record, verify, notify.

        ``trigger`` comes from an in-process dispatcher; ``header`` is a Celery message's raw
        trigger header, verified here (signature, shape, age) before anything else runs;
        ``approval`` is the raw approval header of an approved call (remediation.approving).
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
            call = self._resolve(call)
        except (Refused, Deferred) as exc:
            return self._declined_early(call, exc)
        except Exception as exc:  # its target did not answer: undecided, never acted on
            return self._unresolved(call, exc)
        structlog.contextvars.bind_contextvars(
            action=spec.name, target=call.target, resource=call.resource
        )
        try:
            if approval is not None:  # an approved call: its approval, claimed by this task
                call = dataclasses.replace(call, approval=self.gate.admit(call, approval))
            elif self.gate.needed(call, is_dry_run(self.settings, spec)):
                return self.gate.ask(call)
        except (Refused, Deferred) as exc:
            return self._declined_early(call, exc)
        except Exception as exc:  # its plan or the approval state could not be read
            return self._unresolved(call, exc)
        outcome = self._guard(call)
        if call.approval is not None:
            self.gate.finish(call.approval, outcome)
        return outcome

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

    def _resolve(self, call: ActionCall) -> ActionCall:
        """The call with the canonical params and facts of the action's resolve step
        (read-only, before any guard)."""
        ctx = CheckContext(self.settings, self.log, self.store)
        resolved: Resolved = call.spec.resolve(ctx, call.params)
        return dataclasses.replace(call, params=resolved.params, facts=resolved.facts)

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
            outcome=Outcome.REJECTED,
            error=message,
            finding_id=trigger.finding_id if trigger else None,
            task_id=task_id,
        )
        self.log.warning("action rejected", action=spec.name, reason=message)
        metrics.action_run(spec.name, Outcome.REJECTED, None)
        return ActionOutcome(Outcome.REJECTED, action_run_id=run_id, reason=message)

    def _declined_early(self, call: ActionCall, exc: Refused | Deferred) -> ActionOutcome:
        """Refused or deferred by the resolve step: a decision row, nothing held or spent."""
        if isinstance(exc, Refused):
            decision, guard = Decision.REFUSED, "resolve"
        else:
            decision, guard = Decision.DEFERRED, exc.guard
        reason = reason_of(exc)
        decision_id = self.store.add_decision(
            **call.decision(), decision=decision, guard=guard, reason=reason
        )
        metrics.guard_decision(call.spec.name, decision, guard)
        self.log.info(f"action {decision}", action=call.spec.name, reason=reason)
        if isinstance(exc, Refused) and exc.notice:
            self.notices.once("refused", call, f"{call.what} refused: {reason}")
        self._recheck(call, exc)
        return ActionOutcome(Outcome(decision), decision_id, reason=reason)

    def _recheck(self, call: ActionCall, exc: Refused | Deferred) -> None:
        """A call deferred until a time: its check again then (remediation.rechecks)."""
        retry_at = getattr(exc, "retry_at", None)
        if self.recheck is None or not isinstance(exc, Deferred) or not retry_at:
            return
        if call.trigger is None:  # a call by hand: whoever called decides when to call again
            return
        try:
            sent = rechecks.schedule(
                self.state,
                signing.key_of(self.settings),
                self.recheck,
                call.trigger,
                call.spec.name,
                call.resource,
                float(retry_at),
            )
        except Exception as exc2:  # the sweep asks again: never fatal to the decision
            self.log.warning("could not schedule the recheck", error=redact_text(str(exc2)))
            return
        if sent:
            self.log.info("recheck scheduled", check=call.trigger.check, retry_at=retry_at)

    def _unresolved(self, call: ActionCall, exc: Exception) -> ActionOutcome:
        """The resolve step could not read what it needs (the target did not answer)."""
        reason = redact_text(f"could not resolve: {type(exc).__name__}: {exc}")[:1000]
        decision_id = self.store.add_decision(
            **call.decision(), decision=Decision.UNAVAILABLE, guard="resolve", reason=reason
        )
        metrics.guard_decision(call.spec.name, Decision.UNAVAILABLE, "resolve")
        self.log.error("action not decided", action=call.spec.name, reason=reason)
        self.notices.once("unresolved", call, f"{call.what} not run: {reason}")
        return ActionOutcome(Outcome.UNAVAILABLE, decision_id, reason=reason)

    def _guard(self, call: ActionCall) -> ActionOutcome:
        """Admit or refuse the canonical call; act when admitted."""
        chain = GuardChain(self.state, self.settings, call.spec)
        try:
            upfront = call.spec.upfront(self.settings, call.params) if call.spec.upfront else None
            adm = chain.admit(
                call.target, call.resource, call.idempotency_key, call.task_id or "", upfront
            )
        except GuardUnavailable as exc:
            return self._without_state(call, chain, exc)
        try:
            decision_id = self.store.add_decision(
                **call.decision(), decision=adm.decision, guard=adm.guard, reason=adm.reason
            )
        except AuditError:  # never act without an audit row: give back what the guards took
            chain.abandon(adm, call.target, call.resource)
            raise
        metrics.guard_decision(call.spec.name, adm.decision, adm.guard)
        if adm.decision == Decision.DRY_RUN:
            return self._dry_run(call, adm, decision_id)
        if not adm.admitted:
            return self._suppressed(call, adm, decision_id)
        run = Admitted(call, chain, adm, decision_id, BlastAccount(chain, pool=adm.blast_granted))
        if adm.resumed:
            recorded = self.store.finished_run(call.task_id) if call.task_id else None
            if recorded is not None:
                return self.acting.resume_recorded(run, recorded)
            self.log.warning(
                "resuming an action whose worker died mid-action", claimed_at=adm.claimed_at
            )
        return self.acting.act(run)

    def _without_state(
        self, call: ActionCall, chain: GuardChain, exc: GuardUnavailable
    ) -> ActionOutcome:
        """No guard state: nothing acts, except a notification (telling a human is safe)."""
        if call.spec.name == "notify":
            reason = "guard state unavailable; notifications are sent regardless"
            decision_id = self.store.add_decision(
                **call.decision(), decision=Decision.ADMITTED, guard="state", reason=reason
            )
            adm = Admission(True, Decision.ADMITTED, idempotency_key=call.idempotency_key)
            return self.acting.act(Admitted(call, chain, adm, decision_id, BlastAccount(chain)))
        decision_id = self.store.add_decision(
            **call.decision(), decision=Decision.UNAVAILABLE, guard="state", reason=str(exc)
        )
        self.log.error("guard state unavailable; not acting", error=str(exc))
        metrics.guard_decision(call.spec.name, Decision.UNAVAILABLE, "state")
        self.notices.notify("guard_unavailable", call.incident, f"{call.what} not run: {exc}")
        return ActionOutcome(Outcome.UNAVAILABLE, decision_id, reason=str(exc))

    def _dry_run(self, call: ActionCall, adm: Admission, decision_id: int) -> ActionOutcome:
        """Audited with the plan the call would have (the one an approver would see)."""
        columns = call.run_columns()
        result: dict[str, Any]
        try:
            result = {"plan": self.gate.plan(call).model_dump(mode="json")}
        except Exception as exc:  # the plan is information: its failure is recorded
            result = {"plan_error": redact_text(f"{type(exc).__name__}: {exc}")[:1000]}
        run_id = self.store.add_action_run(
            **columns, outcome=Outcome.DRY_RUN, decision_id=decision_id, result=result
        )
        self.log.info("dry-run: would act", params=columns["params"])
        metrics.action_run(call.spec.name, Outcome.DRY_RUN, None)
        done = ActionOutcome(Outcome.DRY_RUN, decision_id, run_id, adm.reason)
        done.result = result
        return done

    def _suppressed(self, call: ActionCall, adm: Admission, decision_id: int) -> ActionOutcome:
        self.log.info("action suppressed", guard=adm.guard, reason=adm.reason)
        if adm.flap_escalate:  # once per suspension: the refusal that started it
            self.notices.notify(
                "flapping",
                call.flap_incident,
                f"{call.what} is flapping: {adm.reason}; suspended for "
                f"{self.settings.guards.flap_suspend_minutes} min",
            )
        return ActionOutcome(Outcome(adm.decision), decision_id, reason=adm.reason)

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
            call = self._resolve(call)
        except Exception:  # noqa: S110 - the resource as given is the best left to free
            pass
        chain = GuardChain(self.state, self.settings, spec)
        adm = Admission(
            True, Decision.ADMITTED, idempotency_key=call.idempotency_key, call_id=task_id
        )
        error = f"worker lost on all {attempts} deliveries: given up (poison task)"
        try:
            chain.give_up(adm, call.target, call.resource, task_id)
        except GuardUnavailable as exc:
            self.log.error("could not release a poison task's guard holds", error=str(exc))
        self.store.add_action_run(
            **call.run_columns(),
            outcome=Outcome.FAILED,
            error=error,
            verification=Verification.SKIPPED,
        )
        metrics.action_run(spec.name, Outcome.FAILED, None)
        self.log.error("poison task given up", action=spec.name, attempts=attempts)
        self.notices.notify("poison_task", call.incident, f"{call.what}: {error}")

    def _dispatch(self, task: str, kwargs: dict[str, Any], trigger: Trigger | None) -> None:
        try:
            self.dispatch(task, kwargs, trigger)
        except Exception as exc:  # the broker may be what is down: log, never crash the task
            self.log.error("could not dispatch", task=task, error=str(exc))
