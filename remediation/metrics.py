"""The worker's own metrics (placeholder API; the multiprocess implementation replaces it)."""

from __future__ import annotations


def check_run(check: str, status: str, duration_s: float) -> None:
    """A check finished with status ok | error | rejected."""


def finding(check: str, kind: str, severity: str) -> None:
    """A check reported a finding."""


def guard_decision(action: str, decision: str, guard: str) -> None:
    """The guards decided on an action call."""


def action_run(action: str, outcome: str, duration_s: float | None) -> None:
    """An action call ended with this outcome."""


def verification(action: str, verdict: str) -> None:
    """An action's fix was verified (recovered | not_recovered | error)."""
