"""Which actions are "enabled": the ones whose missing prerequisites make the doctor fail.

An action is enabled when some playbook rule can send it (``run == "act"``) and the
settings let it act:

* global dry-run (``REMEDIATION_GUARDS__DRY_RUN=true``): nothing acts, nothing is enabled;
* per-action dry-run (``REMEDIATION_GUARDS__DRY_RUN_ACTIONS``): those are not;
* actions a setting switches off (``OFF_UNLESS``): recreate_service without
  ``CONTAINERS__HARD_REBOOT``, regenerate_headers without ``HEADERS__ENABLED``,
  revoke_stuck_tasks without ``WORKERS__REVOKE_STUCK``, cancel_long_queries without
  ``POSTGRES__CANCEL_LONG_QUERIES``, and the two session actions while no allow-list
  (``POSTGRES__SESSION_ALLOW_ROLES`` / ``_APPLICATIONS``) names anything.

A ✗ that only a disabled action needs is shown but does not make the doctor exit 1.
"""

from __future__ import annotations

from collections.abc import Callable

from remediation import playbook
from remediation.settings import Settings


def _always(_: Settings) -> bool:
    return True


def _sessions_allowed(s: Settings) -> bool:
    return bool(s.postgres.session_allow_roles or s.postgres.session_allow_applications)


OFF_UNLESS: dict[str, Callable[[Settings], bool]] = {
    "recreate_service": lambda s: s.containers.hard_reboot,
    "regenerate_headers": lambda s: s.headers.enabled,
    "revoke_stuck_tasks": lambda s: s.workers.revoke_stuck,
    "cancel_long_queries": lambda s: s.postgres.cancel_long_queries and _sessions_allowed(s),
    "terminate_idle_transactions": _sessions_allowed,
}
"""Actions that refuse to act unless a setting says so: action -> is it switched on."""


def playbook_actions() -> frozenset[str]:
    """Every action some playbook rule can send."""
    return frozenset(rule.action for rule in playbook.RULES if rule.run == "act")


def enabled_actions(settings: Settings) -> frozenset[str]:
    """The playbook's actions that would act with these settings (see the module doc)."""
    if settings.guards.dry_run:
        return frozenset()
    dry = set(settings.guards.dry_run_actions)
    return frozenset(
        name
        for name in playbook_actions()
        if name not in dry and OFF_UNLESS.get(name, _always)(settings)
    )
