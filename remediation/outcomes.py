"""Every status the audit stores, defined once: check runs, guard decisions, action runs and
their verification.

StrEnums: a member is its string (``Outcome.SUCCEEDED == "succeeded"``), so the stored
values, the JSON the tasks return and the CLI's tables are the plain strings the audit
schema documents; only the code that writes them is checked by mypy.
"""

from __future__ import annotations

from enum import StrEnum


class CheckStatus(StrEnum):
    """A check run's status (check_runs.status)."""

    RUNNING = "running"
    OK = "ok"
    ERROR = "error"
    REJECTED = "rejected"  # its kwargs were refused: nothing ran
    DUPLICATE = "duplicate"  # a beat slot already run by another message: nothing ran


class Decision(StrEnum):
    """A guard decision about one action call (guard_decisions.decision)."""

    ADMITTED = "admitted"
    SUPPRESSED = "suppressed"  # a guard said no (pause, lock, cooldown, budget, breaker...)
    DUPLICATE = "duplicate"  # already done (or running) for this incident
    DRY_RUN = "dry_run"
    REFUSED = "refused"  # the call names nothing the configuration allows
    DEFERRED = "deferred"  # not now: the action says when it may act
    UNAVAILABLE = "unavailable"  # guard state or the resolve step's target did not answer
    BREAKER_RESET = "breaker_reset"  # an operator reset a breaker (`remediation breakers`)
    # approvals (issue 14): the call waits for a human, who approves or denies it; a pending
    # approval expires (= denied) or is withdrawn when its condition resolves
    PENDING_APPROVAL = "pending_approval"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"


class Outcome(StrEnum):
    """What became of one action call (action_runs.outcome, and the task's result). A call
    stopped before acting has its decision as its outcome."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"  # its kwargs (or trigger header) were refused: nothing ran
    REFUSED = "refused"
    DEFERRED = "deferred"
    DRY_RUN = "dry_run"
    SUPPRESSED = "suppressed"
    DUPLICATE = "duplicate"
    UNAVAILABLE = "unavailable"
    PENDING_APPROVAL = "pending_approval"  # waits for a human (remediation approvals)
    DENIED = "denied"  # its approval was denied or expired: not asked again, nothing ran


class Verification(StrEnum):
    """Whether the originating check recovered after the action (action_runs.verification)."""

    RECOVERED = "recovered"
    NOT_RECOVERED = "not_recovered"
    ERROR = "error"  # the check itself failed while verifying
    SKIPPED = "skipped"  # nothing to verify: failed, declined, by hand, or verify=False


ACTED = (Outcome.SUCCEEDED, Outcome.FAILED)
"""Outcomes after which the action ran; every other outcome means it did not."""
UNDECIDED = (Outcome.FAILED, Outcome.UNAVAILABLE)
"""Outcomes `remediation run --act` exits non-zero for: the effect failed, or the call could
not be decided (guard state or the resolve step's target did not answer)."""
