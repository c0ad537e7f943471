"""raise_log_level, log_level_expiry and restore_log_level on a real Redis and real files:
the Redis key expires by itself, a YAML or ini file gets its level and later exactly its
old text back, the duration is bounded, and choices made by someone else are left alone."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from remediation.actions.log_levels import (
    RaiseLogLevelParams,
    RestoreLogLevelParams,
    raise_log_level,
    resolve_raise,
    resolve_restore,
    restore_log_level,
)
from remediation.checks.log_levels import LogLevelExpiryParams, log_level_expiry
from remediation.context import ActionContext, CheckContext
from remediation.errors import Refused
from remediation.findings import ActionResult
from remediation.logging import get_logger
from remediation.security import log_levels as ll

YAML_TEXT = """\
# shop configuration (kept as written)
logging:
  level: INFO   # normal operation
  format: json
server:
  port: 8080
"""
INI_TEXT = """\
; api settings
[server]
port = 8080

[logging]
format = json
; level is the default (WARNING) unless set

[other]
level = ERROR
"""


def configure(settings_env: Any, *apps: dict[str, Any], duration: int = 600) -> Any:
    return settings_env(
        REMEDIATION_MONITORING__APPS=json.dumps(list(apps)),
        REMEDIATION_MONITORING__DURATION_SECONDS=str(duration),
    )


def do_raise(s: Any, name: str, **kw: Any) -> ActionResult:
    params = resolve_raise(CheckContext(s, get_logger()), RaiseLogLevelParams(target=name, **kw))
    return raise_log_level(ActionContext(s, get_logger()), params.params)


def do_restore(s: Any, name: str, force: bool = False) -> ActionResult:
    params = RestoreLogLevelParams(target=name, force=force)
    resolved = resolve_restore(CheckContext(s, get_logger()), params)
    return restore_log_level(ActionContext(s, get_logger()), resolved.params)


def expire_now(s: Any, app: str) -> None:
    """Move the record's end into the past (the wait itself is the integration test's)."""
    state = redis.Redis.from_url(s.state_redis_url.get_secret_value())
    state.hset(ll.record_key(app), "expires_at", time.time() - 1)


def expired(s: Any) -> list[str]:
    found = log_level_expiry(CheckContext(s, get_logger()), LogLevelExpiryParams())
    assert {f.kind for f in found} <= {"log_level_expired"}
    return [f.target for f in found]


def test_redis_key_is_set_with_a_ttl_and_a_kwarg_may_only_shorten_it(
    settings_env: Any, r: redis.Redis
) -> None:
    """The key gets the level with TTL = DURATION_SECONDS (or a shorter kwarg); a longer
    kwarg and an unknown application are refused before anything changes."""
    s = configure(settings_env, {"name": "shop", "redis_key": "shop:log_level"}, duration=600)
    result = do_raise(s, "SHOP")
    assert result.ok and result.changed and result.detail["redis"]["status"] == "raised"
    assert r.get("shop:log_level") == b"DEBUG" and 595 <= r.ttl("shop:log_level") <= 600
    r.delete("shop:log_level")
    do_raise(s, "shop", seconds=30)
    assert 25 <= r.ttl("shop:log_level") <= 30
    with pytest.raises(Refused, match="longer than"):
        do_raise(s, "shop", seconds=601)
    with pytest.raises(Refused, match="no application named"):
        do_raise(s, "billing")
    assert expired(s) == []  # a Redis-only raise needs no restore


def test_an_operators_level_in_the_key_is_left_alone(settings_env: Any, r: redis.Redis) -> None:
    """A key holding another level, or the same level without a TTL, is not overwritten."""
    s = configure(settings_env, {"name": "shop", "redis_key": "shop:log_level"})
    r.set("shop:log_level", "WARNING", ex=100)
    assert do_raise(s, "shop").detail["redis"]["status"] == "left_alone"
    assert r.get("shop:log_level") == b"WARNING"
    r.set("shop:log_level", "DEBUG")
    assert do_raise(s, "shop").changed is False
    assert r.ttl("shop:log_level") == -1


def test_yaml_file_is_raised_then_restored_to_its_exact_text(
    settings_env: Any, r: redis.Redis, tmp_path: Path
) -> None:
    """The YAML key becomes DEBUG with every comment kept; once due, log_level_expiry reports
    it and restore_log_level puts the file back byte for byte (same mode)."""
    path = tmp_path / "shop.yaml"
    path.write_text(YAML_TEXT)
    path.chmod(0o640)
    s = configure(settings_env, {"name": "shop", "file": str(path), "file_key": "logging.level"})
    result = do_raise(s, "shop")
    assert result.detail["config_file"]["status"] == "raised"
    text = path.read_text()
    assert "level: DEBUG" in text and "# shop configuration (kept as written)" in text
    assert (path.stat().st_mode & 0o777) == 0o640
    assert expired(s) == []
    with pytest.raises(Refused, match="raised until"):
        do_restore(s, "shop")
    expire_now(s, "shop")
    assert expired(s) == ["shop"]
    assert do_restore(s, "shop").detail["status"] == "restored"
    assert path.read_text() == YAML_TEXT and expired(s) == []


def test_ini_option_absent_before_is_removed_again(
    settings_env: Any, r: redis.Redis, tmp_path: Path
) -> None:
    """An ini option that was not set is added in its section (not in another section with
    the same option) and removed at restore: the file is exactly as before."""
    path = tmp_path / "api.ini"
    path.write_text(INI_TEXT)
    s = configure(
        settings_env,
        {"name": "api", "file": str(path), "file_format": "ini", "file_key": "logging.level"},
    )
    do_raise(s, "api")
    text = path.read_text()
    assert (
        "[logging]\nformat = json\n; level is the default (WARNING) unless set\nlevel = DEBUG\n"
        in text
    )
    assert "[other]\nlevel = ERROR" in text
    do_restore(s, "api", force=True)
    assert path.read_text() == INI_TEXT


def test_a_level_changed_since_the_raise_is_left_alone(
    settings_env: Any, r: redis.Redis, tmp_path: Path
) -> None:
    """Someone set WARNING while the level was raised: restore drops the record, keeps theirs."""
    path = tmp_path / "shop.yaml"
    path.write_text(YAML_TEXT)
    s = configure(settings_env, {"name": "shop", "file": str(path), "file_key": "logging.level"})
    do_raise(s, "shop")
    path.write_text(YAML_TEXT.replace("INFO", "WARNING"))
    result = do_restore(s, "shop", force=True)
    assert (result.changed, result.detail["status"]) == (False, "left_alone")
    assert "level: WARNING" in path.read_text()
    with pytest.raises(Refused, match="no raised log level"):
        do_restore(s, "shop", force=True)


def test_raising_again_extends_but_never_past_the_duration(
    settings_env: Any, r: redis.Redis, tmp_path: Path
) -> None:
    """A second raise keeps the recorded previous value and moves the end out to at most
    DURATION_SECONDS from now."""
    path = tmp_path / "shop.yaml"
    path.write_text(YAML_TEXT)
    s = configure(
        settings_env, {"name": "shop", "file": str(path), "file_key": "logging.level"}, duration=300
    )
    do_raise(s, "shop", seconds=60)
    again = do_raise(s, "shop")
    assert again.detail["config_file"]["status"] == "extended"
    record = ll.read_record(r, "shop")
    assert record["previous"] == "INFO"
    assert time.time() + 290 <= float(record["expires_at"]) <= time.time() + 300
