"""quarantine_log and enable_log_scrubbing on real files: the original kept aside (0700 /
0600), secrets masked in the same inode without losing a line, only configured files, the
application's YAML changed atomically with its comments and a backup."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from remediation import restarts
from remediation.actions.containers import ContainerParams, resolve_container, restart_container
from remediation.actions.log_secrets import (
    EnableScrubbingParams,
    QuarantineLogParams,
    enable_log_scrubbing,
    quarantine_log,
    resolve_config,
    resolve_log,
)
from remediation.context import ActionContext, CheckContext
from remediation.errors import Refused
from remediation.findings import ActionResult
from remediation.logging import get_logger
from remediation.quarantine import NOTE_SUFFIX
from tests.support.docker_compose import DOCKER_URL, ComposeProject
from tests.support.env import missing

FA = "F7654321"
GH = "ghp_" + "Zq8" * 12
NORMAL = "2026-11-28T01:00:00Z INFO order filled symbol=AAPL qty=10 status=200\n"


def settings(settings_env: Any, tmp_path: Path, **env: str) -> Any:
    return settings_env(
        REMEDIATION_SECRETS__FILES=json.dumps([str(tmp_path / "logs" / "*.log")]),
        REMEDIATION_SECRETS__QUARANTINE_DIR=str(tmp_path / "quarantine"),
        **{f"REMEDIATION_SECRETS__{k.upper()}": v for k, v in env.items()},
    )


def quarantine(s: Any, path: Path | str) -> ActionResult:
    return quarantine_log(ActionContext(s, get_logger()), QuarantineLogParams(file=str(path)))


def plant(tmp_path: Path) -> Path:
    log = tmp_path / "logs" / "app.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(NORMAL + f"INFO allocation fa={FA} acct=U1234567\n" + NORMAL + f"t {GH}\n")
    return log


def test_original_kept_aside_and_secrets_masked_in_the_same_inode(
    settings_env: Any, tmp_path: Path
) -> None:
    """The copy in the 0700 folder is 0600 and byte for byte the original; the live file
    keeps its inode and size, its other lines, and no secret; the result names lines and
    patterns, never a secret; the note does not hold one either."""
    s = settings(settings_env, tmp_path)
    log = plant(tmp_path)
    original, before = log.read_bytes(), os.stat(log)
    result = quarantine(s, log)
    assert (result.ok, result.changed, result.detail["lines"]) == (True, True, [2, 4])
    copy = Path(result.detail["quarantined_copy"])
    assert copy.read_bytes() == original
    assert stat.S_IMODE(os.stat(copy).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "quarantine").st_mode) == 0o700
    after = os.stat(log)
    assert (after.st_ino, after.st_size) == (before.st_ino, before.st_size)
    text = log.read_text()
    assert FA not in text and "U1234567" not in text and GH not in text
    assert "fa=********" in text and text.splitlines()[0] == NORMAL.strip()
    note = Path(str(copy) + NOTE_SUFFIX).read_text()
    shown = json.dumps(result.model_dump(mode="json")) + note
    assert FA not in shown and GH not in shown
    assert quarantine(s, log).changed is False  # nothing left to mask


def test_lines_written_meanwhile_are_never_lost(settings_env: Any, tmp_path: Path) -> None:
    """A writer appending (O_APPEND, like a logger) during the action: every one of its
    lines is in the file afterwards, once, in order, after the masked ones."""
    s = settings(settings_env, tmp_path)
    log = plant(tmp_path)
    with open(log, "a") as fh:
        fh.writelines(f"{NORMAL.strip()} fa={FA} n={i}\n" for i in range(20_000))
    stop = threading.Event()
    written: list[int] = []

    def writer() -> None:
        with open(log, "a", buffering=1) as fh:
            i = 0
            while not stop.is_set() or i < 100:
                fh.write(f"late line {i}\n")
                written.append(i)
                i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        result = quarantine(s, log)
    finally:
        stop.set()
        thread.join()
    assert result.ok and result.detail["masked_lines"] >= 2
    late = [line for line in log.read_text().splitlines() if line.startswith("late line ")]
    assert late == [f"late line {i}" for i in written]


def test_only_configured_regular_files_are_touched(settings_env: Any, tmp_path: Path) -> None:
    """A file outside the globs, a symlink, a path climbing out with '..' and a file in the
    quarantine folder are refused before anything runs; the target is always self."""
    s = settings(settings_env, tmp_path)
    ctx = CheckContext(s, get_logger())
    log = plant(tmp_path)
    outside = tmp_path / "other.log"
    outside.write_text(f"fa={FA}\n")
    (tmp_path / "logs" / "link.log").symlink_to(outside)
    for name in (outside, tmp_path / "logs" / "link.log", tmp_path / "logs" / ".." / "other.log"):
        with pytest.raises(Refused):
            resolve_log(ctx, QuarantineLogParams(file=str(name)))
    with pytest.raises(Refused):
        resolve_log(ctx, QuarantineLogParams(target="app", file=str(log)))
    assert resolve_log(ctx, QuarantineLogParams(file=str(log))).params.file == str(log)
    assert outside.read_text() == f"fa={FA}\n"


def test_a_file_over_the_bound_is_refused(settings_env: Any, tmp_path: Path) -> None:
    """A log bigger than QUARANTINE_MAX_BYTES is refused and left as it was."""
    s = settings(settings_env, tmp_path, quarantine_max_bytes="64")
    log = plant(tmp_path)
    before = log.read_bytes()
    with pytest.raises(Refused, match="QUARANTINE_MAX_BYTES"):
        quarantine(s, log)
    assert log.read_bytes() == before


YAML = """\
# Security settings of the trading bot
security:
  # keep this list short
  allowed_hosts: [a, b]
