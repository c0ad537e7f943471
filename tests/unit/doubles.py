"""Doubles for the unit tier: a scripted check and action, and a recording dispatcher.

The check ``unit_probe`` reports what the test put in ``Probe.findings``; the action
``poke_thing`` does what the test put in ``Probe.script`` (one step per call). Both are real
declarations (the registry validates them as it validates the shipped ones), registered for
one test by the ``probe`` fixture in conftest.py, with one playbook rule joining them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

from remediation.context import ActionContext, CheckContext, Resolved, Trigger
from remediation.errors import Deferred, Refused
from remediation.findings import ActionResult, Finding, Severity
from remediation.params import ActionParams, CheckParams
from remediation.playbook import Rule
from remediation.registry import ACTION_PREFIX, action, check
from remediation.resolve import canonical

CHECK = "unit_probe"
ACTION = "poke_thing"
KIND = "unit_thing_stuck"
Step = Literal["ok", "fix", "fail", "raise", "refuse", "defer", "crash"]


class UnitProbeParams(CheckParams):
    """The fake check's kwargs: only the target."""


class PokeThingParams(ActionParams):
    thing: str = Field("x", min_length=1, max_length=64)


def stuck(target: str, thing: str, severity: Severity = Severity.HIGH) -> Finding:
    """The finding the playbook rule turns into poke_thing on target/thing."""
    return Finding(
        check=CHECK, target=target, subject=thing, kind=KIND, severity=severity, summary="stuck"
    )


def _resolve(ctx: CheckContext, params: PokeThingParams) -> Resolved:
    """Things are named in any case (THING is thing); 'nowhere' is refused, 'later' deferred."""
    if params.thing == "nowhere":
        raise Refused("no thing named 'nowhere'")
    if params.thing == "later":
        raise Deferred("thing is backing off", retry_at=time.time() + 60)
    return canonical(params, thing=params.thing.lower())


def _resource(params: PokeThingParams) -> str:
    return f"{params.target}/{params.thing}"


@dataclass
class Probe:
    """What the fake check reports and what the fake action does, for one test."""

    findings: list[Finding] = field(default_factory=list)
    script: list[Step] = field(default_factory=list)
    acted: list[tuple[PokeThingParams, ActionContext]] = field(default_factory=list)
    check_runs: int = 0
    down: bool = False  # the check's target does not answer

    def register(self) -> Rule:
        """Declare unit_probe and poke_thing (into the registry the caller swapped in);
        returns the playbook rule: unit_thing_stuck -> poke_thing on the finding's subject."""
        probe = self

        @check(CHECK)
        def unit_probe(ctx: CheckContext, params: UnitProbeParams) -> list[Finding]:
            """Reports what the test scripted (a unit-tier double)."""
            probe.check_runs += 1
            if probe.down:
                raise ConnectionError("probe target down: postgresql://u:secret-pw@db/x")
            return [f for f in probe.findings if f.target == params.target]

        @action(ACTION, resolve=_resolve, resource=_resource, upfront=lambda settings, p: 1)
        def poke_thing(ctx: ActionContext, params: PokeThingParams) -> ActionResult:
            """Pokes a thing (a unit-tier double: does what the test scripted)."""
            if ctx.reserve(1) < 1:  # one blast-radius unit per thing poked
                raise Deferred("no blast-radius unit left", guard="blast")
            probe.acted.append((params, ctx))
            return probe.step(params)

        return Rule(KIND, ACTION, lambda f: {"target": f.target, "thing": f.subject}, "unit tier")

    def step(self, params: PokeThingParams) -> ActionResult:
        step = self.script.pop(0) if self.script else "ok"
        if step == "fix":  # the condition is gone: verification sees it recover
            self.findings = [f for f in self.findings if f.subject != params.thing]
        if step == "fail":
            return ActionResult(ok=False, changed=False, summary="poke did not take")
        if step == "raise":
            raise RuntimeError("poke exploded at redis://:hunter2@cache:6379/0")
        if step == "crash":
            raise KeyboardInterrupt
        if step == "refuse":
            raise Refused("thing is already fine")
        if step == "defer":
            raise Deferred("thing asked for a pause", retry_at=time.time() + 60, guard="pacing")
        return ActionResult(summary=f"poked {params.thing}")


@dataclass
class Recorder:
    """A dispatcher that records what would be sent; with ``runner`` set, it also runs the
    actions named in ``inline`` in-process (as `remediation run --act` does)."""

    runner: Any = None
    inline: set[str] = field(default_factory=set)
    sent: list[tuple[str, dict[str, Any], Trigger | None]] = field(default_factory=list)
    outcomes: list[Any] = field(default_factory=list)

    def __call__(self, task: str, kwargs: dict[str, Any], trigger: Trigger | None) -> None:
        self.sent.append((task, kwargs, trigger))
        if self.runner is not None and task.removeprefix(ACTION_PREFIX) in self.inline:
            self.outcomes.append(self.runner.run_action(task, kwargs, trigger=trigger))

    def notices(self) -> list[str]:
        """The kinds of the notifications sent, in order."""
        return [k["kind"] for task, k, _ in self.sent if task == ACTION_PREFIX + "notify"]

    def tasks(self) -> list[str]:
        return [task for task, _, _ in self.sent]
