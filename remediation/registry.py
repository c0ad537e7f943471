"""@check and @action: declare a runbook step once; bad declarations fail at import.

Each declaration becomes a Celery task named ``remediation.check.<name>`` or
``remediation.act.<name>`` (see tasks.py). Guard options live on the decorator; the
guard layer owns the allowed set (``GUARD_OPTIONS``).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from remediation.errors import RegistryError, UnknownTaskError
from remediation.findings import ActionResult, Finding
from remediation.params import ActionParams, CheckParams, Params

CHECK_PREFIX = "remediation.check."
ACTION_PREFIX = "remediation.act."
_NAME = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")


@dataclass(frozen=True)
class GuardOptions:
    """Which guards apply to an action and how tight they are."""

    cooldown: timedelta = timedelta(0)
    max_per_hour: int | None = None
    breaker: bool = True
    lock: bool = True
    verify: bool = True
    flap: bool = True  # N runs in M minutes on one target suspend it (settings.guards)
    # An unverified fix pages (unverified_fix) unless the action retries on later sweeps
    # with its own back-off and escalates by itself when it gives up (restart_container).
    escalate_unverified: bool = True

    def __post_init__(self) -> None:
        if self.cooldown < timedelta(0):
            raise RegistryError("cooldown must not be negative")
        if self.max_per_hour is not None and self.max_per_hour < 1:
            raise RegistryError("max_per_hour must be at least 1 (or None for no budget)")


GUARD_OPTIONS = frozenset(f.name for f in GuardOptions.__dataclass_fields__.values())


@dataclass(frozen=True)
class CheckSpec:
    name: str
    fn: Callable[..., list[Finding]]
    params_model: type[CheckParams]
    doc: str

    @property
    def task_name(self) -> str:
        return CHECK_PREFIX + self.name


@dataclass(frozen=True)
class ActionSpec:
    name: str
    fn: Callable[..., ActionResult]
    params_model: type[ActionParams]
    doc: str
    # (read-only context, params) -> Resolved with canonical params; raises Refused/Deferred
    resolve: Callable[[Any, Any], Any]
    guards: GuardOptions = field(default_factory=GuardOptions)
    resource: Callable[[Any], str] = lambda p: p.target
    timeout: timedelta | None = None  # soft time limit; None = REMEDIATION_CELERY__SOFT_TIME_LIMIT
    # blast-radius units reserved in the admitting call: (settings, params) -> units
    upfront: Callable[[Any, Any], int] | None = None
    # (read-only context, canonical params) -> remediation.plans.Plan; None: plans.generic
    plan: Callable[[Any, Any], Any] | None = None

    @property
    def task_name(self) -> str:
        return ACTION_PREFIX + self.name


CHECKS: dict[str, CheckSpec] = {}
ACTIONS: dict[str, ActionSpec] = {}


def _params_model(fn: Callable[..., Any], base: type[Params]) -> Any:
    hints = typing.get_type_hints(fn)
    params = list(inspect.signature(fn).parameters)
    if len(params) != 2 or params[0] != "ctx" or params[1] != "params":
        raise RegistryError(f"{fn.__name__}: signature must be (ctx, params)")
    model = hints.get("params")
    if not (isinstance(model, type) and issubclass(model, base)):
        raise RegistryError(f"{fn.__name__}: params must be annotated with a {base.__name__}")
    return model


def _check_name(name: str, table: dict[str, Any]) -> None:
    if not _NAME.match(name):
        raise RegistryError(f"{name!r}: names are lower_snake_case")
    if name in table:
        raise RegistryError(f"{name!r} is declared twice")


def check(name: str) -> Callable[[Callable[..., list[Finding]]], Callable[..., list[Finding]]]:
    """Declare a read-only check: (ctx, params) -> list[Finding]."""

    def register(fn: Callable[..., list[Finding]]) -> Callable[..., list[Finding]]:
        _check_name(name, CHECKS)
        model = _params_model(fn, CheckParams)
        _bounded(name, model)
        CHECKS[name] = CheckSpec(name, fn, model, _doc(fn))
        return fn

    return register


def action(
    name: str,
    *,
    resolve: Callable[[Any, Any], Any] | None = None,
    resource: Callable[[Any], str] | None = None,
    timeout: timedelta | None = None,
    upfront: Callable[[Any, Any], int] | None = None,
    plan: Callable[[Any, Any], Any] | None = None,
    **guards: Any,
) -> Callable[[Callable[..., ActionResult]], Callable[..., ActionResult]]:
    """Declare an idempotent action: (ctx, params) -> ActionResult, with its guard options.

    ``resolve(ctx, params)`` runs before any guard, read-only: it returns a Resolved whose
    params name the canonical resource (the configured target as configured, a container's
    own name) and raises Refused (outside the configuration, nothing there, nothing to do)
    or Deferred (the action's own back-off); ``resource`` names what locks, cooldowns and
    idempotency keys are scoped to, from the canonical params (default: the target);
    ``timeout`` overrides the soft time limit for long actions (backups);
    ``upfront(settings, params)`` is how many blast-radius units the admitting Lua call
    reserves (saving a round trip; unused ones are given back at completion);
    ``plan(ctx, params)`` computes, read-only, what the call would do (remediation.plans:
    shown for approval and in dry-run; once approved, the action acts only on the items of
    ``ctx.approved``)."""
    if timeout is not None and timeout <= timedelta(0):
        raise RegistryError(f"{name}: timeout must be positive")
    if resolve is None:  # every call names its canonical resource before any guard
        raise RegistryError(f"{name}: declare resolve= (remediation.resolve has the pieces)")
    unknown = set(guards) - GUARD_OPTIONS
    if unknown:
        raise RegistryError(f"{name}: unknown guard option(s) {sorted(unknown)}")
    options = GuardOptions(**guards)

    def register(fn: Callable[..., ActionResult]) -> Callable[..., ActionResult]:
        _check_name(name, ACTIONS)
        model = _params_model(fn, ActionParams)
        _bounded(name, model)
        spec = ActionSpec(
            name,
            fn,
            model,
            _doc(fn),
            resolve,
            guards=options,
            resource=resource or (lambda p: p.target),
            timeout=timeout,
            upfront=upfront,
            plan=plan,
        )
        ACTIONS[name] = spec
        return fn

    return register


def _bounded(name: str, model: type[Params]) -> None:
    """Every string, list and mapping a caller can send has a size bound (RegistryError
    naming the field otherwise): kwargs are hostile, and their size is the caller's to pick."""
    schema = model.model_json_schema()
    defs = schema.get("$defs", {})
    for where, node in _schema_nodes(schema, defs, "", set()):
        kind = node.get("type")
        if "enum" in node or "const" in node:
            continue
        if kind == "string" and "maxLength" not in node:
            raise RegistryError(f"{name}: {where or 'params'} needs a max_length")
        if kind == "array" and "maxItems" not in node:
            raise RegistryError(f"{name}: {where or 'params'} needs a max_length (items)")
        if kind == "object" and node.get("additionalProperties") not in (None, False):
            if "maxProperties" not in node:
                raise RegistryError(f"{name}: {where or 'params'} needs a max_length (keys)")


def _schema_nodes(node: Any, defs: dict[str, Any], where: str, seen: set[str]) -> Any:
    """(location, schema node) for the node and everything under it, $refs followed once."""
    if not isinstance(node, dict):
        return
    ref = node.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        if name not in seen:
            yield from _schema_nodes(defs.get(name, {}), defs, where, seen | {name})
        return
    yield where, node
    for key, child in (node.get("properties") or {}).items():
        yield from _schema_nodes(child, defs, f"{where}.{key}".lstrip("."), seen)
    for part in ("items", "additionalProperties"):
        if isinstance(node.get(part), dict):
            yield from _schema_nodes(node[part], defs, f"{where}[]", seen)
    for part in ("anyOf", "oneOf", "allOf"):
        for child in node.get(part) or ():
            yield from _schema_nodes(child, defs, where, seen)


def _doc(fn: Callable[..., Any]) -> str:
    doc = inspect.getdoc(fn)
    if not doc:
        raise RegistryError(f"{fn.__name__}: operators read the docstring; write one")
    return doc


_LOADED: list[bool] = []
"""Non-empty once load_all has imported everything (a lookup then costs a dict access, not
a walk of two package folders: it runs twice per action)."""


def load_all() -> None:
    """Import every module under remediation.checks and remediation.actions (once)."""
    if _LOADED:
        return
    for package in ("remediation.checks", "remediation.actions"):
        pkg = importlib.import_module(package)
        for mod in pkgutil.iter_modules(pkg.__path__):
            importlib.import_module(f"{package}.{mod.name}")
    _LOADED.append(True)


def _lookup(table: dict[str, Any], prefix: str, kind: str, name: str) -> Any:
    load_all()
    short = name.removeprefix(prefix)
    if short not in table:
        raise UnknownTaskError(f"no {kind} named {short!r} (known: {', '.join(sorted(table))})")
    return table[short]


def get_check(name: str) -> CheckSpec:
    """A check by short name or task name; UnknownTaskError lists the known ones."""
    spec: CheckSpec = _lookup(CHECKS, CHECK_PREFIX, "check", name)
    return spec


def get_action(name: str) -> ActionSpec:
    """An action by short name or task name; UnknownTaskError lists the known ones."""
    spec: ActionSpec = _lookup(ACTIONS, ACTION_PREFIX, "action", name)
    return spec


def task_names() -> set[str]:
    """Every task name a schedule or `celery call` may use."""
    load_all()
    return {c.task_name for c in CHECKS.values()} | {a.task_name for a in ACTIONS.values()}
