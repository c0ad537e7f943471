"""Runbook 003 "Rotate API Keys": 1. generate new keys, 2. update, 3. test with new keys,
4. revoke old keys. Here the new key is tested before it is written (a key that fails its
test is never installed) and the old one is revoked only once the new one is on disk.

Only keys configured rotatable (secret files: a variable of another process cannot be
written). Commands get the old key on stdin, never on their command line or in their
environment; no key value appears in a result, a log line or an audit row.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Any

from remediation.context import ActionContext, CheckContext, Resolved
from remediation.errors import Refused
from remediation.findings import ActionResult
from remediation.params import ActionParams
from remediation.registry import action
from remediation.resolve import canonical
from remediation.security import api_keys as keys
from remediation.settings.api_keys import ApiKey

KEYS_VAR = "REMEDIATION_API_KEYS__KEYS"


class RotateApiKeyParams(ActionParams):
    """target: the key's name in REMEDIATION_API_KEYS__KEYS."""


def resolve_key(ctx: CheckContext, params: RotateApiKeyParams) -> Resolved:
    """The key's name as configured. Refused: a name not configured, or a key not
    configured rotatable (a variable, or a file without rotatable=true)."""
    key = ctx.settings.api_keys.key(params.target)
    if key is None:
        names = [k.name for k in ctx.settings.api_keys.keys][:20]
        raise Refused(f"no API key named {params.target!r} in {KEYS_VAR} (names: {names})")
    if not key.rotatable:
        raise Refused(
            f"API key {key.name} is not configured rotatable ({keys.source_of(key)}):"
            " rotate it by hand, then `remediation keys rotated NAME`"
        )
    return canonical(params, {"source": keys.source_of(key)}, target=key.name)


def _resource(params: RotateApiKeyParams) -> str:
    return f"apikey:{params.target}"


def _failed(detail: dict[str, Any], step: str, why: str) -> ActionResult:
    detail.update(failed_step=step, error=why)
    return ActionResult(
        ok=False,
        changed=False,
        summary=f"rotation stopped at {step}: {why}; the old key stays in place",
        detail=detail,
    )


def _new_key(ctx: ActionContext, key: ApiKey, old: str, detail: dict[str, Any]) -> str:
    """Steps 1 and 3: a new key from the provider, accepted by the validation request.
    RotationError otherwise (nothing written yet)."""
    cfg = ctx.settings.api_keys
    new = keys.generate(key, old, cfg.command_timeout_seconds, cfg.max_key_bytes)
    detail["steps"].append("generated")
    check = keys.validate(key, new, cfg.timeout_seconds)
    if check.verdict != "valid":
        why = check.error or f"answered {check.status}"
        raise keys.RotationError(
            "validate",
            f"the new key is {check.verdict} ({why}); it was not installed and the provider"
            " may hold an unused key",
        )
    detail["steps"].append("validated")
    return new


@action(
    "rotate_api_key",
    resolve=resolve_key,
    resource=_resource,
    cooldown=timedelta(hours=1),
    max_per_hour=2,
    timeout=timedelta(minutes=5),
)
def rotate_api_key(ctx: ActionContext, params: RotateApiKeyParams) -> ActionResult:
    """Rotate an API key in the runbook's order (003 "Rotate API Keys"): generate a new key
    (generate_command, old key on stdin, or a POST to generate_url), test it with the
    validation request, write it over the secret file atomically (0600, fsynced, renamed;
    the old file kept as FILE.previous, 0600), and only then revoke the old key
    (revoke_command or revoke_url). Any failure before the write leaves the old key file
    untouched; a failed revoke after the write fails the action (escalated: the new key is
    live and the old one still valid; FILE.previous holds it for revoking by hand). Only
    keys configured rotatable. Verified by api_keys validating the key and finding it young."""
    cfg = ctx.settings.api_keys
    key = cfg.key(params.target)
    assert key is not None and key.file is not None  # resolve_key made sure
    detail: dict[str, Any] = {"key": key.name, "file": key.file, "steps": []}
    previous = key.file + keys.PREVIOUS_SUFFIX
    if os.path.lexists(previous):
        return _unrevoked(ctx, key, previous, detail)
    old, missing = keys.read_key(key, cfg.max_key_bytes)
    if old is None:
        return _failed(detail, "read", f"{missing}: nothing to rotate from")
    try:
        new = _new_key(ctx, key, old, detail)
        previous = keys.write_key(key.file, new)
    except keys.RotationError as exc:
        return _failed(detail, exc.step, keys.scrub(exc.message, old))
    except OSError as exc:
        return _failed(detail, "write", keys.scrub(f"{type(exc).__name__}: {exc}", old))
    detail["steps"].append("written")
    try:  # the file's mtime tells the age too: a state Redis down must not stop the revoke
        keys.record_rotation(ctx.state, key.name, time.time())
    except Exception as exc:
        ctx.log.warning("could not record the rotation", key=key.name, error=str(exc))
    return _revoke(ctx, key, old, previous, detail, new)


def _revoke(
    ctx: ActionContext, key: ApiKey, old: str, previous: str, detail: dict[str, Any], new: str
) -> ActionResult:
    """Step 4, once the new key is on disk: revoke the old one, then drop its copy."""
    try:
        keys.revoke(key, old, ctx.settings.api_keys.command_timeout_seconds)
    except keys.RotationError as exc:
        detail.update(failed_step="revoke", error=keys.scrub(exc.message, old, new), kept=previous)
        return ActionResult(
            ok=False,
            changed=True,
            summary=(
                f"new key for {key.name} written and live, but revoking the old one failed"
                f" ({detail['error']}): the old key is still valid; revoke it by hand"
                f" (kept in {previous}, 0600)"
            ),
            detail=detail,
        )
    detail["steps"].append("revoked")
    keys.drop_previous(previous)
    assert key.file is not None
    detail["mode"] = oct(os.stat(key.file).st_mode & 0o777)
    done = ", ".join(detail["steps"])
    return ActionResult(summary=f"API key {key.name} rotated ({done})", detail=detail)


def _unrevoked(
    ctx: ActionContext, key: ApiKey, previous: str, detail: dict[str, Any]
) -> ActionResult:
    """FILE.previous exists: a rotation wrote the new key and did not revoke the old one.
    The same task delivered again after its worker died (the copy written since its claim)
    finishes with the revoke; otherwise nothing is rotated over it (that would overwrite
    the only copy of a key still valid): the operator revokes it and deletes the file."""
    cfg = ctx.settings.api_keys
    written_since = (
        ctx.resumed_since is not None and os.stat(previous).st_mtime >= ctx.resumed_since - 1
    )
    if not written_since:
        return _failed(
            detail,
            "previous",
            f"{previous} holds an earlier key that was never revoked: revoke it by hand,"
            " delete the file, then rotate",
        )
    old = keys.read_key(key.model_copy(update={"file": previous}), cfg.max_key_bytes)[0]
    new = keys.read_key(key, cfg.max_key_bytes)[0]
    if old is None or new is None:
        return _failed(detail, "previous", f"{previous} or {key.file} cannot be read")
    detail["steps"] += ["generated", "validated", "written"]  # by the delivery that died
    detail["resumed"] = True
    return _revoke(ctx, key, old, previous, detail, new)
