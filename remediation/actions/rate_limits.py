"""Rate limits: slow a sync down, fall back to a cheaper model.

Runbook 000 "Shopify API 429" (SHOPIFY_SYNC_INTERVAL, default 5 min) and "OpenAI 429 /
insufficient quota" (switch to gpt-3.5-turbo temporarily), runbook 004 "Rate Limit
Exhaustion" (reduce update frequency temporarily). Every change here is temporary, and
none waits in a long Celery countdown (see remediation.throttles): each records an expiry
in Redis, a check reports it once due, and the playbook runs the undo. Pausing low-priority
queues (runbook 001) is in actions/pauses.py.
"""

from __future__ import annotations

import itertools
import time
from datetime import timedelta
from typing import Any

import redis
from pydantic import Field

from remediation.clients.redis import text
from remediation.context import ActionContext, CheckContext, Resolved
from remediation.errors import Refused
from remediation.findings import ActionResult
from remediation.params import ActionParams
from remediation.registry import action
from remediation.resolve import canonical, redis_target
from remediation.settings import RateLimitSettings
from remediation.throttles import (
    NAME_PATTERN,
    THROTTLE_INDEX,
    changed_by,
    iso,
    throttle_key,
)

MAX_INDEX_SCAN = 1000
"""Members of THROTTLE_INDEX looked at to match a name case-insensitively."""


def lua(client: redis.Redis, source: str, keys: list[str], args: list[Any]) -> list[str]:
    """Run one script atomically (EVALSHA, EVAL on a cold cache); the reply as text."""
    return [text(v) for v in client.register_script(source)(keys=keys, args=args)]


# --- throttle_sync / restore_sync ----------------------------------------------------------

# KEYS: 1 interval hash, 2 throttle record, 3 index. ARGV: 1 integration, 2 default interval,
# 3 factor, 4 now, 5 seconds, 6 by. Returns {status, original, throttled, expires_at}.
_THROTTLE = """
local expires = tonumber(ARGV[4]) + tonumber(ARGV[5])
if redis.call('EXISTS', KEYS[2]) == 1 then
  local old = tonumber(redis.call('HGET', KEYS[2], 'expires_at') or '') or 0
  expires = math.max(expires, old)
  redis.call('HSET', KEYS[2], 'expires_at', tostring(expires))
  local rec = redis.call('HMGET', KEYS[2], 'original', 'throttled')
  return {'extended', rec[1] or '', rec[2] or '', tostring(expires)}
end
local raw = redis.call('HGET', KEYS[1], ARGV[1])
local value = tonumber(raw or ARGV[2])
if value == nil or value ~= value or value <= 0 or value == math.huge then
  return redis.error_reply('sync interval of ' .. ARGV[1] .. ' in ' .. KEYS[1] ..
    ' is not a positive number of seconds: ' .. tostring(raw))
end
local throttled = tostring(math.floor(value * tonumber(ARGV[3]) * 1000 + 0.5) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], throttled)
redis.call('HSET', KEYS[2], 'original', raw or ARGV[2], 'original_absent', raw and '0' or '1',
  'throttled', throttled, 'factor', ARGV[3], 'throttled_at', ARGV[4],
  'expires_at', tostring(expires), 'by', ARGV[6])
redis.call('SADD', KEYS[3], ARGV[1])
return {'throttled', raw or ARGV[2], throttled, tostring(expires)}
"""

# KEYS: 1 interval hash, 2 throttle record, 3 index. ARGV: 1 integration, 2 now, 3 force.
# Returns {status, current, original, throttled, original_absent}. The interval is put back only if it
# still holds what throttle_sync wrote: a value someone set since is theirs to keep.
_RESTORE = """
local rec = redis.call('HMGET', KEYS[2], 'original', 'original_absent', 'throttled',
  'expires_at')
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not rec[3] then
  redis.call('SREM', KEYS[3], ARGV[1])
  return {'not_throttled', current or '', '', '', ''}
end
if ARGV[3] ~= '1' and tonumber(ARGV[2]) < (tonumber(rec[4]) or 0) then
  return {'not_due', current or '', rec[1], rec[3], rec[2]}
end
local status = 'left_alone'
if current and tonumber(current) == tonumber(rec[3]) then
  if rec[2] == '1' then
    redis.call('HDEL', KEYS[1], ARGV[1])
  else
    redis.call('HSET', KEYS[1], ARGV[1], rec[1])
  end
  status = 'restored'
end
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], ARGV[1])
return {status, current or '', rec[1], rec[3], rec[2]}
"""


class ThrottleSyncParams(ActionParams):
    """target: the Redis holding REMEDIATION_RATE_LIMITS__SYNC_INTERVAL_KEY."""

    integration: str = Field(
        pattern=NAME_PATTERN, max_length=64, description="field of the interval hash: 'shopify'"
    )


class RestoreSyncParams(ThrottleSyncParams):
    force: bool = Field(False, description="restore now, before the throttle is due to end")


def _sync_resource(params: ThrottleSyncParams) -> str:
    return f"{params.target}/sync:{params.integration}"


