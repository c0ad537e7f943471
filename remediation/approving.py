"""The runner's side of approvals (issue 14): ask before guarding, run what was approved.

After its resolve step, a call whose action and canonical target need approval
(REMEDIATION_APPROVALS__REQUIRE) and that carries no approval is not guarded: its plan is
computed read-only and it waits in ``pending_approval`` (one approval per call: the same
call from the next sweep joins it). A call that carries an approval header (sent by
remediation.approvals once a human approved) is checked here: the header's signature, the
approval's state (approved, claimed once by this task) and that the call is the one that
was approved (same action, same canonical params). Then the guards run as for any call;
just before acting, ``still_approved`` re-computes the plan and hands the action the keys
of the approved items that are still true (nothing new).
"""

from __future__ import annotations

from typing import Any

from remediation import plans, signing
from remediation.approvals import record_event, state, verify_header
from remediation.approvals.state import Approval
from remediation.audit.protocol import AuditTrail
from remediation.calls import ActionCall, ActionOutcome
from remediation.clients import redis as redis_clients
from remediation.context import ActionContext, CheckContext
from remediation.errors import ConfigError, Refused
from remediation.metrics import guard_decision
from remediation.notices import Notices
from remediation.outcomes import Decision, Outcome
from remediation.settings import Settings

PLAN_LINES = 10
"""Plan items a notification lists (the console, the CLI and the API show all)."""


