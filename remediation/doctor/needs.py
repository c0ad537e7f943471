"""Which actions need a probed thing: the playbook's actions for a finding kind."""

from __future__ import annotations

from remediation.playbook import RULES


def actions_for(*kinds: str) -> tuple[str, ...]:
    """The actions the playbook sends on findings of these kinds (sorted, no duplicates)."""
    return tuple(sorted({r.action for r in RULES if r.kind in kinds and r.run == "act"}))