def _rate_limit_target(ctx: CheckContext, params: ActionParams, what: str) -> str:
    """The call's target, which must be REMEDIATION_RATE_LIMITS__REDIS_TARGET (as configured)."""
    only = ctx.settings.rate_limits.redis_target
    return redis_target(ctx, params.target, only=only, what=f"{what} (RATE_LIMITS__REDIS_TARGET)")


def _endpoint(cfg: RateLimitSettings, name: str) -> str | None:
    """The configured endpoint name a call means: the exact one, else a case variant."""
    names = [e.name for e in cfg.endpoints]
    if name in names:
        return name
    return next((n for n in names if n.lower() == name.lower()), None)


def _throttled(client: redis.Redis, name: str) -> str | None:
    """The integration as throttle_sync recorded it: the exact name, else a case variant
    listed in THROTTLE_INDEX; None when no throttle record exists."""
    if client.hexists(throttle_key(name), "throttled"):
        return name
    for member in itertools.islice(client.sscan_iter(THROTTLE_INDEX, count=100), MAX_INDEX_SCAN):
        recorded = text(member)
        if recorded.lower() == name.lower() and client.hexists(throttle_key(recorded), "throttled"):
            return recorded
    return None


def _not_configured(cfg: RateLimitSettings, name: str) -> str:
    names = [e.name for e in cfg.endpoints][:20]
    return (
        f"integration {name!r} is not a configured rate-limit endpoint"
        f" (REMEDIATION_RATE_LIMITS__ENDPOINTS names: {names})"
    )


def resolve_throttle(ctx: CheckContext, params: ThrottleSyncParams) -> Resolved:
    """The rate limits' Redis target and the endpoint name as configured; another
    integration is refused (a call cannot slow down an arbitrary field of the hash)."""
    cfg = ctx.settings.rate_limits
    target = _rate_limit_target(ctx, params, f"the sync intervals {cfg.sync_interval_key!r}")
    name = _endpoint(cfg, params.integration)
    if name is None:
        raise Refused(_not_configured(cfg, params.integration))
    return canonical(params, target=target, integration=name)


def resolve_restore(ctx: CheckContext, params: RestoreSyncParams) -> Resolved:
    """The rate limits' Redis target and the integration as its throttle was recorded, so
    a throttle made under an older configuration can still be undone. Refused when the
    integration is neither configured nor throttled; quietly when it is configured but
    not throttled (nothing to restore)."""
    cfg = ctx.settings.rate_limits
    target = _rate_limit_target(ctx, params, f"the sync intervals {cfg.sync_interval_key!r}")
    recorded = _throttled(ctx.redis(target), params.integration)
    if recorded is not None:
        return canonical(params, target=target, integration=recorded)
    name = _endpoint(cfg, params.integration)
    if name is None:
        raise Refused(_not_configured(cfg, params.integration) + " and it is not throttled")
    raise Refused(f"{name} is not throttled: nothing to restore", notice=False)


@action(
    "throttle_sync",
    resolve=resolve_throttle,
    resource=_sync_resource,
    cooldown=timedelta(minutes=5),
    max_per_hour=30,
    verify=False,
)
def throttle_sync(ctx: ActionContext, params: ThrottleSyncParams) -> ActionResult:
    """Sync an integration less often for a while (runbook 000 Shopify 429: SHOPIFY_SYNC_INTERVAL;
    runbook 004 "reduce update frequency temporarily").

    Multiplies the integration's field of REMEDIATION_RATE_LIMITS__SYNC_INTERVAL_KEY
    (absent: DEFAULT_SYNC_INTERVAL_SECONDS) by THROTTLE_FACTOR and records the original in
    rem:throttle:<integration>. Throttling a throttled integration never multiplies again;
    it moves the end THROTTLE_SECONDS out. When that passes, api_rate_limits reports
    api_sync_throttle_expired and restore_sync puts the original back. Only integrations
    named in REMEDIATION_RATE_LIMITS__ENDPOINTS, only on RATE_LIMITS__REDIS_TARGET."""
    cfg = ctx.settings.rate_limits
    keys = [cfg.sync_interval_key, throttle_key(params.integration), THROTTLE_INDEX]
    args = [
        params.integration,
        cfg.default_sync_interval_seconds,
        cfg.throttle_factor,
        repr(time.time()),
        cfg.throttle_seconds,
        changed_by(ctx),
    ]
    status, original, throttled, expires = lua(ctx.redis(params.target), _THROTTLE, keys, args)
    detail = {
        "key": cfg.sync_interval_key,
        "integration": params.integration,
        "before": float(original) if status == "throttled" else float(throttled),
        "after": float(throttled),
        "original": float(original),
        "restore_at": iso(expires),
        "status": status,
    }
    if status == "extended":
        return ActionResult(
            changed=False,
            detail=detail,
            summary=(
                f"{params.integration} already throttled to {throttled}s;"
                f" restore moved to {detail['restore_at']}"
            ),
        )
    return ActionResult(
        detail=detail,
        summary=(
            f"{params.integration} sync interval {original}s -> {throttled}s"
            f" until {detail['restore_at']}"
        ),
    )


