"""access_log_clients against real log files and a real redis-server: the fail2ban window
across runs, rotation, truncation, bounded reads, allow-list, bans and the surge."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import redis

from remediation.checks.access import AccessLogClientsParams, access_log_clients
from remediation.context import CheckContext
from remediation.findings import Finding
from remediation.logging import get_logger
from remediation.security import access_logs as al
from remediation.security import bans


def clf(ip: str, status: int = 401, when: float | None = None) -> str:
    stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(when or time.time()))
    return f'{ip} - - [{stamp}] "POST /login HTTP/1.1" {status} 12 "-" "x"\n'


def append(path: Path, *lines: str) -> None:
    with path.open("a") as fh:
        fh.write("".join(lines))


def setup(settings_env: Any, path: Path, **extra: str) -> Any:
    logs = [{"name": "api", "path": str(path)}]
    return settings_env(REMEDIATION_ACCESS__LOGS=json.dumps(logs), **extra)


def run(settings: Any, target: str = "self") -> list[Finding]:
    ctx = CheckContext(settings, get_logger())
    return access_log_clients(ctx, AccessLogClientsParams(target=target))


def hostile(findings: list[Finding]) -> dict[str, Any]:
    return {f.subject: f.observed for f in findings if f.kind == "access_client_hostile"}


def test_maxretry_within_findtime_across_runs(
    settings_env: Any, r: redis.Redis, tmp_path: Path
) -> None:
    """Three refusals in one run and two in the next make five: the window spans runs; a run
    with nothing new reads nothing and counts nothing twice; 200s never count."""
    log = tmp_path / "access.log"
    log.write_text("")
    s = setup(settings_env, log)
    append(log, *[clf("203.0.113.5")] * 3, clf("203.0.113.5", 200), clf("203.0.113.6", 403))
    assert hostile(run(s)) == {}
    append(log, *[clf("203.0.113.5", 429)] * 2)
    found = run(s)
    assert hostile(found) == {"203.0.113.5": 5}
    assert found[0].target == "api" and found[0].threshold == 5
    assert hostile(run(s)) == {"203.0.113.5": 5}  # nothing new read, same count
    assert run(s)[0].evidence["read"]["bytes"] == 0


def test_old_lines_do_not_count(settings_env: Any, r: redis.Redis, tmp_path: Path) -> None:
    """Refusals stamped before the window (FINDTIME_SECONDS) are read but not counted."""
    log = tmp_path / "access.log"
    log.write_text("".join([clf("203.0.113.5", when=time.time() - 3600)] * 10))
    s = setup(settings_env, log)
    found = run(s)
    assert hostile(found) == {}


def test_rotation_and_truncation_lose_and_repeat_nothing(
    settings_env: Any, r: redis.Redis, tmp_path: Path
) -> None:
    """Lines appended to the old file before logrotate renamed it to NAME.1 are finished,
    then the new file is read from its start; a copytruncate starts again at 0."""
    log = tmp_path / "access.log"
    log.write_text(clf("198.51.100.1"))
    s = setup(settings_env, log, REMEDIATION_ACCESS__MAXRETRY="4")
    assert hostile(run(s)) == {}
    append(log, clf("198.51.100.1"))  # written just before the rotation
    os.rename(log, str(log) + ".1")
    log.write_text(clf("198.51.100.1"))
    assert run(s) == []  # 3 in the window
    append(log, clf("198.51.100.1"))
    found = run(s)
    assert hostile(found) == {"198.51.100.1": 4}
    assert hostile(run(s)) == {"198.51.100.1": 4}
    log.write_text("")  # copytruncate
    append(log, clf("198.51.100.1"))
    assert hostile(run(s)) == {"198.51.100.1": 5}


def test_bounded_bytes_per_run_catch_up(settings_env: Any, r: redis.Redis, tmp_path: Path) -> None:
    """At most MAX_BYTES_PER_RUN is read per run (whole lines); later runs read the rest."""
    log = tmp_path / "access.log"
    log.write_text("")
    s = setup(settings_env, log, REMEDIATION_ACCESS__MAX_BYTES_PER_RUN="4096")
    run(s)
    append(log, *[clf(f"192.0.2.{i % 50 + 1}") for i in range(250)])
    reads = []
    for _ in range(10):
        found = run(s)
        reads.append(found[0].evidence["read"] if found else None)
        if len(hostile(found)) == 50:
            break
    assert len(hostile(found)) == 50 and set(hostile(found).values()) == {5}
    assert len(reads) > 3


def test_allow_list_and_bans_in_force_are_not_reported(
    settings_env: Any, r: redis.Redis, tmp_path: Path
) -> None:
    """Loopback and ALLOW_NETWORKS are never proposed; a banned client is not reported while
    its ban lasts, and its refusals before the ban ended do not count again."""
    log = tmp_path / "access.log"
    log.write_text("")
    s = setup(settings_env, log, REMEDIATION_ACCESS__ALLOW_NETWORKS='["10.9.0.0/16"]')
    run(s)
    append(
        log, *[clf(ip) for ip in ("127.0.0.1", "::1", "10.9.3.4", "203.0.113.8") for _ in range(6)]
    )
    assert hostile(run(s)) == {"203.0.113.8": 6}
    bans.ban(
        r, "203.0.113.8", base=600, factor=2, most=3600, repeat_window=60, log="api", reason="t"
    )
    assert hostile(run(s)) == {}
    bans.unban(r, "203.0.113.8")
    assert hostile(run(s)) == {}  # the old refusals were answered by the ban
    time.sleep(1.1)  # log times have whole seconds: the next refusals come after the unban
    append(log, *[clf("203.0.113.8")] * 5)
    assert hostile(run(s)) == {"203.0.113.8": 5}


def test_a_surge_of_offenders_is_one_high_finding(
    settings_env: Any, r: redis.Redis, tmp_path: Path
) -> None:
    """SURGE_OFFENDERS distinct offenders make exactly one access_hostile_surge (target: the
    log's name, high), beside one access_client_hostile each; allow-listed ones do not count."""
    log = tmp_path / "access.log"
    log.write_text("")
    s = setup(
        settings_env,
        log,
        REMEDIATION_ACCESS__SURGE_OFFENDERS="10",
        REMEDIATION_ACCESS__MAXRETRY="2",
    )
    run(s)
    append(log, *[clf(f"192.0.2.{i}") for i in range(1, 10) for _ in range(2)])
    append(log, *[clf("127.0.0.1")] * 5)
    assert [f for f in run(s) if f.kind == "access_hostile_surge"] == []
    append(log, *[clf("192.0.2.200")] * 2)
    found = run(s)
    surge = [f for f in found if f.kind == "access_hostile_surge"]
    assert len(surge) == 1 and len(hostile(found)) == 10
    assert (surge[0].target, surge[0].severity, surge[0].observed) == ("api", "high", 10)


def test_json_lines_log(settings_env: Any, r: redis.Redis, tmp_path: Path) -> None:
    """A JSON-lines log with configured field names is read like a combined one."""
    log = tmp_path / "api.jsonl"
    log.write_text("")
    logs = [
        {
            "name": "json-api",
            "path": str(log),
            "format": "json",
            "ip_field": "client",
            "status_field": "code",
            "time_field": "at",
        }
    ]
    s = settings_env(REMEDIATION_ACCESS__LOGS=json.dumps(logs))
    run(s)
    append(log, *[json.dumps({"client": "2001:db8::7", "code": 401, "at": time.time()}) + "\n"] * 5)
    found = run(s, "JSON-API")
    assert hostile(found) == {"2001:db8::7": 5} and found[0].target == "json-api"


def test_unreadable_log_is_a_finding(settings_env: Any, r: redis.Redis, tmp_path: Path) -> None:
    """A configured log that cannot be read is access_log_unreadable, not an error."""
    s = setup(settings_env, tmp_path / "missing.log")
    found = run(s)
    assert [f.kind for f in found] == ["access_log_unreadable"]


def test_a_run_that_finds_the_log_being_read_leaves_it_to_that_run(
    settings_env: Any, r: redis.Redis, tmp_path: Path
) -> None:
    """While another run holds the log's lock (a verification next to a scheduled run), a
    run reads nothing and counts nothing; the lines wait for the next run, counted once."""
    log = tmp_path / "access.log"
    log.write_text("")
    s = setup(settings_env, log)
    run(s)
    append(log, *[clf("203.0.113.77")] * 5)
    r.set(al.lock_key("api"), "someone-else", ex=60)
    found = run(s)
    assert hostile(found) == {}
    r.delete(al.lock_key("api"))
    assert hostile(run(s)) == {"203.0.113.77": 5}
    assert hostile(run(s)) == {"203.0.113.77": 5}
