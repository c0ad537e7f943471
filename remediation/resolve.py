"""Building blocks of the actions' resolve steps (ENGINEERING.md, "The trust boundary").

A resolve step runs before any guard, read-only: it turns what a call names into the
canonical resource as configuration names it, or refuses. Every guard key, and the action's
own state, derive from what it returns, so `APP`, `App` and `app` are one resource and a
kwarg can narrow what configuration allows but never widen it.
"""

from __future__ import annotations

from typing import Any

from remediation.context import CheckContext, Resolved
from remediation.errors import Refused, TargetError


def canonical(params: Any, facts: dict[str, Any] | None = None, **names: Any) -> Resolved:
    """params with the given fields replaced by their canonical values."""
    return Resolved(params.model_copy(update=names), dict(facts or {}))


def postgres_target(ctx: CheckContext, name: str) -> str:
    """The configured PostgreSQL target name (as configured); Refused when none matches."""
    try:
        return ctx.settings.postgres_target(name)
    except TargetError as exc:
        raise Refused(str(exc)) from None


def redis_target(ctx: CheckContext, name: str, *, only: str | None = None, what: str = "") -> str:
    """The configured Redis target name (as configured); Refused when none matches, or when
    ``only`` is given and the call names another one (the one Redis that holds ``what``)."""
    try:
        target = ctx.settings.redis_target(name)
        wanted = ctx.settings.redis_target(only) if only is not None else target
    except TargetError as exc:
        raise Refused(str(exc)) from None
    if only is not None:
        if target != wanted:
            raise Refused(f"{what or 'this'} lives on Redis target {wanted!r}, not {target!r}")
    return target


def self_target(name: str, what: str) -> str:
    """'self' in any case -> 'self'; anything else refused (the action acts on this worker's
    own host or cluster, named by configuration, not by the caller)."""
    if name.lower() != "self":
        raise Refused(f"{what}: the target is always 'self', not {name!r}")
    return "self"


def postgres(ctx: CheckContext, params: Any) -> Resolved:
    """The default for actions on a configured PostgreSQL target: canonical target name."""
    return canonical(params, target=postgres_target(ctx, params.target))
