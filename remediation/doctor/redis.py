"""Redis: the state Redis, the broker when it is Redis, and each REMEDIATION_REDIS_TARGETS entry.

Connect, PING, version; then, as the connected user (``ACL WHOAMI``), ``ACL DRYRUN`` each
command the guards (state Redis) or the actions (monitored Redis) send, including those their
Lua scripts call (an ACL applies inside ``EVALSHA`` too). DRYRUN is in @admin: a user without it
gets a "cannot tell" row listing the commands to allow, not a ✗. Read-only: DRYRUN runs nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NamedTuple
from urllib.parse import urlsplit

import redis

from remediation.clients.redis import text
from remediation.doctor import PROBE_TIMEOUT, Result, fail, ok, unknown
from remediation.guards import keys
from remediation.redact import redact_text
from remediation.settings import Settings

AREA = "redis"
_SHA = "0" * 40
_K = "{key}"
CORE_KEY = keys.PREFIX + "doctor"
"""A key like the guards' own (rem:...), for ACL key checks on the state Redis."""

# Arguments that give each command its arity; {key} is a key of the kind the code touches.
_ARGS: dict[str, tuple[str, ...]] = {
    "EVALSHA": (_SHA, "1", _K),
    "EVAL": ("return 1", "1", _K),
    "SCRIPT LOAD": ("return 1",),
    "TIME": (),
    "SET": (_K, "1"),
    "GET": (_K,),
    "DEL": (_K,),
    "EXISTS": (_K,),
    "EXPIRE": (_K, "60"),
    "TTL": (_K,),
    "TYPE": (_K,),
    "INCRBY": (_K, "1"),
    "HSET": (_K, "f", "1"),
    "HSETNX": (_K, "f", "1"),
    "HGET": (_K, "f"),
    "HMGET": (_K, "f"),
    "HGETALL": (_K,),
    "HDEL": (_K, "f"),
    "HINCRBY": (_K, "f", "1"),
    "SADD": (_K, "m"),
    "SREM": (_K, "m"),
    "SMEMBERS": (_K,),
    "SISMEMBER": (_K, "m"),
    "ZADD": (_K, "1", "m"),
    "ZCARD": (_K,),
    "ZCOUNT": (_K, "0", "1"),
    "ZRANGEBYSCORE": (_K, "0", "1"),
    "ZREM": (_K, "m"),
    "ZREMRANGEBYSCORE": (_K, "0", "1"),
    "ZSCORE": (_K, "m"),
    "LLEN": (_K,),
    "LRANGE": (_K, "0", "0"),
    "LREM": (_K, "0", "x"),
    "LSET": (_K, "0", "x"),
    "RPUSH": (_K, "x"),
    "SCAN": ("0",),
    "UNLINK": (_K,),
    "WATCH": (_K,),
    "MULTI": (),
    "EXEC": (),
    "RENAME": (_K, _K),
}

_SCRIPTS = ("EVALSHA", "EVAL", "SCRIPT LOAD")
# The guards' Lua scripts (remediation/guards/*.lua) and their Python side (breaker, chain,
# incidents, pauses): what every action needs on the state Redis.
CORE = (
    *_SCRIPTS,
    *"TIME SET GET DEL EXISTS EXPIRE TTL INCRBY HSET HSETNX HGET HGETALL HDEL HINCRBY".split(),
    *"SADD SMEMBERS SISMEMBER ZADD ZCARD ZCOUNT ZRANGEBYSCORE ZREM ZREMRANGEBYSCORE ZSCORE".split(),
)
_JOB_LISTS = (*_SCRIPTS, "TYPE", "LRANGE", "LREM", "LSET")
# Per action on a monitored Redis: the commands it (or its Lua script) sends.
ACTIONS: dict[str, tuple[str, ...]] = {
    "dedupe_job_queue": _JOB_LISTS,
    "dead_letter_stale_jobs": (*_JOB_LISTS, "RPUSH", "TIME"),
    "flush_cache": ("SCAN", "UNLINK"),
    "rotate_proxies": (*"SMEMBERS HGETALL HSET SADD SREM DEL SET WATCH MULTI EXEC RENAME".split(),),
    "tune_backoff": (*_SCRIPTS, *"EXISTS HSETNX HGET HSET HINCRBY".split()),
    "regenerate_headers": (*_SCRIPTS, *"TYPE HGET HGETALL DEL HSET".split()),
    "throttle_sync": (*_SCRIPTS, *"EXISTS HGET HMGET HSET SADD".split()),
    "restore_sync": (*_SCRIPTS, *"HGET HMGET HSET HDEL DEL SREM".split()),
}


