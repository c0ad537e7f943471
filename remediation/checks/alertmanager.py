"""Alerts Alertmanager posted to `remediation serve`: still firing, or resolved (issue 14).

Verifies a fix triggered by an alert whose rule (REMEDIATION_ALERTS__RULES) names no check
of its own: the intake keeps one key per firing alert in the state Redis, set when the alert
is posted firing and deleted when it is posted resolved. Verification re-runs this check
(REMEDIATION_VERIFY__ATTEMPTS x DELAY_SECONDS, bounded) until the alert has resolved.
"""

from __future__ import annotations

from pydantic import Field

from remediation.context import CheckContext
from remediation.findings import Finding, Severity
from remediation.guards import keys
from remediation.params import CheckParams, TargetName
from remediation.registry import check

CHECK = "alertmanager_alert"


class AlertmanagerAlertParams(CheckParams):
    target: TargetName = Field("self", description="the target the alert's finding names")
    fingerprint: str = Field(
        max_length=32, pattern=r"^[0-9a-f]{1,32}$", description="Alertmanager's"
    )
    kind: str = Field(
        max_length=64, pattern=r"^[a-z][a-z0-9_]{0,63}$", description="the finding kind"
    )
    subject: str = Field("", max_length=600)


@check(CHECK)
def alertmanager_alert(ctx: CheckContext, params: AlertmanagerAlertParams) -> list[Finding]:
    """One alert posted by Alertmanager, while it is still firing (read from the state Redis,
    where `remediation serve` records firing and resolved alerts). Used to verify a fix
    triggered by an alert whose rule names no check; no finding once the alert resolved."""
    if not ctx.state.exists(keys.alert_firing(params.fingerprint)):
        return []
    return [
        Finding(
            check=CHECK,
            target=params.target,
            subject=params.subject,
            kind=params.kind,
            severity=Severity.WARNING,
            evidence={"alert_fingerprint": params.fingerprint},
            summary=f"alert {params.fingerprint} is still firing",
        )
    ]
