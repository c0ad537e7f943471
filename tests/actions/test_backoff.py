"""tune_backoff and scrape_backoff (runbook 000 "Increase Delays") against a real redis-server."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import ValidationError

from remediation.actions.backoff import TuneBackoffParams, tune_backoff
from remediation.ban_signal import BAN_RATE_KEY, LAST_BAN_KEY
from remediation.checks.backoff import ScrapeBackoffParams, scrape_backoff
from remediation.context import ActionContext, CheckContext
from remediation.errors import Refused
from remediation.findings import ActionResult
from remediation.logging import get_logger
from remediation.registry import get_action
from remediation.runner import Runner
from tests.support.runner import Recorder
from tests.support.services import RedisServer

KEY = "scraping:config"


def tune(s: Any, direction: str, **kw: Any) -> ActionResult:
    return tune_backoff(
        ActionContext(s, get_logger()), TuneBackoffParams(direction=direction, **kw)
    )


def delay(r: redis.Redis) -> float:
    return float(r.hget(KEY, "min_delay") or "nan")


def kinds(s: Any) -> list[tuple[str, str]]:
    found = scrape_backoff(CheckContext(s, get_logger()), ScrapeBackoffParams())
    return [(f.kind, f.severity.value) for f in found]


def test_increase_creates_config_multiplies_and_caps(settings_env: Any, r: redis.Redis) -> None:
    """A missing hash starts at the floor; each increase doubles min_delay until the cap."""
    s = settings_env(REMEDIATION_BACKOFF__CAP_SECONDS="10")
    first = tune(s, "increase", observed_rate=0.3)
    assert first.detail["created"] is True
    assert first.detail["before"] == {"min_delay": 1.0, "concurrency": 4}
    assert first.detail["after"] == {"min_delay": 2.0, "concurrency": 4}
    assert first.detail["observed_rate"] == 0.3
    seen = [tune(s, "increase").detail["after"]["min_delay"] for _ in range(4)]
    assert seen == [4.0, 8.0, 10.0, 10.0]
    last = tune(s, "increase")
    assert (last.changed, last.detail["reason"]) == (False, "at_cap")
    assert r.hget(KEY, "concurrency") == b"4"


def test_decrease_waits_for_a_quiet_period(settings_env: Any, r: redis.Redis) -> None:
    """No decrease within HEALTHY_SECONDS of a ban or of an increase; afterwards one step."""
    s = settings_env(REMEDIATION_BACKOFF__HEALTHY_SECONDS="60")
    r.hset(KEY, mapping={"min_delay": "5", "concurrency": "2"})
    r.set(LAST_BAN_KEY, str(time.time() - 10))
    held = tune(s, "decrease")
    assert (held.changed, held.detail["reason"], delay(r)) == (False, "not_quiet", 5.0)
    r.set(LAST_BAN_KEY, str(time.time() - 61))
    eased = tune(s, "decrease")
    assert eased.detail["before"]["min_delay"] == 5.0 and eased.detail["after"]["min_delay"] == 4.5
    tune(s, "increase")  # an increase restarts the quiet period, with or without a ban key
    r.delete(LAST_BAN_KEY)
    assert tune(s, "decrease").detail["reason"] == "not_quiet"
    r.hset(KEY, "last_increase_at", str(time.time() - 61))
    assert tune(s, "decrease").detail["after"]["min_delay"] == 8.5


def test_decrease_stops_at_the_floor(settings_env: Any, r: redis.Redis) -> None:
    """Additive decrease never goes below FLOOR_SECONDS, and says so at the floor."""
    s = settings_env()
    r.hset(KEY, mapping={"min_delay": "1.3", "concurrency": "4"})
    assert tune(s, "decrease").detail["after"]["min_delay"] == 1.0
    again = tune(s, "decrease")
    assert (again.changed, again.detail["reason"], delay(r)) == (False, "at_floor", 1.0)


def test_a_high_ban_rate_blocks_decrease_whatever_the_timestamps(
    settings_env: Any, r: redis.Redis
) -> None:
    """While the published ban rate is at the threshold, decrease does nothing."""
    s = settings_env()
    r.hset(KEY, mapping={"min_delay": "5", "concurrency": "4"})
    r.set(BAN_RATE_KEY, "0.5")
    assert tune(s, "decrease").detail["reason"] == "not_quiet"
    assert delay(r) == 5.0


def test_the_ban_the_finding_saw_counts_though_the_published_rate_was_overwritten(
    settings_env: Any, r: redis.Redis
) -> None:
    """The rotation's verification publishes a ban rate of 0 before tune_backoff runs: the
    increase still doubles min_delay and records the finding's rate; a decrease sent with a
    ban rate at the threshold does not ease off."""
    s = settings_env()
    r.set(BAN_RATE_KEY, "0.0")  # what the verification's re-test of the healthy proxies left
    up = tune(s, "increase", observed_rate=1 / 3)
    assert (up.detail["before"]["min_delay"], up.detail["after"]["min_delay"]) == (1.0, 2.0)
    assert (up.detail["observed_rate"], up.detail["published_ban_rate"]) == (1 / 3, 0.0)
    r.hset(KEY, "last_increase_at", str(time.time() - 3600))
    held = tune(s, "decrease", observed_rate=0.5)
    assert (held.changed, held.detail["reason"], delay(r)) == (False, "not_quiet", 2.0)
    assert tune(s, "decrease").detail["after"]["min_delay"] == 1.5


def test_concurrent_increases_each_multiply_exactly_once(settings_env: Any, r: redis.Redis) -> None:
    """Eight threads increasing at once from 0.2 s end at exactly 0.2 x 2**8 (no lost update)."""
    s = settings_env(REMEDIATION_BACKOFF__FLOOR_SECONDS="0.1")
    r.hset(KEY, mapping={"min_delay": "0.2", "concurrency": "4"})
    start = threading.Barrier(8)
    results: list[ActionResult] = []

    def worker() -> None:
        start.wait()
        results.append(tune(s, "increase"))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert delay(r) == pytest.approx(0.2 * 2**8)
    befores = sorted(x.detail["before"]["min_delay"] for x in results)
    assert befores == pytest.approx([0.2 * 2**i for i in range(8)])
    assert r.hget(KEY, "version") == b"8"


def test_mirror_file_is_atomic_valid_json_and_keeps_other_keys(
    settings_env: Any, r: redis.Redis, tmp_path: Path
) -> None:
    """The scrapers' JSON keeps its other keys and mode, gets min_delay, no temp file is left."""
    mirror = tmp_path / "scraping_config.json"
    mirror.write_text(json.dumps({"user_agents": ["ua1"], "min_delay": 1}))
    os.chmod(mirror, 0o640)
    s = settings_env(REMEDIATION_BACKOFF__MIRROR_FILE=str(mirror))
    result = tune(s, "increase")
    assert result.ok and result.detail["mirror"] == "written"
    data = json.loads(mirror.read_text())
    assert data["min_delay"] == 2.0 and data["concurrency"] == 4
    assert data["user_agents"] == ["ua1"] and data["_remediation"]["version"] == 1
    assert stat.S_IMODE(mirror.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".scraping_config.json.lock",
        "scraping_config.json",
    ]