ibkr_fa_scrubbing: false  # turned on after the incident
"""


def test_scrubbing_turned_on_with_comments_backup_and_once(
    settings_env: Any, tmp_path: Path
) -> None:
    """The flag becomes true, comments and the other keys stay, the previous file is kept as
    a .bak; a second call changes nothing; the newest CONFIG_BACKUPS backups are kept."""
    config = tmp_path / "security.yaml"
    config.write_text(YAML)
    s = settings(settings_env, tmp_path, app_config=str(config), config_backups="2")
    ctx = ActionContext(s, get_logger())
    result = enable_log_scrubbing(ctx, EnableScrubbingParams())
    assert result.changed and Path(result.detail["backup"]).read_text() == YAML
    text = config.read_text()
    assert "ibkr_fa_scrubbing: true" in text
    assert "# keep this list short" in text and "# Security settings" in text
    assert "allowed_hosts: [a, b]" in text
    assert enable_log_scrubbing(ctx, EnableScrubbingParams()).changed is False
    for _ in range(3):
        config.write_text(YAML)
        enable_log_scrubbing(ctx, EnableScrubbingParams())
    assert len(list(tmp_path.glob("security.yaml.*.bak"))) == 2
    assert not list(tmp_path.glob(".security.yaml.*"))  # no temporary file left


def test_nested_key_and_restart_requested_or_notified(settings_env: Any, tmp_path: Path) -> None:
    """A dotted key is made where missing; with APP_CONTAINER a restart is requested in the
    container's restart state, without one a notification is the follow-up."""
    config = tmp_path / "security.yaml"
    config.write_text("security: {}\n")
    s = settings(
        settings_env,
        tmp_path,
        app_config=str(config),
        scrub_key="security.scrub_fa",
        app_container="autotrader-app-1",
    )
    ctx = ActionContext(s, get_logger())
    result = enable_log_scrubbing(ctx, EnableScrubbingParams())
    assert "scrub_fa: true" in config.read_text() and result.follow_up == []
    assert restarts.requested(ctx.state, "autotrader-app-1")


def test_without_a_container_a_human_is_asked_to_restart(settings_env: Any, tmp_path: Path) -> None:
    """No APP_CONTAINER: the follow-up is a notification; no APP_CONFIG: refused."""
    with pytest.raises(Refused):
        resolve_config(
            CheckContext(settings(settings_env, tmp_path), get_logger()), EnableScrubbingParams()
        )
    config = tmp_path / "security.yaml"
    config.write_text("{}\n")
    s = settings(settings_env, tmp_path, app_config=str(config))
    result = enable_log_scrubbing(ActionContext(s, get_logger()), EnableScrubbingParams())
    assert [f.action for f in result.follow_up] == ["notify"]
    assert "by hand" in result.follow_up[0].params["text"]


