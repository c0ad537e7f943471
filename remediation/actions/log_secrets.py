"""Runbook 004 "Security Check Failures": rotate the leaking log at once, enable FA scrubbing.

quarantine_log keeps the original bytes in the 0700 quarantine folder and masks the secrets
in the live file (remediation.security.log_quarantine); enable_log_scrubbing turns on the
application's flag (remediation.security.app_config) and asks for its restart, which the
playbook hands to restart_container (or, with no container configured, to a human).
"""

from __future__ import annotations

import os
import shlex
import time
from datetime import timedelta
from typing import Any

from pydantic import Field

from remediation import restarts
from remediation.context import ActionContext, CheckContext, Resolved
from remediation.errors import Refused
from remediation.findings import ActionResult, FollowUp
from remediation.params import ActionParams
from remediation.quarantine import QuarantineError
from remediation.redact import bounded_text
from remediation.registry import action
from remediation.resolve import canonical, self_target
from remediation.security import app_config, log_scan
from remediation.security.bounded_run import run_bounded
from remediation.security.log_patterns import pattern_set
from remediation.security.log_quarantine import TooBig, quarantine_and_mask

FILES_VAR = "REMEDIATION_SECRETS__FILES"


class QuarantineLogParams(ActionParams):
    file: str = Field(min_length=1, max_length=4096, description=f"a file {FILES_VAR} matches")


class EnableScrubbingParams(ActionParams):
    """The file and key come from REMEDIATION_SECRETS__APP_CONFIG and __SCRUB_KEY."""


def resolve_log(ctx: CheckContext, params: QuarantineLogParams) -> Resolved:
    """Target "self" and the file as the configured globs match it now: a regular file, not
    a symlink nor reached through one, outside the quarantine folder. Refused otherwise."""
    target = self_target(params.target, "quarantine_log")
    cfg = ctx.settings.secrets
    if not cfg.files:
        raise Refused(f"no log file is configured ({FILES_VAR} is empty)")
    files, _ = log_scan.matched_files(cfg.files, cfg.max_files, cfg.quarantine_dir)
    wanted = os.path.normpath(params.file)
    if wanted not in files:
        shown = params.file if len(params.file) <= 200 else params.file[:200] + "..."
        raise Refused(f"{shown!r} is not a regular file matched by {FILES_VAR}")
    return canonical(params, target=target, file=wanted)


@action(
    "quarantine_log",
    resolve=resolve_log,
    resource=lambda p: f"log:{p.file}",
    cooldown=timedelta(minutes=5),
    max_per_hour=20,
)
def quarantine_log(ctx: ActionContext, params: QuarantineLogParams) -> ActionResult:
    """Keep a leaking log's original in the quarantine folder and mask its secrets in place.

    Runbook 004 "IBKR FA Scrubbing Failure: if found, rotate logs immediately". The file's
    bytes are copied into REMEDIATION_SECRETS__QUARANTINE_DIR (0700; the copy 0600, with a
    .quarantine.json note; nothing is deleted), then each secret in the live file is
    overwritten with '*' of the same length: the application keeps writing to the same
    file, no line it appends meanwhile is lost, and the log stays readable. Only a file
    REMEDIATION_SECRETS__FILES matches (never through a symlink); a file over
    QUARANTINE_MAX_BYTES is refused. With ROTATE_COMMAND (e.g. logrotate -f CONFIG: no
    shell, ROTATE_TIMEOUT_SECONDS) the masked log is rotated too; a failed rotation fails
    the action (the secrets stay masked). Verification re-reads the lines that leaked."""
    cfg = ctx.settings.secrets
    path: str = resolve_log(ctx, params).params.file  # again: it may have changed since
    pset = pattern_set(cfg.patterns, cfg.disabled_patterns)
    reason = "secrets found by log_secrets (runbook 004 Security Check Failures)"
    try:
        done = quarantine_and_mask(
            path, pset, cfg.quarantine_dir, cfg.quarantine_max_bytes, cfg.max_line_bytes, reason
        )
    except TooBig as exc:
        raise Refused(f"{exc} (REMEDIATION_SECRETS__QUARANTINE_MAX_BYTES)") from None
    except (OSError, QuarantineError) as exc:
        error = getattr(exc, "strerror", None) or str(exc)
        return ActionResult(ok=False, changed=False, summary=f"{path}: {error}")
    detail: dict[str, Any] = {
        "file": path,
        "bytes": done.size,
        "quarantined_copy": done.copy,
        "sha256": done.sha256,
        "masked_lines": done.masked_lines,
        "lines": done.lines,
        "patterns": sorted(done.patterns.items()),  # pairs: audit masks a "*_token" key
        "changed_meanwhile": done.changed_meanwhile,
    }
    if not done.copy:
        return ActionResult(changed=False, summary=f"{path} holds no secret", detail=detail)
    summary = (
        f"{path}: original kept in {done.copy}; {done.masked_lines} line(s) masked"
        f" ({', '.join(sorted(done.patterns))})"
    )
    argv = shlex.split(cfg.rotate_command)
    rotated = _rotate(argv, cfg.rotate_timeout_seconds) if argv else ""
    detail["rotate"] = rotated or None
    if rotated and rotated != "ok":
        return ActionResult(
            ok=False, summary=f"{summary}; rotation failed: {rotated}", detail=detail
        )
    return ActionResult(summary=summary + ("; rotated" if rotated else ""), detail=detail)


