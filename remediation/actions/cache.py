"""Runbook 003 "Clear Cache" without FLUSHALL/FLUSHDB: delete configured key patterns only."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

import redis
from pydantic import Field, field_validator

from remediation.clients.redis import text
from remediation.context import ActionContext, CheckContext, Resolved
from remediation.errors import Refused
from remediation.findings import ActionResult
from remediation.guards import keys as guard_keys
from remediation.params import ActionParams
from remediation.plans import Plan, item, plan_of
from remediation.registry import action
from remediation.resolve import canonical, redis_target

PATTERNS_VAR = "REMEDIATION_CACHE__FLUSH_PATTERNS"
LEFT_COUNT_MAX = 100_000
"""After the cap, matching keys are counted (not deleted) up to this many distinct keys."""


def matches_everything(pattern: str) -> bool:
    """True for patterns without one literal character ('', '*', '?*', '[a-z]*'): the
    whole keyspace, which is FLUSHDB by another name.

    Left to right, a bracket set up to the first ']' after it, a backslash and the
    character after it (not a newline), and '*' / '?' are not literal; anything else is.
    One pass, linear in the pattern's length (a regex that retried every '[' to the end
    was quadratic on '[[[[...')."""
    n = len(pattern)
    close = _next_close(pattern)
    i = 0
    while i < n:
        c = pattern[i]
        if c == "[" and close[i] < n:
            i = close[i] + 1
        elif c == "\\" and i + 1 < n and pattern[i + 1] != "\n":
            i += 2
        elif c in "*?":
            i += 1
        else:
            return False
    return True


def _next_close(pattern: str) -> list[int]:
    """For each position i, the index of the first ']' after i (len(pattern) when none)."""
    n = len(pattern)
    out, nearest = [n] * n, n
    for i in range(n - 1, -1, -1):
        out[i] = nearest
        if pattern[i] == "]":
            nearest = i
    return out


class FlushCacheParams(ActionParams):
    patterns: list[Annotated[str, Field(min_length=1, max_length=512)]] | None = Field(
        None,
        min_length=1,
        max_length=50,
        description=f"a subset of {PATTERNS_VAR}; default all of them",
    )

    @field_validator("patterns")
    @classmethod
    def _no_whole_keyspace(cls, value: list[str] | None) -> list[str] | None:
        for pattern in value or []:
            if matches_everything(pattern):
                raise ValueError(f"pattern {pattern!r} matches every key; never flushed")
        return value


def resolve_patterns(ctx: CheckContext, params: FlushCacheParams) -> Resolved:
    """The configured Redis target and the patterns that will run: the configured ones the
    call names (all of them by default), each once, in configured order.

    Refused: FLUSH_PATTERNS empty, a named pattern not in it, or a pattern that matches
    every key (FLUSHDB by another name) among those that would run."""
    target = redis_target(ctx, params.target)
    configured = list(dict.fromkeys(ctx.settings.cache.flush_patterns))
    if not configured:
        raise Refused(f"no key may be deleted, {PATTERNS_VAR} is empty")
    wanted = set(configured if params.patterns is None else params.patterns)
    unknown = sorted(wanted - set(configured))
    if unknown:
        raise Refused(
            f"pattern(s) {_shown(unknown)} are not in {PATTERNS_VAR} ({_shown(configured)})"
        )
    patterns = [p for p in configured if p in wanted]
    everything = [p for p in patterns if matches_everything(p)]
    if everything:
        raise Refused(f"pattern {everything[0]!r} matches every key (fix {PATTERNS_VAR})")
    return canonical(params, target=target, patterns=patterns)


def _shown(patterns: list[str], most: int = 10) -> str:
    """Patterns as quoted in a refusal, at most ``most`` of them, each cut at 80 characters."""
    cut = [p if len(p) <= 80 else p[:80] + "..." for p in patterns[:most]]
    more = f" and {len(patterns) - most} more" if len(patterns) > most else ""
    return f"{cut}{more}"


class _Flush:
    """One run: SCAN MATCH per pattern, UNLINK in batches, stop at the per-run cap."""

    def __init__(self, r: redis.Redis, batch: int, cap: int, ctx: ActionContext) -> None:
        self.r, self.batch, self.cap, self.ctx = r, batch, cap, ctx
        self.blast_capped = False  # the blast radius (keys per window, all workers) is spent
        self.deleted: dict[str, int] = {}
        self.scanned = 0
        self.rest: set[Any] = set()  # SCAN may return a key twice; count each once
        self.protected = 0

    @property
    def left(self) -> int:
        return len(self.rest)

    @property
    def total(self) -> int:
        return sum(self.deleted.values())

    def pattern(self, pattern: str, most: int | None = None) -> None:
        """Delete keys matching pattern, up to the run's cap and ``most`` for this pattern
        (an approval's bound)."""
        self.deleted[pattern] = 0
        cursor: Any = 0
        while True:
            cursor, keys = self.r.scan(cursor, match=pattern, count=self.batch)
            self.scanned += len(keys)
            keys = self._unprotected(keys)
            room = self.cap - self.total
            if most is not None:
                room = min(room, most - self.deleted[pattern])
            if keys and room > 0:
                granted = self.ctx.reserve(len(keys[:room]))
                self.blast_capped |= granted < len(keys[:room])
                room = granted
                gone = int(self.r.unlink(*keys[:room])) if room else 0
                self.ctx.give_back(room - gone)  # keys already gone count for nothing
                self.deleted[pattern] += gone
            self.rest.update(keys[max(room, 0) :])
            if int(cursor) == 0 or self.left >= LEFT_COUNT_MAX or self.blast_capped:
                return

    def _unprotected(self, keys: list[Any]) -> list[Any]:
        kept = unprotected(keys)
        self.protected += len(keys) - len(kept)
        return kept


def unprotected(keys: list[Any]) -> list[Any]:
    """Guard state (rem:*) lives in the "self" Redis; no pattern may reach it."""
    return [k for k in keys if not text(k, "replace").startswith(guard_keys.PREFIX)]


def pattern_key(pattern: str) -> str:
    """A pattern as a plan names it."""
    return f"pattern:{pattern}"


def would_delete(
    ctx: CheckContext, target: str, patterns: list[str]
) -> dict[str, tuple[int, bool]]:
    """Per pattern, (keys a run would delete now, whether there are more than that): SCAN
    only, counting distinct unprotected keys until the run's cap is reached (bounded)."""
    cfg = ctx.settings.cache
    r = ctx.redis(target)
    room = cfg.flush_max_keys_per_run
    out: dict[str, tuple[int, bool]] = {}
    for pattern in patterns:
        seen: set[Any] = set()
        cursor: Any = 0
        while len(seen) <= room:  # one more than fits tells "at least"
            cursor, keys = r.scan(cursor, match=pattern, count=cfg.flush_batch)
            seen.update(unprotected(keys))
            if int(cursor) == 0:
                break
        n = min(len(seen), room)
        out[pattern] = (n, len(seen) > n)
        room -= n
    return out


def plan_flush(ctx: CheckContext, params: FlushCacheParams) -> Plan:
    """Per pattern, how many keys a run would delete now (keys are not listed: a number
    is what an approver can judge); "at least" where the per-run cap cuts it."""
    resolved = resolve_patterns(ctx, params).params
    counts = would_delete(ctx, resolved.target, resolved.patterns)
    items = [
        item(
            pattern_key(p),
            f"delete {n} key(s) matching {p!r}" + (" (more match: capped)" if more else ""),
            pattern=p,
            keys=n,
            more_match=more,
        )
        for p, (n, more) in counts.items()
        if n  # a pattern with nothing to delete is nothing to approve
    ]
    total = sum(n for n, _ in counts.values())
    return plan_of(f"delete {total} cache key(s) on {resolved.target}", items)


@action(
    "flush_cache",
    resolve=resolve_patterns,
    plan=plan_flush,
    cooldown=timedelta(minutes=5),
    max_per_hour=6,
)
def flush_cache(ctx: ActionContext, params: FlushCacheParams) -> ActionResult:
    """Delete the cache keys matching the configured patterns (runbook 003 "Clear Cache").

    Only patterns in REMEDIATION_CACHE__FLUSH_PATTERNS are ever deleted (empty: nothing
    is); a call may name a subset, never another pattern (refused before any guard), and
    a pattern that matches every key ('*', '') is refused; the guards' own keys (rem:*)
    are never deleted. SCAN MATCH per pattern, UNLINK in batches of FLUSH_BATCH, at most
    FLUSH_MAX_KEYS_PER_RUN keys per run: a capped run reports how many matching keys are
    left for the next one. Never FLUSHALL or FLUSHDB."""
    cfg = ctx.settings.cache
    resolved = resolve_patterns(ctx, params).params  # no I/O: a direct call is held to it too
    patterns: list[str] = resolved.patterns
    run = _Flush(ctx.redis(resolved.target), cfg.flush_batch, cfg.flush_max_keys_per_run, ctx)
    bounds = _approved_bounds(ctx, resolved.target, patterns)
    for pattern in patterns:
        if not run.blast_capped and ctx.approves(pattern_key(pattern)):
            run.pattern(pattern, bounds.get(pattern))
    capped = run.left > 0
    summary = f"deleted {run.total} key(s) matching {list(run.deleted)}"
    if capped:
        summary += f"; capped at {cfg.flush_max_keys_per_run}, {run.left} left"
    if run.blast_capped:
        summary += "; stopped at the blast-radius cap for flush_cache"
    return ActionResult(
        changed=run.total > 0,
        summary=summary,
        detail={
            "deleted": run.deleted,
            "scanned": run.scanned,
            "capped": capped,
            "left": run.left,
            "left_is_lower_bound": run.left >= LEFT_COUNT_MAX,
            "protected": run.protected,
            "blast_capped": run.blast_capped,
            "approved_bounds": bounds or None,
            "not_approved": [p for p in patterns if not ctx.approves(pattern_key(p))],
        },
    )


def _approved_bounds(ctx: ActionContext, target: str, patterns: list[str]) -> dict[str, int]:
    """On an approval, each approved pattern's bound: the count its plan shows now and no
    more than the approved plan counted, so keys written since are left."""
    if ctx.approved is None:
        return {}
    wanted = [p for p in patterns if ctx.approves(pattern_key(p))]
    now = would_delete(ctx, target, wanted)
    return {p: ctx.approved_count(pattern_key(p), "keys", n) for p, (n, _) in now.items()}