def test_a_broken_mirror_file_is_left_alone_and_fails_the_action(
    settings_env: Any, r: redis.Redis, tmp_path: Path
) -> None:
    """A mirror that is not a JSON object is not overwritten; the action reports the failure."""
    mirror = tmp_path / "scraping_config.json"
    mirror.write_text("{not json")
    s = settings_env(REMEDIATION_BACKOFF__MIRROR_FILE=str(mirror))
    result = tune(s, "increase")
    assert not result.ok and "not valid JSON" in result.summary
    assert mirror.read_text() == "{not json"
    assert delay(r) == 2.0  # Redis, what scrapers read first, did change


def test_bad_input_is_refused_clearly(settings_env: Any, r: redis.Redis) -> None:
    """An unknown direction fails validation; a non-numeric min_delay is an error naming it."""
    s = settings_env()
    with pytest.raises(ValidationError, match="direction"):
        TuneBackoffParams(direction="sideways")
    with pytest.raises(ValidationError, match="observed_rate"):
        TuneBackoffParams(direction="increase", observed_rate=-1)
    r.hset(KEY, "min_delay", "fast")
    with pytest.raises(redis.ResponseError, match="min_delay in scraping:config is not a number"):
        tune(s, "increase")


def test_check_emits_the_signals_that_drive_aimd(settings_env: Any, r: redis.Redis) -> None:
    """Ban rate at the threshold -> ban_rate_high (high at the cap); quiet and above the floor
    -> relaxable; at the floor or recently banned -> nothing."""
    s = settings_env(REMEDIATION_BACKOFF__HEALTHY_SECONDS="60")
    assert kinds(s) == []
    r.set(BAN_RATE_KEY, "0.1")
    r.set(LAST_BAN_KEY, str(time.time()))
    assert kinds(s) == [("scrape_ban_rate_high", "warning")]
    r.hset(KEY, "min_delay", "60")
    assert kinds(s) == [("scrape_ban_rate_high", "high")]
    r.set(BAN_RATE_KEY, "0.0")
    assert kinds(s) == []  # banned a moment ago
    r.set(LAST_BAN_KEY, str(time.time() - 120))
    assert kinds(s) == [("scrape_backoff_relaxable", "info")]
    r.hset(KEY, "min_delay", "1")
    assert kinds(s) == []
    r.set(LAST_BAN_KEY, "yesterday")
    r.hset(KEY, "min_delay", "5")
    assert kinds(s) == []  # an unreadable ban time never counts as quiet


def test_only_the_pacing_redis_and_case_variants_share_one_cooldown(
    settings_env: Any, r: redis.Redis, redis_server: RedisServer
) -> None:
    """The target must be REMEDIATION_BACKOFF__REDIS_TARGET: another configured Redis is
    refused; 'pace' and 'PACE' are the configured 'Pace', so the second increase is held by
    the first one's cooldown and the delay doubles once."""
    s = settings_env(
        REMEDIATION_REDIS_TARGETS=json.dumps(
            {"Pace": redis_server.url(0), "other": redis_server.url(3)}
        ),
        REMEDIATION_BACKOFF__REDIS_TARGET="Pace",
    )
    resolve = get_action("tune_backoff").resolve
    assert resolve is not None
    ctx = CheckContext(s, get_logger())
    with pytest.raises(Refused, match="lives on Redis target 'Pace', not 'other'"):
        resolve(ctx, TuneBackoffParams(target="OTHER", direction="increase"))
    assert resolve(ctx, TuneBackoffParams(target="pACE", direction="increase")).params.target == (
        "Pace"
    )
    runner = Runner(s, Recorder())
    outcomes = [
        runner.run_action("tune_backoff", {"target": name, "direction": "increase"})
        for name in ("pace", "PACE", "other")
    ]
    assert [o.outcome for o in outcomes] == ["succeeded", "suppressed", "refused"]
    assert delay(r) == 2.0