class Gate:
    """Approvals for one runner."""

    def __init__(self, settings: Settings, store: AuditTrail, log: Any, notices: Notices):
        self.settings = settings
        self.store = store
        self.log = log
        self.notices = notices

    def needed(self, call: ActionCall, chain_dry_run: bool) -> bool:
        """Whether the call waits for approval: its action (or action@target) is listed and
        the call is not a dry run (a dry run records the same plan and never acts)."""
        return not chain_dry_run and self.settings.approvals.required(call.spec.name, call.target)

    def plan(self, call: ActionCall) -> plans.Plan:
        """The call's plan, computed read-only now."""
        ctx = CheckContext(self.settings, self.log, self.store)
        return plans.compute(call.spec, ctx, call.params)

    # --- asking -------------------------------------------------------------------------

    def ask(self, call: ActionCall) -> ActionOutcome:
        """Admit the call to pending_approval with its plan (or join the approval asked for
        the same call); audited; a new one is notified. Nothing is guarded or spent."""
        plan = self.plan(call)
        if not plan.items:
            raise Refused("nothing to approve: the plan is empty (nothing to do now)", notice=False)
        asked = state.ask(
            redis_clients.state(self.settings),
            action=call.spec.name,
            target=call.target,
            resource=call.resource,
            params=call.params.model_dump(mode="json"),
            plan=plan.model_dump(mode="json"),
            idempotency_key=call.idempotency_key,
            trigger=dict(call.trigger.__dict__) if call.trigger else None,
            fingerprint=call.trigger.fingerprint if call.trigger else None,
            ttl_seconds=self.settings.approvals.ttl_seconds,
        )
        a = asked.approval
        decision, outcome, reason = self._asked(asked.new, a)
        decision_id = self.store.add_decision(
            **call.decision(),
            decision=decision,
            guard="approval",
            reason=reason,
            detail={"approval": a.id, "plan": a.plan, "expires_at": a.expires_at},
        )
        guard_decision(call.spec.name, decision, "approval")
        self.log.info("action waits for approval", approval=a.id, new=asked.new)
        if asked.new:
            record_event(redis_clients.state(self.settings), "requested")
            self.notices.notify(
                "approval_pending", call.incident, self._text(call, a, plan), approval=a.id
            )
        done = ActionOutcome(outcome, decision_id, reason=reason)
        done.result = {"approval": a.id, "state": a.state, "plan": a.plan}
        return done

    @staticmethod
    def _asked(new: bool, a: Approval) -> tuple[Decision, Outcome, str]:
        if new:
            return (
                Decision.PENDING_APPROVAL,
                Outcome.PENDING_APPROVAL,
                f"approval {a.id} asked: {a.plan['summary']}",
            )
        if a.state == state.PENDING:
            return (
                Decision.PENDING_APPROVAL,
                Outcome.PENDING_APPROVAL,
                f"waits for approval {a.id} (asked already)",
            )
        if a.state in state.DECIDED:
            return (
                Decision.DENIED,
                Outcome.DENIED,
                f"approval {a.id} was {a.state} (by {a.decided_by}); not asked again"
                " for this incident",
            )
        return (
            Decision.DUPLICATE,
            Outcome.DUPLICATE,
            f"approval {a.id} is {a.state}: its run is on its way",
        )

    def _text(self, call: ActionCall, a: Approval, plan: plans.Plan) -> str:
        lines = [f"Approval needed ({a.id}): {plan.summary}"]
        lines += [f"  - {i.what}" for i in plan.items[:PLAN_LINES]]
        hidden = len(plan.items) - PLAN_LINES + plan.more
        if hidden > 0:
            lines.append(f"  ... and {hidden} more")
        minutes = self.settings.approvals.ttl_seconds // 60
        lines.append(
            f"Approve: `remediation approve {a.id}`; deny: `remediation deny {a.id} --reason"
            f" ...` (expires in {minutes} min; expiry denies)."
        )
        return "\n".join(lines)

    # --- running an approved call ---------------------------------------------------------

    def admit(self, call: ActionCall, raw: Any) -> Approval:
        """The approval an approved call's header names, claimed by this task. Refused
        (audited, free for the guards) when the header is forged, the approval is not
        approved (or is already run by another task), or it approved another call."""
        try:
            key = signing.key_of(self.settings)
            approval_id = verify_header(key, raw, call.spec.task_name)
        except (ConfigError, ValueError) as exc:
            raise Refused(f"approval header refused: {exc}") from None
        r = redis_clients.state(self.settings)
        approval = state.get(r, approval_id)
        if approval is None:
            raise Refused(f"no approval {approval_id}")
        if approval.action != call.spec.name or approval.params != call.params.model_dump(
            mode="json"
        ):
            raise Refused(f"approval {approval_id} approved another call")
        ok, why = state.claim(r, approval_id, call.task_id or call.idempotency_key)
        if not ok:
            raise Refused(why, notice=False)
        return approval

    def finish(self, approval: Approval, outcome: ActionOutcome) -> None:
        try:
            state.finish(redis_clients.state(self.settings), approval.id, str(outcome.outcome))
        except Exception as exc:
            self.log.error("could not record an approved call's outcome", error=str(exc))

    def still_approved(
        self, call: ActionCall, approval: Approval, ctx: ActionContext
    ) -> dict[str, Any]:
        """Hand the action (``ctx.approved``, ``ctx.approved_detail``) the items it may
        touch: approved and still in the plan re-computed now; what became of the approved
        plan, for the run's result. Refused when nothing approved is still true (the
        condition went away, or changed entirely)."""
        approved = plans.Plan.model_validate(approval.plan)
        now = self.plan(call)
        keep = approved.keys() & now.keys()
        gone = sorted(approved.keys() - now.keys())
        note: dict[str, Any] = {
            "approval": approval.id,
            "approved_by": approval.decided_by,
            "approved_items": len(approved.items),
            "still_true": sorted(keep),
            "gone": gone,
            "new_not_approved": sorted(now.keys() - approved.keys()),
        }
        if not keep:
            raise Refused(
                f"approval {approval.id}: nothing approved is still true"
                f" ({len(gone)} item(s) gone); nothing done",
                notice=False,
            )
        ctx.approved = frozenset(keep)
        ctx.approved_detail = {i.key: dict(i.detail) for i in approved.items if i.key in keep}
        return note
