"""The playbook refers only to registered tasks, and its params validate."""

from __future__ import annotations

from remediation import playbook, registry
from remediation.findings import Finding, Severity


def test_every_rule_names_a_registered_task() -> None:
    """Each rule's action (or follow-up check) exists under its stable task name."""
    names = registry.task_names()
    missing = [rule.task_name for rule in playbook.RULES if rule.task_name not in names]
    assert missing == []


def test_rule_params_validate_against_the_task_params() -> None:
    """The kwargs a rule builds from a typical finding pass the task's params model."""
    evidence = {"table": {"schema": "public", "name": "t"}, "scale_targets": ["pool"]}
    for rule in playbook.RULES:
        finding = Finding(
            check="c",
            target="app",
            subject="app-20261124T030000Z.dump" if "backup" in rule.kind else "s",
            kind=rule.kind,
            severity="critical",
            evidence=evidence,
        )
        if rule.when is not None and not rule.when(finding):
            continue  # the rule does not fire for this finding
        spec = (
            registry.get_check(rule.action)
            if rule.run == "check"
            else registry.get_action(rule.action)
        )
        spec.params_model.model_validate(rule.params(finding))


def test_severity_floor_filters() -> None:
    """A rule with a high floor ignores a warning finding of its kind."""
    rule = next(r for r in playbook.RULES if r.kind == "postgres_unreachable")
    low = Finding(check="c", target="t", kind=rule.kind, severity="warning")
    assert playbook.rules_for(low) == []


def test_conditional_rule_needs_its_condition() -> None:
    """A backlog on a queue without a scale target notifies but does not scale."""
    bare = Finding(
        check="c",
        target="celery",
        subject="q",
        kind="celery_queue_backlog",
        severity="high",
        evidence={"scale_targets": []},
    )
    assert [r.action for r in playbook.rules_for(bare)] == ["notify"]
    scaled = bare.model_copy(update={"evidence": {"scale_targets": ["pool"]}})
    assert [r.action for r in playbook.rules_for(scaled)] == ["scale_workers", "notify"]


def test_a_ban_fans_out_to_the_whole_403_response() -> None:
    """Runbook 000 "HTTP 403 / CAPTCHA": a ban at the threshold rotates proxies, raises
    min_delay from the rate the check observed and regenerates headers; a ban under it
    (warning) rotates and regenerates but does not slow the scrapers down."""
    ban = Finding(
        check="proxy_pool_health",
        target="self",
        subject="pool",
        kind="proxy_banned",
        severity="high",
        observed=1 / 3,
        threshold=0.1,
    )
    rules = playbook.rules_for(ban)
    assert [r.action for r in rules] == ["rotate_proxies", "tune_backoff", "regenerate_headers"]
    assert rules[1].params(ban) == {
        "target": "self",
        "direction": "increase",
        "observed_rate": 1 / 3,
    }
    assert all(r.runbook.startswith("000 HTTP 403") for r in rules)
    light = ban.model_copy(update={"severity": Severity.WARNING, "observed": 0.05})
    assert [r.action for r in playbook.rules_for(light)] == ["rotate_proxies", "regenerate_headers"]


def test_easing_off_never_passes_the_delay_as_a_ban_rate() -> None:
    """A relaxable finding's observed value is min_delay (0.8 s here), not a ban rate."""
    relax = Finding(
        check="scrape_backoff",
        target="self",
        subject="k@0.8s",
        severity="info",
        kind="scrape_backoff_relaxable",
        observed=0.8,
        threshold=0.5,
    )
    (rule,) = playbook.rules_for(relax)
    assert rule.params(relax) == {"target": "self", "direction": "decrease"}
