"""A playbook rule and the helpers that turn a finding into an action's params."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from remediation.findings import Finding, Severity
from remediation.registry import ACTION_PREFIX, CHECK_PREFIX
from remediation.settings import get_settings


@dataclass(frozen=True)
class Rule:
    """finding kind -> an action, or (run="check") a follow-up check to look closer."""

    kind: str
    action: str
    params: Callable[[Finding], dict[str, Any]]
    runbook: str
    min_severity: Severity = Severity.WARNING
    run: Literal["act", "check"] = "act"
    when: Callable[[Finding], bool] | None = None  # a further condition on the finding

    def applies(self, finding: Finding) -> bool:
        return (
            finding.kind == self.kind
            and finding.severity.rank >= self.min_severity.rank
            and (self.when is None or self.when(finding))
        )

    @property
    def task_name(self) -> str:
        return (ACTION_PREFIX if self.run == "act" else CHECK_PREFIX) + self.action


def target(f: Finding) -> dict[str, Any]:
    return {"target": f.target}


def job_list(f: Finding) -> dict[str, Any]:
    return {"target": f.target, "key": f.subject}


def dump_file(f: Finding) -> dict[str, Any]:
    return {"target": f.target, "file": f.subject}


def integration(f: Finding) -> dict[str, Any]:
    return {"target": f.target, "integration": f.subject}


def state_self(f: Finding) -> dict[str, Any]:
    return {"target": "self"}


def backoff(direction: str) -> Callable[[Finding], dict[str, Any]]:
    def params(f: Finding) -> dict[str, Any]:
        out: dict[str, Any] = {
            "target": get_settings().backoff.redis_target,
            "direction": direction,
        }
        # Only a ban finding's observed value is a ban rate (a relaxable finding's is the delay).
        if direction == "increase" and isinstance(f.observed, float) and 0 <= f.observed <= 1:
            out["observed_rate"] = f.observed
        return out

    return params


def headers_target(f: Finding) -> dict[str, Any]:
    return {"target": get_settings().headers.redis_target}


def rate_limit_target(f: Finding) -> dict[str, Any]:
    return {"target": get_settings().rate_limits.redis_target}


def proxy_target(f: Finding) -> dict[str, Any]:
    """The Redis holding the proxy pool (an SLO finding's target is Prometheus, not it)."""
    return {"target": get_settings().proxies.redis_target}


def container(f: Finding) -> dict[str, Any]:
    return {"target": "docker", "container": f.subject}


def hard_reboot_on(f: Finding) -> bool:
    """The operator opted in to the hard reboot (REMEDIATION_CONTAINERS__HARD_REBOOT)."""
    return get_settings().containers.hard_reboot


def has_scale_target(f: Finding) -> bool:
    return bool(f.evidence.get("scale_targets"))


def scale_up(f: Finding) -> dict[str, Any]:
    return {"target": f.evidence["scale_targets"][0], "direction": "up"}


def scale_down(f: Finding) -> dict[str, Any]:
    return {"target": f.subject, "direction": "down"}


def compose_target(f: Finding) -> str | None:
    """The compose scale target running the overloaded container's service, if any."""
    for t in get_settings().workers.scale_targets:
        if t.backend == "compose" and (t.project, t.service) == (
            f.evidence.get("project"),
            f.evidence.get("service"),
        ):
            return t.name
    return None


def celery(f: Finding) -> dict[str, Any]:
    return {"target": "celery"}


def table(f: Finding) -> dict[str, Any]:
    return {"target": f.target, "tables": [f.evidence["table"]]}


def notify_params(f: Finding) -> dict[str, Any]:
    """A notification about a finding nobody can fix automatically."""
    return {
        "text": f"[{f.severity.value}] {f.check} on {f.resource}: {f.summary or f.kind}",
        "incident": f.fingerprint,
        "kind": f.kind,
        "severity": f.severity.value,
    }
