"""Alertmanager intake: each firing alert a rule maps becomes a Finding that goes through
the same path as a check's (incident, audit, playbook, guards, act, verify).

A notification is audited as one check run of the pseudo-check ``alertmanager`` (purpose
detect); what became of each alert (mapped, duplicate, unmapped, refused, resolved) is kept
in that run's params. The finding is the verifying check's own (same check, target, subject,
kind), so its fingerprint is the one that check reports and verification re-runs it.

Dedupe: one Redis ``SET NX`` per alert occurrence (fingerprint + startsAt), before any
finding is written: a retry, a repeat, or the same alert from the other Alertmanager of an
HA pair finds the key set and runs nothing. A failure after the key was taken gives it back,
so Alertmanager's retry is processed (the reply is then a 503).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import redis

from remediation import metrics
from remediation.approvals import Approvals
from remediation.errors import ConfigError, TargetError, UnknownTaskError
from remediation.findings import Finding, Severity
from remediation.guards import keys
from remediation.outcomes import CheckStatus
from remediation.redact import bounded_text, redact_text
from remediation.registry import get_check
from remediation.runner import Runner
from remediation.serve.payload import Alert, IntakeReply, WebhookPayload
from remediation.settings import AlertRule, LabelOrFixed, Settings
from remediation.timing import ms_since

CHECK = "alertmanager"
ALERT_CHECK = "alertmanager_alert"
"""Verifies by the alert resolving (remediation.checks.alertmanager) when a rule names no check."""
"""The pseudo-check a notification is audited as (it has no task: Alertmanager runs it)."""


@dataclass
class Mapped:
    """A firing alert as a finding, with the verifying check's validated params."""

    rule: AlertRule
    finding: Finding
    params: Any


@dataclass
class Batch:
    """What one notification's alerts became, for the reply and the audit row."""

    alerts: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def note(self, alert: Alert, outcome: str, **extra: Any) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        row = {
            "fingerprint": alert.fingerprint,
            "startsAt": alert.occurrence,
            "status": alert.status,
        }
        self.alerts.append(
            {**row, "alertname": bounded_text(alert.alertname, 200), "outcome": outcome, **extra}
        )
        metrics.alert(outcome)


def check_rules(settings: Settings) -> None:
    """ConfigError naming the variable unless every rule names a known check whose params
    model accepts the rule's fixed params."""
    for n, rule in enumerate(settings.alerts.rules):
        where = f"REMEDIATION_ALERTS__RULES[{n}] ({rule.name})"
        if rule.check is None:
            continue
        try:
            spec = get_check(rule.check)
        except UnknownTaskError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        try:
            spec.params_model.model_validate({**rule.check_params, "target": "self"})
        except ValueError as exc:
            raise ConfigError(f"{where}: check_params: {exc}") from None


def rule_for(rules: list[AlertRule], alert: Alert) -> AlertRule | None:
    """The first rule whose alertname and labels all match."""
    for rule in rules:
        if rule.alertname is not None and alert.alertname != rule.alertname:
            continue
        if all(alert.labels.get(k) == v for k, v in rule.labels.items()):
            return rule
    return None


def _value(spec: LabelOrFixed, alert: Alert) -> str | None:
    return spec.value if spec.label is None else alert.labels.get(spec.label)


def _target(settings: Settings, rule: AlertRule, alert: Alert) -> str:
    """The configured target the alert names, spelled as configured; TargetError if none."""
    name = _value(rule.target, alert)
    if not name:
        raise TargetError(f"the alert has no label {rule.target.label!r} (the rule's target)")
    if rule.target_type == "redis":
        return settings.redis_target(name)
    if rule.target_type == "postgres":
        return settings.postgres_target(name)
    return name


def _severity(rule: AlertRule, alert: Alert) -> Severity:
    raw = (_value(rule.severity, alert) or "").lower()
    return Severity(raw) if raw in set(Severity) else Severity.WARNING


def mapped(settings: Settings, rule: AlertRule, alert: Alert) -> Mapped:
    """The finding a firing alert stands for. TargetError/ValueError when it names nothing
    the configuration allows."""
    target = _target(settings, rule, alert)
    named = _value(rule.subject, alert) if rule.subject else None
    subject = bounded_text(named or "", 512)
    if rule.check is None:  # verified by the alert resolving
        check_name = ALERT_CHECK
        kwargs: dict[str, Any] = {
            "target": target,
            "fingerprint": alert.fingerprint,
            "kind": rule.kind,
            "subject": subject,
        }
    else:
        check_name = rule.check
        labels = {k: alert.labels[v] for k, v in rule.check_labels.items() if v in alert.labels}
        kwargs = {**rule.check_params, **labels, "target": target}
    params = get_check(check_name).params_model.model_validate(kwargs)
    summary = alert.annotations.get("summary") or alert.annotations.get("description") or ""
    finding = Finding(
        check=check_name,
        target=target,
        subject=subject,
        kind=rule.kind,
        severity=_severity(rule, alert),
        evidence={
            "source": CHECK,
            "rule": rule.name,
            "alertname": bounded_text(alert.alertname, 200),
            "alert_fingerprint": alert.fingerprint,
            "starts_at": alert.occurrence,
            "labels": {k: redact_text(bounded_text(v, 512)) for k, v in alert.labels.items()},
        },
        summary=redact_text(bounded_text(summary or f"alert {alert.alertname} firing", 500)),
    )
    return Mapped(rule, finding, params)


