"""The runbooks as data: which finding kind leads to which action, with which params.

Each rule cites the runbook step it automates (files in ../shared/runbooks/). Printed by
`remediation playbook` together with each action's guards and docstring. The rules live
by runbook area (database, backups, traffic, workers, host); `Rule` and the helpers that
build an action's params from a finding live in `rule`.
"""

from __future__ import annotations

from remediation.findings import Finding
from remediation.playbook import backups, database, host, security, traffic, workers
from remediation.playbook.rule import Rule, notify_params

__all__ = ["RULES", "Rule", "notify_params", "rules_for"]

# Rules of one kind run in the order given here; the README's runbook map follows it too.
RULES: list[Rule] = [
    *database.MAINTENANCE,
    *backups.RULES,
    *database.DATA,
    *traffic.ENDPOINTS,
    *traffic.PROXIES,
    *traffic.RATE_LIMITS,
    *workers.PAUSES,
    *workers.CONTAINERS,
    *host.CACHE,
    *host.HOST,
    *workers.CELERY,
    *workers.JOB_QUEUE,
    *security.SECRETS,
    *security.CLIENTS,
    *security.MONITORING,
    *security.KEYS,
    *security.DEPENDENCIES,
    *security.CERTIFICATES,
    *security.IMAGES,
]


def rules_for(finding: Finding) -> list[Rule]:
    return [rule for rule in RULES if rule.applies(finding)]
