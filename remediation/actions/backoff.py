"""Runbook 000 "Increase Delays": the scrapers' min_delay, tuned AIMD from the ban signal.

The pacing lives in a Redis hash (REMEDIATION_BACKOFF__CONFIG_KEY: ``min_delay`` seconds,
``concurrency``) that scrapers read, optionally mirrored to the JSON file they read
(REMEDIATION_BACKOFF__MIRROR_FILE, runbook 000's scraping_config.json). Bans push the
delay up multiplicatively; a quiet period lets it down one step at a time, so pacing
settles just under the rate at which sites start banning.

The proxy health check publishes the ban signal on the Redis of
REMEDIATION_PROXIES__REDIS_TARGET (read through remediation.ban_signal).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from remediation.ban_signal import LAST_BAN_KEY, read_ban_signal
from remediation.clients import redis as redis_clients
from remediation.context import ActionContext, CheckContext, Resolved
from remediation.errors import ActionFailed
from remediation.filelock import file_lock
from remediation.findings import ActionResult
from remediation.params import ActionParams
from remediation.registry import action
from remediation.resolve import canonical, redis_target
from remediation.settings import BackoffSettings

MIRROR_LOCK_SECONDS = 5.0
"""How long a writer waits for another writer of the mirror file."""
_UNREADABLE = "unreadable"

# One call decides and changes, so two workers cannot both multiply from the same value.
# KEYS: 1 config hash. ARGV: 1 direction, 2 floor, 3 cap, 4 factor, 5 step,
# 6 default concurrency, 7 now, 8 last ban ('' none, 'unreadable'), 9 healthy seconds.
# Returns {before, after, concurrency, reason, version, created, quiet seconds or ''}.
_TUNE = """
local key = KEYS[1]
local floor, cap = tonumber(ARGV[2]), tonumber(ARGV[3])
local now, healthy = tonumber(ARGV[7]), tonumber(ARGV[9])
local created = redis.call('EXISTS', key) == 0 and 1 or 0
redis.call('HSETNX', key, 'min_delay', ARGV[2])
redis.call('HSETNX', key, 'concurrency', ARGV[6])
local raw = redis.call('HGET', key, 'min_delay')
local before = tonumber(raw)
if before == nil or before ~= before or before < 0 or before == math.huge then
  return redis.error_reply('min_delay in ' .. key .. ' is not a number of seconds: ' .. raw)
end
local after, reason, quiet = before, 'unchanged', ''
-- exactly once per step: a redelivered task (its worker died after this ran) finds its id
local step = ARGV[10] or ''
if step ~= '' and redis.call('HGET', key, 'last_step') == step then
  return {tostring(before), tostring(before), redis.call('HGET', key, 'concurrency'),
          'already_applied', redis.call('HGET', key, 'version') or '0', created, ''}
end
if ARGV[1] == 'increase' then
  after = math.max(before, math.min(before * tonumber(ARGV[4]), cap), floor)
  reason = 'at_cap'
  redis.call('HSET', key, 'last_increase_at', ARGV[7])
elseif ARGV[8] == 'unreadable' then
  reason = 'ban_time_unreadable'
else
  local last_ban = tonumber(ARGV[8]) or 0
  local last_increase = tonumber(redis.call('HGET', key, 'last_increase_at') or '') or 0
  quiet = now - math.max(last_ban, last_increase)
  if quiet < healthy then
    reason = 'not_quiet'
  else
    after = math.min(before, math.max(before - tonumber(ARGV[5]), floor))
    reason = 'at_floor'
  end
  quiet = tostring(quiet)
end
if after ~= before then
  after = math.floor(after * 1000 + 0.5) / 1000  -- milliseconds: readable in the hash
end
if after ~= before then
  reason = ARGV[1] == 'increase' and 'increased' or 'decreased'
  redis.call('HSET', key, 'min_delay', tostring(after), 'updated_at', ARGV[7])
  redis.call('HINCRBY', key, 'version', 1)
end
if step ~= '' then
  redis.call('HSET', key, 'last_step', step)
end
local version = redis.call('HGET', key, 'version') or '0'
return {tostring(before), tostring(after), redis.call('HGET', key, 'concurrency'), reason,
        version, created, quiet}
