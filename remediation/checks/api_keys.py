"""API keys (runbook 004 "API Key Validation Failure: check which keys are missing", runbook
003 "Rotate API Keys" and "Monthly: review and rotate API keys"): present, accepted, not too old.

Never the key itself in a finding: only its name, where it comes from, its age and what the
validation request answered.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

import redis
from pydantic import Field

from remediation.context import CheckContext
from remediation.findings import Finding, Severity
from remediation.params import CheckParams
from remediation.registry import check
from remediation.security import api_keys as keys
from remediation.settings import ApiKeySettings
from remediation.settings.api_keys import ApiKey

KEYS_VAR = "REMEDIATION_API_KEYS__KEYS"
MAX_CONCURRENT = 8
"""Validation requests in flight at once (each bounded by TIMEOUT_SECONDS)."""


class ApiKeysParams(CheckParams):
    """Every key of REMEDIATION_API_KEYS__KEYS, or the ones named."""

    keys: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        None, min_length=1, max_length=100, description=f"a subset of {KEYS_VAR} by name"
    )


def _finding(key: ApiKey, kind: str, severity: Severity, summary: str, **more: Any) -> Finding:
    evidence = {"source": keys.source_of(key), "rotatable": key.rotatable, **more.pop("ev", {})}
    return Finding(
        check="api_keys",
        target=key.name,
        kind=kind,
        severity=severity,
        evidence=evidence,
        summary=summary,
        **more,
    )


def _validity(key: ApiKey, value: str, cfg: ApiKeySettings) -> list[Finding]:
    if key.validate_url is None:
        return []
    result = keys.validate(key, value, cfg.timeout_seconds)
    ev = {"url": key.validate_url, "status": result.status, "error": result.error}
    if result.verdict == "invalid":
        return [
            _finding(
                key,
                "api_key_invalid",
                Severity.HIGH,
                f"API key {key.name} refused: {key.validate_url} answered {result.status}",
                observed=result.status,
                ev=ev,
            )
        ]
    if result.verdict == "unverifiable":
        why = result.error or f"status {result.status}"
        return [
            _finding(
                key,
                "api_key_unverifiable",
                Severity.WARNING,
                f"API key {key.name} cannot be validated (not known to be invalid): {why}",
                observed=result.status,
                ev=ev,
            )
        ]
    return []


def _age(key: ApiKey, recorded: dict[str, float], now: float) -> list[Finding]:
    if key.max_age_days is None:
        return []
    since, basis = keys.changed_at(key, recorded)
    age = keys.age_days(since, now)
    if age is None:
        return [
            _finding(
                key,
                "api_key_age_unknown",
                Severity.WARNING,
                f"API key {key.name} ({keys.source_of(key)}): no rotation on record; after"
                f" rotating it, run `remediation keys rotated {key.name}`",
                threshold=key.max_age_days,
            )
        ]
    if age <= key.max_age_days:
        return []
    return [
        _finding(
            key,
            "api_key_rotation_due",
            Severity.WARNING,
            f"API key {key.name} is {age:.1f} days old ({basis}), max {key.max_age_days:g}",
            observed=age,
            threshold=key.max_age_days,
            ev={"age_from": basis},
        )
    ]


def key_findings(
    key: ApiKey, cfg: ApiKeySettings, recorded: dict[str, float] | None
) -> list[Finding]:
    """One key: missing (nothing else then), else invalid / unverifiable, and rotation due
    (not judged when the rotations on record could not be read: ``recorded`` None)."""
    value, missing = keys.read_key(key, cfg.max_key_bytes)
    if value is None:
        return [
            _finding(
                key,
                "api_key_missing",
                Severity.HIGH,
                f"API key {key.name} is missing: {missing}",
                ev={"reason": missing},
            )
        ]
    ages = [] if recorded is None else _age(key, recorded, time.time())
    return _validity(key, value, cfg) + ages


@check("api_keys")
def api_keys(ctx: CheckContext, params: ApiKeysParams) -> list[Finding]:
    """Each key of REMEDIATION_API_KEYS__KEYS (runbooks 004 "API key validation failure", 003
    "Rotate API keys", monthly "review and rotate API keys").

    api_key_missing (high): its variable is unset or its secret file missing or empty.
    api_key_invalid (high): its validation request answered 401 or 403. api_key_unverifiable
    (warning): the request failed otherwise (no answer, timeout, another status): not known
    to be invalid. api_key_rotation_due: older than max_age_days, the age being the newer of
    the secret file's mtime and the rotation recorded in the state Redis (by rotate_api_key
    or `remediation keys rotated NAME`); api_key_age_unknown: a variable with no rotation on
    record (ages are not judged while the state Redis does not answer). Up to 8 keys are
    validated at once. The finding's target is the key's name; the key itself is never
    reported."""
    cfg = ctx.settings.api_keys
    wanted = None if params.keys is None else {n.lower() for n in params.keys}
    chosen = [k for k in cfg.keys if wanted is None or k.name.lower() in wanted]
    if not chosen:
        return []
    recorded: dict[str, float] | None
    try:
        recorded = keys.recorded_rotations(ctx.state)
    except redis.RedisError as exc:  # missing and refused keys matter more than their age
        ctx.log.warning("rotations on record unavailable; ages not judged", error=str(exc))
        recorded = None
    with ThreadPoolExecutor(min(MAX_CONCURRENT, len(chosen))) as pool:
        found = pool.map(lambda key: key_findings(key, cfg, recorded), chosen)
        return [f for per_key in found for f in per_key]