def where(url: str) -> str:
    """scheme://host:port/db of a Redis URL: never its user or password."""
    try:
        parts = urlsplit(url)
        host = f"{parts.hostname}:{parts.port or 6379}" if parts.hostname else parts.path
    except ValueError:
        return "(unparsable URL)"
    db = parts.path if parts.hostname else ""
    return f"{parts.scheme}://{host}{db}"


class Need(NamedTuple):
    """One command on one key (``pattern``: the key pattern an ACL would have to allow)."""

    cmd: str
    key: str
    pattern: str


def _glob_sample(pattern: str) -> str:
    """A key the glob pattern matches ("cache:*" -> "cache:x"), for ACL key checks."""
    return re.sub(r"\[[^\]]*\]|[*?]", "x", pattern.replace("\\", ""))


def _on(cmds: Iterable[str], key: str, pattern: str | None = None) -> list[Need]:
    return [Need(c, key if _K in _ARGS[c] else "", pattern or key) for c in cmds]


def _actions_on(settings: Settings, target: str) -> dict[str, list[Need]]:
    """The actions that may send commands to target ("self" = the state Redis), each with
    the commands it sends and the configured key they touch."""
    s = settings
    jq = s.job_queue
    mine: dict[str, list[Need]] = {
        "dedupe_job_queue": _on(ACTIONS["dedupe_job_queue"], jq.key),  # any target may be named
        "dead_letter_stale_jobs": [
            *_on(ACTIONS["dead_letter_stale_jobs"], jq.key),
            *_on(["RPUSH"], jq.dead_letter_key),
        ],
    }

    def names(configured: str) -> bool:
        return configured.lower() == target.lower()

    if s.cache.flush_patterns:
        mine["flush_cache"] = [
            need
            for pattern in s.cache.flush_patterns
            for need in _on(ACTIONS["flush_cache"], _glob_sample(pattern), pattern)
        ]
    if (s.proxies.proxy_list or s.proxies.file) and names(s.proxies.redis_target):
        mine["rotate_proxies"] = _on(ACTIONS["rotate_proxies"], s.proxies.active_key)
    if names(s.backoff.redis_target):
        mine["tune_backoff"] = _on(ACTIONS["tune_backoff"], s.backoff.config_key)
    if s.headers.enabled and names(s.headers.redis_target):
        mine["regenerate_headers"] = _on(ACTIONS["regenerate_headers"], s.headers.key)
    if s.rate_limits.endpoints and names(s.rate_limits.redis_target):
        key = s.rate_limits.sync_interval_key
        mine["throttle_sync"] = _on(ACTIONS["throttle_sync"], key)
        mine["restore_sync"] = _on(ACTIONS["restore_sync"], key)
    return mine


def _needs(commands: dict[str, list[Need]]) -> dict[Need, tuple[str, ...]]:
    """Need -> the actions needing it, from action -> needs."""
    out: dict[Need, set[str]] = {}
    for action, needs in commands.items():
        for need in needs:
            out.setdefault(need, set()).add(action)
    return {need: tuple(sorted(actions)) for need, actions in out.items()}


def probe(settings: Settings) -> list[Result]:
    """Rows for the state Redis, the broker (when Redis) and each monitored Redis."""
    rows: list[Result] = []
    state_url = settings.state_redis_url.get_secret_value()
    state_needs: dict[Need, tuple[str, ...]] = {}
    if "self" not in {t.lower() for t in settings.redis_targets}:
        state_needs = _needs(_actions_on(settings, "self"))  # the actions' default target
    state_needs.update({need: () for need in _on(CORE, CORE_KEY, keys.PREFIX + "*")})
    rows += check_target("state", state_url, state_needs)
    broker = settings.broker_url.get_secret_value()
    if broker.startswith(("redis://", "rediss://", "unix://")):
        rows += check_target("broker", broker, {})
    for name, url in settings.redis_targets.items():
        rows += check_target(name, url.get_secret_value(), _needs(_actions_on(settings, name)))
    return rows


def check_target(target: str, url: str, needs: dict[Need, tuple[str, ...]]) -> list[Result]:
    """Connect, version, then DRYRUN every need (need -> the actions needing it)."""
    everyone = _needed_by(needs)
    shown = where(url)
    try:
        client = redis.Redis.from_url(
            url, socket_timeout=PROBE_TIMEOUT, socket_connect_timeout=PROBE_TIMEOUT
        )
    except ValueError as exc:
        fix = f"correct the URL of Redis {target!r}"
        return [fail(AREA, target, "URL", redact_text(str(exc)), fix, needed_by=everyone)]
    try:
        return _check(client, target, shown, needs, everyone)
    finally:
        client.close()


