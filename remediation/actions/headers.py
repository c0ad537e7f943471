"""Runbook 000 "HTTP 403 Forbidden / CAPTCHA: 3. Browser Fingerprints: regenerate user-agent
headers": publish a fresh, consistent set of real browser headers where the scrapers read it.

The set lives in a Redis hash (REMEDIATION_HEADERS__KEY on __REDIS_TARGET): ``headers`` (a
JSON object, in the order a browser sends them), ``user_agent``, ``browser``, ``os``,
``version``, ``updated_at``. The set before it is kept in ``<key>:previous`` for rollback.
Optionally the same goes into a JSON file (REMEDIATION_HEADERS__JSON_FILE, e.g. runbook 000's
scraping_config.json): ``headers`` and ``headers_previous``, every other key kept.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
from pydantic import Field

from remediation import browser_headers as bh
from remediation.actions.backoff import MIRROR_LOCK_SECONDS, atomic_write
from remediation.clients.redis import text
from remediation.context import ActionContext, CheckContext, Resolved
from remediation.errors import ActionFailed, Refused
from remediation.filelock import file_lock
from remediation.findings import ActionResult
from remediation.params import ActionParams
from remediation.registry import action
from remediation.resolve import canonical, redis_target
from remediation.settings import HeaderBrowser, HeaderOs, HeadersSettings

PREVIOUS_SUFFIX = ":previous"
"""The set before the published one lives under the key plus this suffix."""
MAX_FILE_BYTES = 1 << 20
"""A JSON file larger than this is left untouched (it is not a scraper's config)."""
FILE_META = "_remediation_headers"
"""Key of the JSON file's object naming the published version."""

# One call rotates: the current set becomes the previous one and the new set is published,
# only if nobody published in between (compare and set on the version); a redelivered task
# (same step id) finds its own set already there.
# KEYS: 1 key, 2 previous key. ARGV: 1 expected version ('' none), 2 step, 3 headers JSON,
# 4 user agent, 5 browser, 6 os, 7 now. Returns {outcome, version}.
_PUBLISH = """
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'none' and kind ~= 'hash' then return {'wrong_type', kind} end
local version = redis.call('HGET', KEYS[1], 'version') or ''
if ARGV[2] ~= '' and redis.call('HGET', KEYS[1], 'step') == ARGV[2] then
  return {'already_applied', version}
end
if version ~= ARGV[1] then return {'conflict', version} end
local current = redis.call('HGETALL', KEYS[1])
if #current > 0 then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[2], unpack(current))
  redis.call('DEL', KEYS[1])
end
version = tostring((tonumber(version) or 0) + 1)
redis.call('HSET', KEYS[1], 'headers', ARGV[3], 'user_agent', ARGV[4], 'browser', ARGV[5],
           'os', ARGV[6], 'updated_at', ARGV[7], 'version', version, 'step', ARGV[2])
return {'published', version}
"""


class RegenerateHeadersParams(ActionParams):
    """target: the Redis holding REMEDIATION_HEADERS__KEY. browser / os narrow the
    configured REMEDIATION_HEADERS__BROWSERS / __OS to one (never widen them)."""

    browser: HeaderBrowser | None = Field(None, description="only this browser family")
    os: HeaderOs | None = Field(None, description="only this operating system")


def _resolve(ctx: CheckContext, params: RegenerateHeadersParams) -> Resolved:
    """Enabled; the target is the Redis of REMEDIATION_HEADERS__REDIS_TARGET as configured;
    a browser or OS named by the call is one the configuration allows."""
    cfg = ctx.settings.headers
    if not cfg.enabled:
        raise Refused("regenerating headers is off (REMEDIATION_HEADERS__ENABLED)", notice=False)
    what = f"the scrapers' headers {cfg.key!r} (REMEDIATION_HEADERS__REDIS_TARGET)"
    target = redis_target(ctx, params.target, only=cfg.redis_target, what=what)
    if params.browser is not None and params.browser not in cfg.browsers:
        raise Refused(f"browser {params.browser!r} is not in REMEDIATION_HEADERS__BROWSERS")
    if params.os is not None and params.os not in cfg.os:
        raise Refused(f"OS {params.os!r} is not in REMEDIATION_HEADERS__OS")
    return canonical(params, target=target)


def _resource(params: RegenerateHeadersParams) -> str:
    """One published set per target: every call, narrowed or not, takes turns on it."""
    return f"{params.target}/scrape-headers"


@action(
    "regenerate_headers",
    resolve=_resolve,
    resource=_resource,
    cooldown=timedelta(minutes=10),
    max_per_hour=6,
    verify=False,
)
def regenerate_headers(ctx: ActionContext, params: RegenerateHeadersParams) -> ActionResult:
    """Publish a fresh set of real browser headers for the scrapers (runbook 000 "HTTP 403 /
    CAPTCHA: 3. Browser Fingerprints: regenerate user-agent headers").

    A set (User-Agent, Accept, Accept-Language from REMEDIATION_HEADERS__LOCALES,
    Accept-Encoding, sec-ch-ua*, Sec-Fetch-*, Upgrade-Insecure-Requests) is drawn from real
    browser data (browserforge, offline) for a browser in __BROWSERS on an OS in __OS,
    normalised for a top-level navigation and checked: the client hints match the user
    agent's browser, version, platform and mobile flag (Firefox and Safari send none), the
    Sec-Fetch-* values are a navigation's, sizes are bounded. A set that fails, or equals the
    published one, is drawn again (a new user agent preferred), up to 30 times. Published in
    the hash REMEDIATION_HEADERS__KEY in one atomic step that keeps the set before it in
    KEY:previous (rollback), then in __JSON_FILE if configured; verified by reading both
    back. Only on __REDIS_TARGET; refused while __ENABLED is false."""
    cfg = ctx.settings.headers
    client = ctx.redis(params.target)
    version, current = read_published(client, cfg.key)
    browsers = [params.browser] if params.browser else list(cfg.browsers)
    systems = [params.os] if params.os else list(cfg.os)
    made = bh.generate(browsers, systems, cfg.locales, current)
    detail: dict[str, Any] = {
        "key": cfg.key,
        "attempts": made.attempts,
        "rejected": dict(made.rejected.most_common(5)),
    }
    if made.headers is None:
        return ActionResult(
            ok=False,
            changed=False,
            detail=detail,
            summary=f"no fresh, consistent header set in {made.attempts} draws",
        )
    ident = bh.identify(made.headers["User-Agent"] if "User-Agent" in made.headers else "")
    assert ident is not None  # generate() returns checked sets only
    outcome, new_version = _publish(client, cfg.key, version, ctx.idempotency_key, made, ident)
    detail.update(
        version=new_version,
        browser=ident.browser,
        os=ident.os,
        user_agent=_ua(made.headers),
        previous_user_agent=_ua(current or {}),
        new_user_agent=made.new_user_agent,
        outcome=outcome,
    )
    if outcome == "already_applied":
        return ActionResult(
            changed=False,
            detail=detail,
            summary="this step was already published by the attempt that was lost",
        )
    problems = verify_published(client, cfg, made.headers, current, new_version)
    if cfg.json_file:
        try:
            detail["json_file"] = write_json_file(
                Path(cfg.json_file), made.headers, current, int(new_version)
            )
            problems += verify_json_file(Path(cfg.json_file), made.headers, int(new_version))
        except (OSError, ActionFailed) as exc:
            problems.append(f"JSON file not written: {exc}")
    summary = f"published {ident.browser} on {ident.os} headers (version {new_version})"
    if problems:
        detail["problems"] = problems
        return ActionResult(ok=False, detail=detail, summary=f"{summary}; {problems[0]}")
    return ActionResult(summary=summary, detail=detail)


def _ua(headers: dict[str, str]) -> str | None:
    return next((v for k, v in headers.items() if k.lower() == "user-agent"), None)


def read_published(client: redis.Redis, key: str) -> tuple[str, dict[str, str] | None]:
    """(version, headers) of the published set: ('', None) when there is none; headers None
    when the field is missing, oversized or not a JSON object of strings (it is replaced)."""
    kind = text(client.type(key))
    if kind == "none":
        return "", None
    if kind != "hash":
        raise ActionFailed(f"{key} is a Redis {kind}, not the hash of published headers")
    version = client.hget(key, "version")
    if int(client.hstrlen(key, "headers")) > 2 * bh.MAX_SET_BYTES:
        return text(version or ""), None
    return text(version or ""), _decode(client.hget(key, "headers"))


def _decode(raw: bytes | str | None) -> dict[str, str] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        return None
    return value


def _publish(
    client: redis.Redis,
    key: str,
    version: str,
    step: str,
    made: bh.Generated,
    ident: bh.Identity,
) -> tuple[str, str]:
    assert made.headers is not None
    args = [
        version,
        step,
        json.dumps(made.headers),
        made.headers.get("User-Agent", ""),
        ident.browser,
        ident.os,
        datetime.now(UTC).isoformat(timespec="seconds"),
    ]
    reply = client.register_script(_PUBLISH)(keys=[key, key + PREVIOUS_SUFFIX], args=args)
    outcome, new_version = (text(v) for v in reply)
    if outcome == "wrong_type":
        raise ActionFailed(f"{key} is a Redis {new_version}, not the hash of published headers")
    if outcome == "conflict":
        raise ActionFailed(
            f"{key} changed while the new set was drawn (version {version!r} ->"
            f" {new_version!r}); the next run starts from the newer set"
        )
    return outcome, new_version


def verify_published(
    client: redis.Redis,
    cfg: HeadersSettings,
    headers: dict[str, str],
    previous: dict[str, str] | None,
    version: str,
) -> list[str]:
    """Read the hash and the previous set back: what was published, consistent, and the set
    before it kept for rollback. Problems found (empty: none)."""
    got_version, got = read_published(client, cfg.key)
    problems = []
    if got != headers or got_version != version:
        problems.append(f"read back from {cfg.key}: version {got_version!r}, not the set published")
    elif found := bh.problems(got, cfg.browsers, cfg.os):
        problems.append(f"read back from {cfg.key}: {found[0]}")
    if previous is not None:
        _, kept = read_published(client, cfg.key + PREVIOUS_SUFFIX)
        if kept != previous:
            problems.append(f"{cfg.key}{PREVIOUS_SUFFIX} does not hold the previous set")
    return problems


# --- the JSON file -------------------------------------------------------------------------


def write_json_file(
    path: Path, headers: dict[str, str], previous: dict[str, str] | None, version: int
) -> str:
    """Merge ``headers`` and ``headers_previous`` into the JSON object at path, keeping every
    other key (the file may be scraping_config.json, which tune_backoff also writes: both take
    turns on the same lock file). Atomic; never replaces a newer version with an older one.
    Returns "written" or "newer version present"."""
    if not path.parent.is_dir():
        raise ActionFailed(f"folder {path.parent} does not exist")
    with file_lock(path.with_name(f".{path.name}.lock"), MIRROR_LOCK_SECONDS) as held:
        if not held:
            raise ActionFailed(f"{path}'s lock held for {MIRROR_LOCK_SECONDS}s")
        current = read_json_object(path)
        meta = current.get(FILE_META)
        if isinstance(meta, dict) and isinstance(meta.get("version"), int):
            if meta["version"] > version:
                return "newer version present"
        if previous is None and isinstance(current.get("headers"), dict):
            previous = current["headers"]
        current["headers"] = headers
        current["headers_previous"] = previous
        current[FILE_META] = {
            "version": version,
            "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        atomic_write(path, json.dumps(current, indent=2) + "\n")
    return "written"


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object at path ({} when absent); ActionFailed when too big or not an object."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return {}
    if len(raw) > MAX_FILE_BYTES:
        raise ActionFailed(f"{path} is larger than {MAX_FILE_BYTES} bytes; left untouched")
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ActionFailed(f"{path} is not valid JSON ({exc}); left untouched") from None
    if not isinstance(value, dict):
        raise ActionFailed(f"{path} does not hold a JSON object; left untouched")
    return value


def verify_json_file(path: Path, headers: dict[str, str], version: int) -> list[str]:
    """The file holds the published set (or a newer one written by a later run)."""
    current = read_json_object(path)
    meta = current.get(FILE_META)
    newer = (
        isinstance(meta, dict)
        and isinstance(meta.get("version"), int)
        and meta["version"] > version
    )
    if current.get("headers") != headers and not newer:
        return [f"read back from {path}: not the set published"]
    return []