def test_restart_container_honours_the_restart_asked_for(
    settings_env: Any, tmp_path: Path, project: ComposeProject
) -> None:
    """A running container (refused on its own) is restarted once enable_log_scrubbing
    asked for it; the request is then cleared and the next call is refused again."""
    app = project.run(["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done"])
    config = tmp_path / "security.yaml"
    config.write_text("ibkr_fa_scrubbing: false\n")
    s = settings(
        settings_env,
        tmp_path,
        app_config=str(config),
        app_container=app.name,
    )
    s = settings_env(
        REMEDIATION_CONTAINERS__DOCKER_URL=DOCKER_URL,
        REMEDIATION_CONTAINERS__PROJECT=project.name,
    )
    ctx = ActionContext(s, get_logger())
    with pytest.raises(Refused, match="is running"):
        resolve_container(ctx, ContainerParams(container=app.name))
    started = project.started_at(app)
    enable_log_scrubbing(ctx, EnableScrubbingParams())
    resolved = resolve_container(ctx, ContainerParams(container=app.name))
    result = restart_container(dataclasses.replace(ctx, facts=resolved.facts), resolved.params)
    assert result.ok and project.started_at(app) != started
    assert project.status(app) == "running" and not restarts.requested(ctx.state, app.name)
    with pytest.raises(Refused, match="is running"):
        resolve_container(ctx, ContainerParams(container=app.name))


def test_a_restart_request_never_revives_a_container_given_up_on(
    settings_env: Any, tmp_path: Path
) -> None:
    """A container restart_container gave up on (its state kept for good) stays kept for
    good when a restart is asked for; a fresh request expires within a day."""
    ctx = CheckContext(settings(settings_env, tmp_path), get_logger())
    given_up = restarts.state_key("gone-app")
    ctx.state.hset(given_up, restarts.GIVEN_UP_FIELD, 1.0)
    restarts.request(ctx.state, "gone-app", 2.0)
    assert ctx.state.ttl(given_up) == -1
    restarts.request(ctx.state, "fresh-app", 2.0)
    assert 0 < ctx.state.ttl(restarts.state_key("fresh-app")) <= restarts.REQUEST_SECONDS


def _logrotate() -> str:
    found = shutil.which("logrotate") or (
        "/usr/sbin/logrotate" if Path("/usr/sbin/logrotate").exists() else None
    )
    if found is None:
        missing("logrotate")
    assert found is not None
    return found


def test_masked_log_rotated_by_a_real_logrotate(settings_env: Any, tmp_path: Path) -> None:
    """With ROTATE_COMMAND = logrotate -f: the masked file becomes app.log.1 (no secret in
    it), a new empty app.log takes its place, and the original is in quarantine."""
    log = plant(tmp_path)
    conf, state = tmp_path / "logrotate.conf", tmp_path / "logrotate.state"
    conf.write_text(f"{log} {{\n  rotate 3\n  missingok\n  create 0640\n}}\n")
    s = settings(settings_env, tmp_path, rotate_command=f"{_logrotate()} -f -s {state} {conf}")
    result = quarantine(s, log)
    assert (result.ok, result.detail["rotate"]) == (True, "ok"), result.summary
    rotated = tmp_path / "logs" / "app.log.1"
    assert FA not in rotated.read_text() and "fa=********" in rotated.read_text()
    assert log.exists() and log.read_text() == ""
    assert FA in Path(result.detail["quarantined_copy"]).read_text()


def test_a_failing_or_hanging_rotation_fails_the_action_secrets_stay_masked(
    settings_env: Any, tmp_path: Path
) -> None:
    """A rotation command that exits 1, or outlives ROTATE_TIMEOUT_SECONDS, fails the action
    (a human is told); the masking it followed stands."""
    for command, why in (("false", "exited 1"), ("sleep 30", "did not finish within 0.5s")):
        log = plant(tmp_path)
        s = settings(settings_env, tmp_path, rotate_command=command, rotate_timeout_seconds="0.5")
        result = quarantine(s, log)
        assert not result.ok and why in result.summary
        assert FA not in log.read_text()