"""


class TuneBackoffParams(ActionParams):
    """target: the Redis holding REMEDIATION_BACKOFF__CONFIG_KEY."""

    direction: Literal["increase", "decrease"] = Field(
        description="increase: min_delay x factor (to the cap); decrease: - step (to the floor)"
    )
    observed_rate: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="the ban rate that led here, for the audit"
    )


def _resolve(ctx: CheckContext, params: TuneBackoffParams) -> Resolved:
    """The target must be the Redis holding the pacing hash (REMEDIATION_BACKOFF__REDIS_TARGET),
    named as configured."""
    cfg = ctx.settings.backoff
    what = f"the pacing hash {cfg.config_key!r} (REMEDIATION_BACKOFF__REDIS_TARGET)"
    return canonical(
        params, target=redis_target(ctx, params.target, only=cfg.redis_target, what=what)
    )


def _resource(params: TuneBackoffParams) -> str:
    """Each direction has its own lock and cooldown: an increase is never held up by a decrease."""
    return f"{params.target}/scrape-backoff:{params.direction}"


@action(
    "tune_backoff",
    resolve=_resolve,
    resource=_resource,
    cooldown=timedelta(minutes=2),
    max_per_hour=60,
    verify=False,
)
def tune_backoff(ctx: ActionContext, params: TuneBackoffParams) -> ActionResult:
    """Pace the scrapers (runbook 000 "Increase Delays: min_delay"), AIMD on the delay.

    increase: min_delay x REMEDIATION_BACKOFF__INCREASE_FACTOR, at most CAP_SECONDS.
    decrease: min_delay - DECREASE_STEP_SECONDS, at least FLOOR_SECONDS, and only when
    neither a ban (the proxy check's LAST_BAN_KEY) nor an increase happened in the last
    HEALTHY_SECONDS (and the call's observed_rate, the ban rate its finding saw, is under
    BAN_RATE_THRESHOLD). An increase acts on the finding, never on the rate published since.
    One atomic Lua call on the configuration hash (created with the floor
    and DEFAULT_CONCURRENCY if absent), then the JSON mirror file if configured. Only on
    REMEDIATION_BACKOFF__REDIS_TARGET (another target is refused). Not verified by
    re-checking: each sweep takes one more step while the signal lasts."""
    cfg = ctx.settings.backoff
    signal = read_ban_signal(ctx)
    now = time.time()
    last_ban = _UNREADABLE if LAST_BAN_KEY in signal.unreadable else _arg(signal.last_ban_at)
    # The rate the finding observed counts as much as the published one: the rotation's
    # verification re-tests only the healthy proxies and may have overwritten it already.
    banning = max(signal.ban_rate or 0.0, params.observed_rate or 0.0)
    if banning >= cfg.ban_rate_threshold:
        last_ban = repr(now)  # banning right now: never ease off, whatever the timestamps say
    args = [
        params.direction,
        cfg.floor_seconds,
        cfg.cap_seconds,
        cfg.increase_factor,
        cfg.decrease_step_seconds,
        cfg.default_concurrency,
        repr(now),
        last_ban,
        cfg.healthy_seconds,
        ctx.idempotency_key,
    ]
    reply = ctx.redis(params.target).register_script(_TUNE)(keys=[cfg.config_key], args=args)
    before, after, concurrency, reason, version, created, quiet = (
        redis_clients.text(v) for v in reply
    )
    detail: dict[str, Any] = {
        "key": cfg.config_key,
        "direction": params.direction,
        "before": {"min_delay": float(before), "concurrency": _int(concurrency)},
        "after": {"min_delay": float(after), "concurrency": _int(concurrency)},
        "reason": reason,
        "created": created == "1",
        "observed_rate": params.observed_rate,
        "published_ban_rate": signal.ban_rate,
        "quiet_seconds": round(float(quiet)) if quiet else None,
        "floor_seconds": cfg.floor_seconds,
        "cap_seconds": cfg.cap_seconds,
    }
    changed = before != after
    summary = _summary(params.direction, before, after, reason, cfg)
    if cfg.mirror_file:
        try:
            detail["mirror"] = write_mirror(
                Path(cfg.mirror_file), float(after), _int(concurrency), int(version)
            )
        except (OSError, ActionFailed) as exc:
            detail["mirror"] = f"failed: {exc}"
            return ActionResult(
                ok=False,
                changed=changed,
                detail=detail,
                summary=f"{summary}; mirror file not written: {exc}",
            )
    return ActionResult(changed=changed, summary=summary, detail=detail)


def _summary(direction: str, before: str, after: str, reason: str, cfg: BackoffSettings) -> str:
    if before != after:
        return f"min_delay {before}s -> {after}s ({direction})"
    why = {
        "at_cap": f"already at the cap ({cfg.cap_seconds}s)",
        "at_floor": f"already at the floor ({cfg.floor_seconds}s)",
        "not_quiet": f"a ban or increase within the last {cfg.healthy_seconds}s",
        "ban_time_unreadable": f"{LAST_BAN_KEY} is not a number; cannot prove a quiet period",
        "already_applied": "this step was already applied by the attempt that was lost",
    }
    return f"min_delay stays {before}s: {why.get(reason, reason)}"


def _arg(value: float | None) -> str:
    return "" if value is None else repr(value)


def _int(value: str | bytes | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


# --- the mirror file -----------------------------------------------------------------------


def write_mirror(path: Path, min_delay: float, concurrency: int | None, version: int) -> str:
    """Merge the pacing into the JSON object at path, keeping every other key scrapers use.

    Written atomically (temp file in the same folder, fsync, os.replace, fsync of the
    folder); writers on this host take turns on a lock file and never replace a newer
    version with an older one. Returns "written" or "newer version present"."""
    if not path.parent.is_dir():
        raise ActionFailed(f"folder {path.parent} does not exist")
    with _locked(path.with_name(f".{path.name}.lock")):
        current = _read_object(path)
        meta = current.get("_remediation")
        if isinstance(meta, dict) and isinstance(meta.get("version"), int):
            if meta["version"] > version:
                return "newer version present"
        current["min_delay"] = min_delay
        if concurrency is not None:
            current["concurrency"] = concurrency
        current["_remediation"] = {
            "version": version,
            "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        atomic_write(path, json.dumps(current, indent=2, sort_keys=True) + "\n")
    return "written"


def _read_object(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ActionFailed(f"{path} is not valid JSON ({exc}); left untouched") from None
    if not isinstance(value, dict):
        raise ActionFailed(f"{path} does not hold a JSON object; left untouched")
    return value


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with file_lock(lock_path, MIRROR_LOCK_SECONDS) as held:
        if not held:
            raise ActionFailed(f"{lock_path} held for {MIRROR_LOCK_SECONDS}s")
        yield


def atomic_write(path: Path, text: str) -> None:
    """Replace path with text so that readers see the old file or the new one, never half."""
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o644  # scrapers, often another user, read it
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself survives a crash
    finally:
        os.close(folder)