@action("restore_sync", resolve=resolve_restore, resource=_sync_resource, max_per_hour=60)
def restore_sync(ctx: ActionContext, params: RestoreSyncParams) -> ActionResult:
    """Put back the sync interval throttle_sync changed, once its time is up (or force).

    Left alone when someone changed the interval since (the record is dropped either way);
    an interval that was absent before the throttle is removed again, so the application's
    own default applies. A configured endpoint, or any integration still recorded as
    throttled (made under an older configuration); one that is not throttled is refused
    quietly. Verified by api_rate_limits no longer reporting it as due."""
    cfg = ctx.settings.rate_limits
    keys = [cfg.sync_interval_key, throttle_key(params.integration), THROTTLE_INDEX]
    args = [params.integration, repr(time.time()), "1" if params.force else "0"]
    status, current, original, throttled, absent = lua(
        ctx.redis(params.target), _RESTORE, keys, args
    )
    if status == "not_throttled":  # restored by another call since the resolve step
        raise Refused(f"{params.integration} is not throttled: nothing to restore", notice=False)
    detail = {
        "key": cfg.sync_interval_key,
        "integration": params.integration,
        "status": status,
        "before": current or None,
        "original": original or None,
        "throttled": throttled or None,
    }
    summaries = {
        "restored": f"{params.integration} sync interval {current}s -> {original}s"
        + (" (field removed: the application's default)" if absent == "1" else ""),
        "left_alone": (
            f"{params.integration} interval was changed to {current}s since the"
            f" throttle to {throttled}s; left as it is"
        ),
        "not_due": f"{params.integration} throttle has not ended yet (use force to end it)",
    }
    if status == "restored":
        detail["after"] = None if absent == "1" else original  # None: absent, app default
    else:
        detail["after"] = current or None
    return ActionResult(changed=status == "restored", summary=summaries[status], detail=detail)


# --- switch_fallback_model -----------------------------------------------------------------

# KEYS: 1 flag. ARGV: 1 model, 2 seconds. Returns {status, previous}.
_FALLBACK = """
local prev = redis.call('GET', KEYS[1])
if prev and prev ~= ARGV[1] then
  return {'other_model', prev}
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return {prev and 'extended' or 'switched', prev or ''}
"""


class SwitchFallbackModelParams(ActionParams):
    """target: the Redis the application reads REMEDIATION_RATE_LIMITS__FALLBACK_KEY from."""

    model: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.:/\-]{1,100}$",
        max_length=100,
        description="default: FALLBACK_MODEL",
    )


def _fallback_resource(params: SwitchFallbackModelParams) -> str:
    return f"{params.target}/llm-fallback"


def resolve_fallback(ctx: CheckContext, params: SwitchFallbackModelParams) -> Resolved:
    """The rate limits' Redis target and the configured fallback model; a call may name
    that model, never another one."""
    cfg = ctx.settings.rate_limits
    target = _rate_limit_target(ctx, params, f"the model flag {cfg.fallback_key!r}")
    if params.model is not None and params.model != cfg.fallback_model:
        raise Refused(
            f"model {params.model!r} is not REMEDIATION_RATE_LIMITS__FALLBACK_MODEL"
            f" ({cfg.fallback_model!r}): a call cannot pick another model"
        )
    return canonical(params, target=target, model=cfg.fallback_model)


@action(
    "switch_fallback_model",
    resolve=resolve_fallback,
    resource=_fallback_resource,
    cooldown=timedelta(minutes=10),
    max_per_hour=6,
    verify=False,
)
def switch_fallback_model(ctx: ActionContext, params: SwitchFallbackModelParams) -> ActionResult:
    """Put the application on the fallback model for a while (runbook 000 OpenAI 429 /
    insufficient quota: "switch to a fallback model (gpt-3.5-turbo) temporarily").

    Sets REMEDIATION_RATE_LIMITS__FALLBACK_KEY to the model with a TTL of
    FALLBACK_SECONDS; when the key expires the application is back on its primary model,
    with nothing left to undo. Again while it holds: the TTL starts over. A different model
    already in the flag (an operator's choice) is left alone. Only FALLBACK_MODEL (a call
    naming another model is refused), only on RATE_LIMITS__REDIS_TARGET."""
    cfg = ctx.settings.rate_limits
    model = params.model or cfg.fallback_model
    client = ctx.redis(params.target)
    status, previous = lua(client, _FALLBACK, [cfg.fallback_key], [model, cfg.fallback_seconds])
    detail = {
        "key": cfg.fallback_key,
        "model": model,
        "before": previous or None,
        "status": status,
        "expires_in_seconds": cfg.fallback_seconds,
    }
    if status == "other_model":
        detail["expires_in_seconds"] = None
        return ActionResult(
            changed=False,
            detail=detail,
            summary=f"{cfg.fallback_key} already names {previous}; left alone",
        )
    detail["after"] = model
    verb = "stays on" if status == "extended" else "switched to"
    return ActionResult(
        changed=status == "switched",
        detail=detail,
        summary=f"{verb} {model} for {cfg.fallback_seconds}s ({cfg.fallback_key})",
    )