def _rotate(argv: list[str], timeout: float) -> str:
    """Run the configured rotation (runbook 004: logrotate -f /etc/logrotate.d/autotrader):
    an argv, no shell, its process group killed at the deadline, output bounded and redacted,
    in an environment built for it (never the worker's secrets). "ok" or what went wrong."""
    try:
        done = run_bounded(argv, timeout, output_limit=2000)
    except OSError as exc:
        return f"{argv[0]}: {exc.strerror or exc}"
    if done.timed_out:
        return f"{argv[0]} did not finish within {timeout:g}s"
    if done.ok:
        return "ok"
    return bounded_text(f"{argv[0]} exited {done.code}: {done.output.strip()}", 500)


def resolve_config(ctx: CheckContext, params: EnableScrubbingParams) -> Resolved:
    """Target "self"; refused when no application configuration file is configured."""
    target = self_target(params.target, "enable_log_scrubbing")
    cfg = ctx.settings.secrets
    if not cfg.app_config:
        raise Refused("no application configuration: set REMEDIATION_SECRETS__APP_CONFIG")
    return canonical(params, {"file": cfg.app_config, "key": cfg.scrub_key}, target=target)


@action(
    "enable_log_scrubbing",
    resolve=resolve_config,
    resource=lambda p: "app_config",
    cooldown=timedelta(minutes=5),
    max_per_hour=6,
)
def enable_log_scrubbing(ctx: ActionContext, params: EnableScrubbingParams) -> ActionResult:
    """Turn on the application's log scrubbing: SCRUB_KEY: true in APP_CONFIG.

    Runbook 004 "Enable FA scrubbing in config: configs/security.yaml, ibkr_fa_scrubbing:
    true" (REMEDIATION_SECRETS__APP_CONFIG, __SCRUB_KEY, a dotted path). Comments and key
    order are kept (ruamel.yaml round trip); the previous file is kept as
    <name>.<stamp>.bak (the newest CONFIG_BACKUPS), the new one written atomically. Then the
    application must restart ("Restart services"): with APP_CONTAINER set, its restart is
    asked of restart_container (log_scrubbing_restart_due); without, a human is notified."""
    cfg = ctx.settings.secrets
    assert cfg.app_config is not None  # resolve_config
    try:
        backup = app_config.enable(cfg.app_config, cfg.scrub_key, cfg.config_backups)
    except (OSError, app_config.ConfigFileError) as exc:
        return ActionResult(ok=False, changed=False, summary=f"{cfg.app_config}: {exc}")
    detail: dict[str, Any] = {"file": cfg.app_config, "key": cfg.scrub_key, "backup": backup}
    if backup is None:
        return ActionResult(changed=False, summary=f"{cfg.scrub_key} already true", detail=detail)
    follow: list[FollowUp] = []
    if cfg.app_container:
        restarts.request(ctx.state, cfg.app_container, time.time())
        then = f"restart of {cfg.app_container} requested"
    else:
        then = "restart the application by hand (no REMEDIATION_SECRETS__APP_CONTAINER)"
        follow.append(
            FollowUp(
                action="notify",
                params={
                    "text": f"{cfg.scrub_key} turned on in {cfg.app_config}: {then}",
                    "incident": f"log_scrubbing:{cfg.app_config}"[:200],
                    "kind": "log_scrubbing_restart",
                    "severity": "high",
                },
            )
        )
    return ActionResult(
        summary=f"{cfg.scrub_key}: true in {cfg.app_config} (previous: {backup}); {then}",
        detail=detail,
        follow_up=follow,
    )
