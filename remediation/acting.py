"""act -> record -> follow up -> verify: what becomes of an admitted action call.

The runner decides (validate, resolve, guard); Acting runs what was admitted, completes its
admission in guard state, audits the run, sends the follow-up steps and notices its outcome
calls for, and verifies a triggered fix by re-running the originating check.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from remediation import metrics
from remediation.approving import Gate
from remediation.audit.protocol import AuditTrail
from remediation.calls import ActionCall, ActionOutcome, Admitted, CheckOutcome
from remediation.clients import redis as redis_clients
from remediation.context import ActionContext
from remediation.errors import Deferred, GuardUnavailable, Refused
from remediation.findings import ActionResult
from remediation.guards import incidents
from remediation.notices import Dispatch, Notices
from remediation.outcomes import CheckStatus, Outcome, Verification
from remediation.redact import bounded_text, redact_text
from remediation.registry import ACTION_PREFIX
from remediation.settings import Settings
from remediation.timing import ms_since

RunCheck = Callable[..., CheckOutcome]
"""run_check(name, kwargs, purpose=..., act=...): the runner's, for verification."""


class Acting:
    """Runs admitted calls for one runner and records what they did."""

    def __init__(
        self,
        settings: Settings,
        store: AuditTrail,
        log: Any,
        notices: Notices,
        dispatch: Dispatch,
        check: RunCheck,
        gate: Gate,
        on_deferred: Callable[[ActionCall, Refused | Deferred], None] | None = None,
    ) -> None:
        self.on_deferred = on_deferred
        self.gate = gate
        self.settings = settings
        self.store = store
        self.log = log
        self.notices = notices
        self.dispatch = dispatch
        self.check = check

    def act(self, run: Admitted) -> ActionOutcome:
        """Run the admitted action; record what it did (or that it declined after all)."""
        call, adm = run.call, run.adm
        ctx = ActionContext(
            self.settings,
            self.log,
            self.store,
            call.trigger,
            facts=call.facts,
            resumed_since=adm.claimed_at if adm.resumed else None,
            idempotency_key=adm.idempotency_key,
            reserve_units=run.blast.take,
        )
        run.started = time.monotonic()
        error: str | None = None
        note: dict[str, Any] | None = None
        try:
            if call.approval is not None:  # only what was approved and is still true
                note = self.gate.still_approved(call, call.approval, ctx)
            result = call.spec.fn(ctx, call.params)
            if note is not None:
                result = result.model_copy(update={"detail": {**result.detail, "approval": note}})
        except (Refused, Deferred) as exc:  # decided at run time: free, like a refusal
            return self._declined(run, exc)
        except (KeyboardInterrupt, SystemExit):
            run.complete(success=False)
            raise
        except BaseException as exc:  # SoftTimeLimitExceeded included: record, release
            error = redact_text(f"{type(exc).__name__}: {exc}")
            result = ActionResult(ok=False, changed=False, summary=error)
        return self._record(run, result, error)

    def _declined(self, run: Admitted, exc: Refused | Deferred) -> ActionOutcome:
        """The action refused or deferred after admission: everything the admission took is
        given back (claim, lock, budget, flap count, blast units), no outcome is recorded on
        the breaker, nothing is verified, nobody is paged about a failure."""
        call = run.call
        outcome = Outcome.REFUSED if isinstance(exc, Refused) else Outcome.DEFERRED
        reason = reason_of(exc)
        try:
            run.give_back()
        except GuardUnavailable as exc2:
            self.log.error("could not give back guard holds", error=str(exc2))
        retry_at = getattr(exc, "retry_at", None)
        run_id = self.store.add_action_run(
            **call.run_columns(),
            outcome=outcome,
            error=reason,
            result={"retry_at": retry_at} if retry_at else None,
            duration_ms=ms_since(run.started),
            decision_id=run.decision_id,
            verification=Verification.SKIPPED,
        )
        metrics.action_run(call.spec.name, outcome, time.monotonic() - run.started)
        self.log.info(f"action {outcome}", reason=reason)
        if self.on_deferred is not None:
            self.on_deferred(call, exc)
        if isinstance(exc, Refused) and exc.notice:
            self.notices.once("refused", call, f"{call.what} refused: {reason}")
        return ActionOutcome(outcome, run.decision_id, run_id, reason, Verification.SKIPPED)

    def _record(self, run: Admitted, result: ActionResult, error: str | None) -> ActionOutcome:
        """Complete the admission, audit the run, follow up, then verify."""
        call, success = run.call, result.ok
        outcome = Outcome.SUCCEEDED if success else Outcome.FAILED
        verify = success and call.spec.guards.verify and call.trigger
        verification = None if verify else Verification.SKIPPED
        # The outcome is on record before the guards learn it: a worker killed in between
        # leaves the claim to the same task, whose redelivery finds this row and only
        # completes the guards (resume_recorded), never acting twice nor going unaudited.
        try:
            run_id = self.store.add_action_run(
                **call.run_columns(),
                outcome=outcome,
                error=error or (None if success else result.summary),
                result=result.model_dump(mode="json"),
                duration_ms=ms_since(run.started),
                decision_id=run.decision_id,
                verification=verification,
            )
        finally:
            transition = self._complete(run, success)
        self.log.info("action done", outcome=outcome, summary=result.summary)
        metrics.action_run(call.spec.name, outcome, time.monotonic() - run.started)
        done = ActionOutcome(outcome, run.decision_id, run_id, result.summary, verification)
        done.result = result.model_dump(mode="json")
        self._follow_up(run, result, transition)
        if verification is None and call.trigger is not None:
            done.verification = self.verify(run_id, call)
            metrics.verification(call.spec.name, done.verification)
        return done

    def _complete(self, run: Admitted, success: bool) -> str:
        try:
            return run.complete(success)
        except GuardUnavailable as exc:
            self.log.error("could not record the outcome in guard state", error=str(exc))
            return ""

    def resume_recorded(self, run: Admitted, recorded: dict[str, Any]) -> ActionOutcome:
        """A redelivered task whose earlier delivery acted and recorded its outcome, then
        died before completing the guards: complete them now; do not act again."""
        success = recorded["outcome"] == Outcome.SUCCEEDED
        self.log.warning(
            "the task's outcome was recorded by a worker that died; completing its guards",
            action_run_id=recorded["id"],
            outcome=recorded["outcome"],
        )
        self._complete(run, success)
        result, verified = recorded.get("result") or {}, recorded.get("verification")
        done = ActionOutcome(
            Outcome(recorded["outcome"]),
            run.decision_id,
            recorded["id"],
            str(result.get("summary", "")),
            Verification(verified) if verified else None,
        )
        done.result = result
        if success and verified is None and run.call.trigger is not None:
            done.verification = self.verify(recorded["id"], run.call)
        return done

    def _follow_up(self, run: Admitted, result: ActionResult, transition: str) -> None:
        """The action's next steps (before verifying: they need not wait for it) and the
        notices its outcome calls for."""
        call = run.call
        for step in result.follow_up:
            self.dispatch(ACTION_PREFIX + step.action, dict(step.params), call.trigger)
        if not result.ok and call.spec.name != "notify":  # never notify about notifying
            self.notices.notify(
                "action_failed", call.incident, f"{call.what} failed: {result.summary}"
            )
        if transition == "opened":
            name = run.chain.breaker_name(call.target)
            self.notices.notify(
                "breaker_open",
                call.breaker_incident(name),
                f"circuit {name} opened after {call.what} failed; further runs are"
                f" suppressed until it half-opens or `remediation breakers reset"
                f" {name}`",
            )

    def verify(self, action_run_id: int, call: ActionCall) -> Verification:
        """Re-run the originating check until the condition is gone (bounded). A fix that did
        not recover leaves the incident open and its idempotency record freed: the next sweep
        may act again, within the cooldown, budget, flap guard and breaker."""
        assert call.trigger is not None
        trigger, cfg = call.trigger, self.settings.verify
        verdict, check_run_id = Verification.NOT_RECOVERED, None
        for attempt in range(cfg.attempts):
            if attempt:
                time.sleep(cfg.delay_seconds)
            outcome = self.check(trigger.check, trigger.check_params, purpose="verify", act=False)
            check_run_id = outcome.check_run_id
            if outcome.status != CheckStatus.OK:
                verdict = Verification.ERROR
                continue
            if all(f.fingerprint != trigger.fingerprint for f in outcome.findings):
                verdict = Verification.RECOVERED
                break
            verdict = Verification.NOT_RECOVERED
        self.store.set_verification(action_run_id, verdict, check_run_id)
        self.log.info("verification", verification=verdict)
        recovered = verdict == Verification.RECOVERED
        try:
            incidents.settle(
                redis_clients.state(self.settings),
                trigger.fingerprint,
                call.idempotency_key,
                recovered,
            )
        except Exception as exc:
            self.log.warning("could not update the incident", error=str(exc))
        if not recovered and call.spec.guards.escalate_unverified:
            self.notices.notify(
                "unverified_fix",
                trigger.incident,
                f"{call.what} ran but the check still fails ({verdict})",
            )
        return verdict


def reason_of(exc: Refused | Deferred) -> str:
    """A refusal's or deferral's reason as audited: redacted, bounded, with its retry time."""
    reason = redact_text(exc.reason)
    retry_at = getattr(exc, "retry_at", None)
    if retry_at:
        reason += f" (may act after {time.strftime('%H:%M:%S', time.gmtime(retry_at))} UTC)"
    return bounded_text(reason, 1000)