class Intake:
    """Processes notifications for one `remediation serve` process."""

    def __init__(self, settings: Settings, runner: Runner, approvals: Approvals | None = None):
        self.settings = settings
        self.runner = runner
        self.approvals = approvals or Approvals(settings, runner.store)

    @property
    def state(self) -> redis.Redis:
        return self.runner.state  # type: ignore[no-any-return]

    def receive(self, payload: WebhookPayload) -> IntakeReply:
        """Classify every alert (dedupe first), audit the notification as one run of
        ``alertmanager`` with what became of each alert, then record and act on the new
        firing ones. Raises on a state or audit failure, with the dedupe keys given back."""
        started, batch = time.monotonic(), Batch()
        todo: list[tuple[Mapped, str]] = []
        taken: list[str] = []
        store = self.runner.store
        try:
            for alert in payload.alerts:
                metrics.alert("received")
                if alert.status == "resolved":
                    self._resolved(alert, batch)
                elif (item := self._firing(alert, batch)) is not None:
                    todo.append(item)
                    taken.append(item[1])
            meta = {"receiver": payload.receiver, "status": payload.status, "alerts": batch.alerts}
            receiver = bounded_text(redact_text(payload.receiver), 64) or "-"
            run_id = store.start_check_run(CHECK, receiver, meta, "detect", None)
        except Exception:
            self._give_back(taken)
            raise
        for n, (m, _key) in enumerate(todo):
            try:
                self.runner.record_external(run_id, m.finding, m.params)
            except Exception:
                self._give_back(taken[n:])
                store.finish_check_run(
                    run_id, CheckStatus.ERROR, n, ms_since(started), "intake failed"
                )
                raise
        store.finish_check_run(run_id, CheckStatus.OK, len(todo), ms_since(started))
        c = batch.counts
        return IntakeReply(
            received=len(payload.alerts),
            mapped=c.get("mapped", 0),
            duplicates=c.get("duplicate", 0),
            unmapped=c.get("unmapped", 0),
            refused=c.get("refused", 0),
            resolved=c.get("resolved", 0),
            check_run_id=run_id,
        )

    def _matched(self, alert: Alert, batch: Batch) -> Mapped | None:
        """The alert's finding, or None (noted unmapped or refused)."""
        rule = rule_for(self.settings.alerts.rules, alert)
        if rule is None:
            batch.note(alert, "unmapped")
            return None
        try:
            return mapped(self.settings, rule, alert)
        except (TargetError, ValueError) as exc:
            reason = redact_text(bounded_text(str(exc), 300))
            batch.note(alert, "refused", rule=rule.name, reason=reason)
            return None

    def _firing(self, alert: Alert, batch: Batch) -> tuple[Mapped, str] | None:
        """A new firing alert with its dedupe key taken, or None (noted)."""
        m = self._matched(alert, batch)
        if m is None:
            return None
        ttl = self.settings.alerts.dedupe_ttl_seconds
        self.state.set(keys.alert_firing(alert.fingerprint), alert.occurrence, ex=ttl)
        key = keys.alert_seen(alert.fingerprint, alert.occurrence)
        if not self.state.set(key, "1", nx=True, ex=self.settings.alerts.dedupe_ttl_seconds):
            batch.note(alert, "duplicate", rule=m.rule.name)
            return None
        batch.note(alert, "mapped", rule=m.rule.name, finding_fingerprint=m.finding.fingerprint)
        return m, key

    def _resolved(self, alert: Alert, batch: Batch) -> None:
        """Close the incident of the condition the alert stood for (if a rule maps it)."""
        m = self._matched(alert, batch)
        if m is None:
            return
        self.state.delete(keys.alert_firing(alert.fingerprint))
        closed = bool(self.state.delete(keys.incident(m.finding.fingerprint)))
        withdrawn = self.approvals.withdraw(m.finding.fingerprint, "the alert resolved")
        batch.note(
            alert,
            "resolved",
            rule=m.rule.name,
            incident_closed=closed,
            approvals_withdrawn=withdrawn,
        )

    def _give_back(self, taken: list[str]) -> None:
        try:
            if taken:
                self.state.delete(*taken)
        except Exception as exc:
            self.runner.log.error("could not give back alert dedupe keys", error=str(exc))
