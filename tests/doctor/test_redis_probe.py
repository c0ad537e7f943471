"""The Redis probe against the private test Redis, with ACL users made for each case."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from remediation.doctor import Result
from remediation.doctor import redis as redis_probe
from remediation.settings import Settings
from tests.support.services import RedisServer

PASSWORD = "doctor-secret-pw-123"


@pytest.fixture
def acl_user(redis_server: RedisServer) -> Iterator[Callable[..., str]]:
    """Create ACL users by rules on the private Redis; each is deleted afterwards."""
    admin = redis.Redis.from_url(redis_server.url(0))
    made: list[str] = []

    def make(*rules: str) -> str:
        name = f"doc-{uuid.uuid4().hex[:8]}"
        admin.execute_command("ACL", "SETUSER", name, "on", f">{PASSWORD}", "~*", *rules)
        made.append(name)
        return f"redis://{name}:{PASSWORD}@127.0.0.1:{redis_server.port}/0"

    yield make
    for name in made:
        admin.execute_command("ACL", "DELUSER", name)
    admin.close()


def _settings(state: str, **targets: str) -> Settings:
    return Settings(
        state_redis_url=state,
        broker_url=state,
        redis_targets=targets,
        cache={"flush_patterns": ["cache:*"]},
    )


def _rows(rows: list[Result]) -> list[dict[str, object]]:
    return [r.as_dict() for r in rows]


def test_default_user_all_ok(redis_server: RedisServer) -> None:
    """The default user (all commands) gets only ok rows, with the version."""
    rows = redis_probe.probe(_settings(redis_server.url(0), app=redis_server.url(3)))
    assert rows and all(r.status == "ok" for r in rows), _rows(rows)
    assert {r.target for r in rows} == {"state", "broker", "app"}
    connect = next(r for r in rows if r.target == "app" and r.what == "connect + PING")
    assert "Redis 7" in connect.detail or "Redis " in connect.detail


def test_denied_commands_fail_with_fix(
    redis_server: RedisServer, acl_user: Callable[..., str]
) -> None:
    """A target user without UNLINK and LREM gets a fail row for each, naming the ACL fix
    and the actions needing it; the password appears in no row."""
    url = acl_user("+@all", "-unlink", "-lrem")
    rows = redis_probe.probe(_settings(redis_server.url(0), app=url))
    failed = {r.what: r for r in rows if r.status == "fail"}
    assert set(failed) == {"ACL allows UNLINK", "ACL allows LREM"}, _rows(rows)
    user = url.split("//")[1].split(":")[0]
    assert failed["ACL allows UNLINK"].fix == f"ACL SETUSER {user} +unlink"
    assert failed["ACL allows UNLINK"].needed_by == ("flush_cache",)
    assert failed["ACL allows LREM"].fix == f"ACL SETUSER {user} +lrem"
    assert set(failed["ACL allows LREM"].needed_by) == {
        "dedupe_job_queue",
        "dead_letter_stale_jobs",
    }
    assert PASSWORD not in str(_rows(rows))


def test_key_pattern_denied_names_the_pattern(
    redis_server: RedisServer, acl_user: Callable[..., str]
) -> None:
    """A target user whose key patterns leave out the cache gets one fail row for UNLINK on a
    key the flush pattern matches, whose fix adds that pattern; the job list stays allowed."""
    url = acl_user("resetkeys", "~job_queue*", "+@all")
    rows = redis_probe.probe(_settings(redis_server.url(0), app=url))
    failed = [r for r in rows if r.status == "fail"]
    user = url.split("//")[1].split(":")[0]
    assert [(r.what, r.fix, r.needed_by) for r in failed] == [
        ("ACL allows UNLINK on cache:x", f"ACL SETUSER {user} ~cache:*", ("flush_cache",))
    ], _rows(rows)


def test_denied_core_command_on_state(
    redis_server: RedisServer, acl_user: Callable[..., str]
) -> None:
    """A state Redis user without EVALSHA fails a core row (needed by no action in particular)."""
    url = acl_user("+@all", "-evalsha")
    rows = redis_probe.probe(_settings(url))
    failed = [r for r in rows if r.status == "fail" and r.target == "state"]
    assert [r.what for r in failed] == ["ACL allows EVALSHA"], _rows(rows)
    assert failed[0].needed_by == ()


def test_user_without_admin_cannot_tell(
    redis_server: RedisServer, acl_user: Callable[..., str]
) -> None:
    """A user without @admin cannot run ACL DRYRUN: an unknown row listing commands to allow."""
    url = acl_user("+@all", "-@admin")
    rows = redis_probe.probe(_settings(redis_server.url(0), app=url))
    app = [r for r in rows if r.target == "app"]
    assert [r.status for r in app] == ["ok", "unknown"], _rows(rows)
    assert "cannot tell" in app[1].detail
    assert "+unlink" in app[1].fix and "+lrem" in app[1].fix
    assert PASSWORD not in str(_rows(rows))


def test_unreachable_redis_fails_without_secret() -> None:
    """A Redis that does not answer is a fail row showing host and port, never the password."""
    url = f"redis://u:{PASSWORD}@127.0.0.1:1/0"
    rows = redis_probe.probe(_settings(url))
    assert rows[0].status == "fail" and rows[0].what == "connect + PING"
    assert "127.0.0.1:1" in rows[0].detail
    assert PASSWORD not in str(_rows(rows))


def test_wrong_password_fails_without_showing_it(
    redis_server: RedisServer, acl_user: Callable[..., str]
) -> None:
    """A target whose URL has a wrong password is a fail row on connect; neither password
    appears in any row."""
    url = acl_user("+@all")
    wrong = url.replace(PASSWORD, "wrong-pw-456")
    rows = redis_probe.probe(_settings(redis_server.url(0), app=wrong))
    app = [r for r in rows if r.target == "app"]
    assert [(r.status, r.what) for r in app] == [("fail", "connect + PING")], _rows(rows)
    assert "wrong-pw-456" not in str(_rows(rows)) and PASSWORD not in str(_rows(rows))
