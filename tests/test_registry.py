"""@check / @action reject bad declarations at import; tasks get stable names."""

from __future__ import annotations

from datetime import timedelta

import pytest

from remediation import registry
from remediation.errors import RegistryError
from remediation.findings import ActionResult, Finding
from remediation.params import ActionParams, CheckParams


class P(ActionParams):
    n: int = 1


def test_every_check_and_action_has_a_stable_task_name() -> None:
    """The shipped checks and actions are tasks under remediation.check.* / .act.*."""
    names = registry.task_names()
    assert {
        "remediation.check.postgres_dead_tuples",
        "remediation.check.redis_job_queue",
        "remediation.act.vacuum_analyze",
        "remediation.act.dedupe_job_queue",
        "remediation.act.dead_letter_stale_jobs",
        "remediation.act.notify",
        "remediation.act.analyze_tables",
        "remediation.act.terminate_idle_transactions",
        "remediation.act.cancel_long_queries",
        "remediation.act.backup_database",
        "remediation.act.verify_backup",
        "remediation.act.backup_files",
        "remediation.check.postgres_connections",
        "remediation.check.postgres_sessions",
        "remediation.check.postgres_unused_indexes",
        "remediation.check.postgres_database_size",
        "remediation.check.postgres_slow_queries",
        "remediation.check.postgres_data_quality",
        "remediation.check.postgres_backups",
    } <= names


def _same(ctx: object, params: object) -> object:
    return params


def test_unknown_guard_option_is_rejected() -> None:
    """A misspelt guard option fails at declaration, not at run time."""
    with pytest.raises(RegistryError, match="cooldwn"):
        registry.action("poke_x", resolve=_same, cooldwn=timedelta(1))


@pytest.mark.parametrize("opts", [{"cooldown": timedelta(seconds=-1)}, {"max_per_hour": 0}])
def test_bad_guard_values_are_rejected(opts: dict[str, object]) -> None:
    """Negative cooldowns and empty budgets are declaration errors."""
    with pytest.raises(RegistryError):
        registry.action("poke_x", resolve=_same, **opts)


def test_signature_docstring_and_names_are_checked() -> None:
    """Actions need (ctx, params: ActionParams), a docstring and a snake_case name."""

    def no_doc(ctx: object, params: P) -> ActionResult:
        return ActionResult()

    def documented(ctx: object, params: P) -> ActionResult:
        """Doc."""
        return ActionResult()

    def wrong_params(ctx: object, params: int) -> ActionResult:
        """Doc."""
        return ActionResult()

    with pytest.raises(RegistryError, match="docstring"):
        registry.action("poke_a", resolve=_same)(no_doc)
    with pytest.raises(RegistryError, match="ActionParams"):
        registry.action("poke_b", resolve=_same)(wrong_params)
    with pytest.raises(RegistryError, match="snake_case"):
        registry.action("PokeC", resolve=_same)(documented)
    with pytest.raises(RegistryError, match="twice"):
        registry.action("vacuum_analyze", resolve=_same)(documented)


def test_check_params_must_be_check_params() -> None:
    """A check annotated with an action's params model is refused."""

    def check_fn(ctx: object, params: P) -> list[Finding]:
        """Doc."""
        return []

    with pytest.raises(RegistryError, match="CheckParams"):
        registry.check("poke_check")(check_fn)
    assert issubclass(registry.get_check("postgres_dead_tuples").params_model, CheckParams)


def test_finding_fingerprint_is_stable_and_scoped() -> None:
    """Same check/target/subject/kind -> same fingerprint, whatever the observed value."""
    a = Finding(check="c", target="t", subject="s", kind="k", severity="high", observed=1)
    b = Finding(check="c", target="t", subject="s", kind="k", severity="warning", observed=9)
    c = Finding(check="c", target="t", subject="other", kind="k", severity="high")
    assert a.fingerprint == b.fingerprint != c.fingerprint


def test_an_action_without_a_resolve_step_is_refused_at_import() -> None:
    """Every action must name its canonical resource before any guard: no resolve=, no action."""
    from remediation.registry import action

    with pytest.raises(RegistryError, match="resolve"):
        action("no_resolve_step")


def test_an_unbounded_param_is_refused_at_import() -> None:
    """A string or list param without max_length fails at declaration, naming the field."""
    from remediation.params import ActionParams
    from remediation.registry import _bounded

    class Loose(ActionParams):
        note: str = ""

    with pytest.raises(RegistryError, match="note needs a max_length"):
        _bounded("loose", Loose)