def _check(
    client: redis.Redis,
    target: str,
    shown: str,
    needs: dict[Need, tuple[str, ...]],
    everyone: tuple[str, ...],
) -> list[Result]:
    try:
        client.ping()
        version = str(client.info("server").get("redis_version", "?"))
    except redis.RedisError as exc:
        detail = f"{shown}: {redact_text(str(exc))}"
        fix = f"start Redis at {shown} or correct its URL/credentials"
        return [fail(AREA, target, "connect + PING", detail, fix, needed_by=everyone)]
    rows = [ok(AREA, target, "connect + PING", f"{shown}, Redis {version}", needed_by=everyone)]
    if needs:
        rows += _commands(client, target, version, needs)
    return rows


def _commands(
    client: redis.Redis, target: str, version: str, needs: dict[Need, tuple[str, ...]]
) -> list[Result]:
    cmds = sorted({n.cmd for n in needs})
    everyone = _needed_by(needs)
    what = f"ACL allows {len(cmds)} command(s)"
    try:
        user = text(client.acl_whoami())
    except redis.ResponseError as exc:
        if "unknown command" in str(exc).lower():  # before 6.0: no ACLs, every command allowed
            return [ok(AREA, target, what, f"Redis {version} has no ACLs", needed_by=everyone)]
        return [_cannot_tell(target, what, str(exc), cmds, "<user>", everyone)]
    except redis.RedisError as exc:
        return [_cannot_tell(target, what, str(exc), cmds, "<user>", everyone)]
    return _dryrun(client, target, user, needs, what, everyone)


def _dryrun(
    client: redis.Redis,
    target: str,
    user: str,
    needs: dict[Need, tuple[str, ...]],
    what: str,
    everyone: tuple[str, ...],
) -> list[Result]:
    denied: dict[tuple[str, str, str], dict[Need, tuple[str, ...]]] = {}
    for need in sorted(needs):
        args = [a.replace(_K, need.key) for a in _ARGS[need.cmd]]
        try:
            reply = text(client.acl_dryrun(user, *need.cmd.split(), *args))
        except redis.RedisError as exc:  # DRYRUN refused, or missing before Redis 7.0
            cmds = sorted({n.cmd for n in needs})
            return [_cannot_tell(target, what, str(exc), cmds, user, everyone)]
        if reply != "OK":  # one row per fix: a command denied on every key is one row
            denied.setdefault(_denial(user, need, reply), {})[need] = needs[need]
    if denied:
        return [
            fail(AREA, target, row_what, reply, fix, needed_by=_needed_by(by))
            for (row_what, fix, reply), by in denied.items()
        ]
    detail = f"user {user}: {', '.join(sorted({n.cmd for n in needs}))}"
    return [ok(AREA, target, what, detail, needed_by=everyone)]


def _needed_by(needs: dict[Need, tuple[str, ...]]) -> tuple[str, ...]:
    """Every action needing some command; empty (the core) when any command is core."""
    if any(not actions for actions in needs.values()):
        return ()
    return tuple(sorted({a for actions in needs.values() for a in actions}))


def _acl_name(cmd: str) -> str:
    return cmd.lower().replace(" ", "|")


def _denial(user: str, need: Need, reply: str) -> tuple[str, str, str]:
    """(what, fix, reply) of a denied need: a key not allowed, or the command itself."""
    if "key" in reply.lower():
        return f"ACL allows {need.cmd} on {need.key}", f"ACL SETUSER {user} ~{need.pattern}", reply
    reply = f"This user has no permissions to run the '{_acl_name(need.cmd)}' command"
    return f"ACL allows {need.cmd}", f"ACL SETUSER {user} +{_acl_name(need.cmd)}", reply


def _cannot_tell(
    target: str, what: str, why: str, cmds: Iterable[str], user: str, everyone: tuple[str, ...]
) -> Result:
    allow = " ".join(f"+{_acl_name(c)}" for c in cmds)
    detail = f"cannot tell: ACL DRYRUN refused or unsupported ({redact_text(why)})"
    fix = f"make sure ACL user {user} has: {allow} (or grant +acl|dryrun to let doctor check)"
    return unknown(AREA, target, what, detail, fix, needed_by=everyone)
