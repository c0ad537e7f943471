"""The Alertmanager intake in-process: payload validation, token comparison, rule matching,
dedupe and the runner's incident and playbook path, on fakeredis and the memory store."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import fakeredis
import pytest
from pydantic import ValidationError

from remediation.audit.memory import MemoryAuditStore
from remediation.guards import keys
from remediation.runner import Runner
from remediation.serve.guard import token_ok
from remediation.serve.intake import Intake, check_rules
from remediation.serve.payload import WebhookPayload
from remediation.settings import AlertRule
from tests.unit.doubles import Recorder

RULE = {
    "name": "queue-dupes",
    "alertname": "JobQueueDuplicates",
    "kind": "redis_job_queue_duplicates",
    "target": {"label": "redis"},
    "subject": {"label": "queue"},
    "severity": {"label": "severity"},
    "check": "redis_job_queue",
    "check_labels": {"key": "queue"},
}


def payload(
    status: str = "firing", starts: str = "2026-11-28T03:00:00.5+01:00", **labels: str
) -> WebhookPayload:
    alert = {
        "status": status,
        "labels": {
            "alertname": "JobQueueDuplicates",
            "queue": "job_queue",
            "redis": "self",
            "severity": "high",
            **labels,
        },
        "annotations": {"summary": "duplicates"},
        "startsAt": starts,
        "fingerprint": "0123456789abcdef",
    }
    return WebhookPayload.model_validate(
        {"version": "4", "groupKey": "g", "status": status, "receiver": "r", "alerts": [alert]}
    )


@pytest.fixture
def intake(runner: Callable[..., Runner]) -> Intake:
    made = runner(REMEDIATION_ALERTS__RULES=json.dumps([RULE]))
    return Intake(made.settings, made)


def test_token_compare_accepts_only_a_configured_bearer_token() -> None:
    """Right token with any case of 'Bearer' passes; wrong, empty, other schemes do not."""
    tokens = [b"a" * 30, b"b" * 30]
    assert token_ok(b"Bearer " + b"b" * 30, tokens)
    assert token_ok(b"bearer " + b"a" * 30, tokens)
    assert not token_ok(b"Bearer " + b"c" * 30, tokens)
    assert not token_ok(b"Basic " + b"a" * 30, tokens)
    assert not token_ok(b"Bearer ", tokens)
    assert not token_ok(None, tokens)
    assert not token_ok(b"Bearer x", [])


def test_payload_rejects_a_wrong_version_and_bad_fingerprints() -> None:
    """Only version 4 with hex fingerprints and label names is accepted."""
    good = payload().model_dump(mode="json")
    for change in ({"version": "3"}, {"alerts": [{**good["alerts"][0], "fingerprint": "ZZ"}]}):
        with pytest.raises(ValidationError):
            WebhookPayload.model_validate({**good, **change})
    bad_label = {**good["alerts"][0], "labels": {"not a label": "x"}}
    with pytest.raises(ValidationError):
        WebhookPayload.model_validate({**good, "alerts": [bad_label]})


def test_occurrence_is_one_spelling_of_starts_at() -> None:
    """The same instant in two time zones is the same occurrence (dedupe key); a time UTC
    cannot hold is refused, not a server error."""
    a = payload().alerts[0]
    b = payload(starts="2026-11-28T02:00:00.500Z").alerts[0]
    assert a.occurrence == b.occurrence == "2026-11-28T02:00:00.500000Z"
    with pytest.raises(ValidationError):
        payload(starts="0001-01-01T00:00:00+05:00")


def test_firing_alert_is_a_finding_that_runs_the_playbook_once(
    intake: Intake, sent: Recorder, store: MemoryAuditStore, state: fakeredis.FakeRedis
) -> None:
    """A mapped alert becomes redis_job_queue's finding, dispatched with a trigger naming that
    check and the queue; the same alert again is a duplicate that sends nothing."""
    reply = intake.receive(payload())
    assert (reply.mapped, reply.duplicates) == (1, 0)
    [(task, kwargs, trigger)] = sent.sent
    assert task == "remediation.act.dedupe_job_queue"
    assert kwargs == {"target": "self", "key": "job_queue"}
    assert trigger is not None and trigger.check == "redis_job_queue"
    assert trigger.check_params["key"] == "job_queue"
    [finding] = store.rows("findings")
    assert finding["severity"] == "high" and finding["incident_id"] == trigger.incident
    assert state.get(keys.incident(trigger.fingerprint)).decode() == trigger.incident
    again = intake.receive(payload())
    assert (again.mapped, again.duplicates) == (0, 1) and len(sent.sent) == 1
    runs = store.rows("check_runs", check="alertmanager")
    assert [r["params"]["alerts"][0]["outcome"] for r in runs] == ["mapped", "duplicate"]


def test_unmapped_and_unconfigured_target_are_audited_not_run(
    intake: Intake, sent: Recorder, store: MemoryAuditStore
) -> None:
    """No rule: unmapped; a target nobody configured: refused; neither dispatches."""
    assert intake.receive(payload(alertname="Other")).unmapped == 1
    assert intake.receive(payload(redis="elsewhere")).refused == 1
    assert sent.sent == []
    outcomes = [r["params"]["alerts"][0] for r in store.rows("check_runs", check="alertmanager")]
    assert [o["outcome"] for o in outcomes] == ["unmapped", "refused"]
    assert "elsewhere" in outcomes[1]["reason"]


def test_resolved_alert_closes_the_incident(
    intake: Intake, sent: Recorder, state: fakeredis.FakeRedis
) -> None:
    """A resolved notification deletes the open incident of the condition it maps to."""
    intake.receive(payload())
    trigger = sent.sent[0][2]
    assert trigger is not None and state.exists(keys.incident(trigger.fingerprint))
    reply = intake.receive(payload("resolved"))
    assert reply.resolved == 1 and not state.exists(keys.incident(trigger.fingerprint))


def test_a_failed_audit_gives_the_dedupe_key_back(
    intake: Intake, monkeypatch: pytest.MonkeyPatch, state: fakeredis.FakeRedis
) -> None:
    """When the audit cannot be written the alert is not marked seen: the retry processes it."""

    def broken(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("audit down")

    monkeypatch.setattr(intake.runner.store, "start_check_run", broken)
    with pytest.raises(RuntimeError):
        intake.receive(payload())
    alert = payload().alerts[0]
    assert not state.exists(keys.alert_seen(alert.fingerprint, alert.occurrence))


def test_rules_must_match_something_and_name_a_known_check(
    runner: Callable[..., Runner],
) -> None:
    """A rule without alertname or labels, or naming no check, is a configuration error."""
    with pytest.raises(ValidationError):
        AlertRule.model_validate({**RULE, "alertname": None})
    made = runner(REMEDIATION_ALERTS__RULES=json.dumps([{**RULE, "check": "no_such_check"}]))
    with pytest.raises(Exception, match="no_such_check"):
        check_rules(made.settings)


def test_rule_without_check_is_verified_by_the_alert_resolving(
    runner: Callable[..., Runner], sent: Recorder
) -> None:
    """No check in the rule: the trigger names alertmanager_alert, which reports the alert
    while it fires and nothing once Alertmanager posted it resolved."""
    rule = {k: v for k, v in RULE.items() if k not in ("check", "check_labels")}
    made = runner(REMEDIATION_ALERTS__RULES=json.dumps([rule]))
    intake = Intake(made.settings, made)
    intake.receive(payload())
    trigger = sent.sent[0][2]
    assert trigger is not None and trigger.check == "alertmanager_alert"
    firing = made.run_check(trigger.check, trigger.check_params, purpose="verify", act=False)
    assert [f.fingerprint for f in firing.findings] == [trigger.fingerprint]
    intake.receive(payload("resolved"))
    resolved = made.run_check(trigger.check, trigger.check_params, purpose="verify", act=False)
    assert resolved.findings == []
