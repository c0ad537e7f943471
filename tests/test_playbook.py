"""The playbook refers only to registered tasks, and its params validate."""

from __future__ import annotations

from remediation import playbook, registry
from remediation.findings import Finding


def test_every_rule_names_a_registered_task() -> None:
    """Each rule's action (or follow-up check) exists under its stable task name."""
    names = registry.task_names()
    missing = [rule.task_name for rule in playbook.RULES if rule.task_name not in names]
    assert missing == []


def test_rule_params_validate_against_the_task_params() -> None:
    """The kwargs a rule builds from a typical finding pass the task's params model."""
    evidence = {"table": {"schema": "public", "name": "t"}, "scale_targets": ["pool"]}
    for rule in playbook.RULES:
        finding = Finding(check="c", target="app", subject="app-20261124T030000Z.dump"
                          if "backup" in rule.kind else "s", kind=rule.kind,
                          severity="critical", evidence=evidence)  # fmt: skip
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
    bare = Finding(check="c", target="celery", subject="q", kind="celery_queue_backlog",
                   severity="high", evidence={"scale_targets": []})  # fmt: skip
    assert [r.action for r in playbook.rules_for(bare)] == ["notify"]
    scaled = bare.model_copy(update={"evidence": {"scale_targets": ["pool"]}})
    assert [r.action for r in playbook.rules_for(scaled)] == ["scale_workers", "notify"]
