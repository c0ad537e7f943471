"""Runbook 003 "Clear Cache" without FLUSHALL/FLUSHDB: delete configured key patterns only."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

import redis
from pydantic import Field, field_validator

from remediation.context import ActionContext
from remediation.findings import ActionResult
from remediation.guards import keys as guard_keys
from remediation.params import ActionParams
from remediation.registry import action

PATTERNS_VAR = "REMEDIATION_CACHE__FLUSH_PATTERNS"
LEFT_COUNT_MAX = 100_000
"""After the cap, matching keys are counted (not deleted) up to this many distinct keys."""
# Bracket sets, escapes and wildcards: what is left after removing them is the literal part.
_GLOB = re.compile(r"\[[^\]]*\]|\\.|[*?]")


def matches_everything(pattern: str) -> bool:
    """True for patterns without one literal character ('', '*', '?*', '[a-z]*'): the
    whole keyspace, which is FLUSHDB by another name."""
    return not _GLOB.sub("", pattern)


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


def _refusal(ctx: ActionContext, params: FlushCacheParams) -> str | None:
    configured = ctx.settings.cache.flush_patterns
    if not configured:
        return f"refused: no key may be deleted, {PATTERNS_VAR} is empty"
    wanted = params.patterns or configured
    everything = [p for p in wanted if matches_everything(p)]
    if everything:
        return f"refused: pattern {everything[0]!r} matches every key (fix {PATTERNS_VAR})"
    unknown = [p for p in wanted if p not in configured]
    if unknown:
        return f"refused: pattern(s) {unknown} are not in {PATTERNS_VAR} ({configured})"
    return None


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

    def pattern(self, pattern: str) -> None:
        self.deleted[pattern] = 0
        cursor: Any = 0
        while True:
            cursor, keys = self.r.scan(cursor, match=pattern, count=self.batch)
            self.scanned += len(keys)
            keys = self._unprotected(keys)
            room = self.cap - self.total
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
        """Guard state (rem:*) lives in the "self" Redis; no pattern may reach it."""
        kept = [k for k in keys if not _text(k).startswith(guard_keys.PREFIX)]
        self.protected += len(keys) - len(kept)
        return kept


def _text(key: bytes | str) -> str:
    return key.decode("utf-8", "replace") if isinstance(key, bytes) else key


@action("flush_cache", cooldown=timedelta(minutes=5), max_per_hour=6)
def flush_cache(ctx: ActionContext, params: FlushCacheParams) -> ActionResult:
    """Delete the cache keys matching the configured patterns (runbook 003 "Clear Cache").

    Only patterns in REMEDIATION_CACHE__FLUSH_PATTERNS are ever deleted (empty: nothing
    is); a call may name a subset, never another pattern, and a pattern that matches
    every key ('*', '') is refused; the guards' own keys (rem:*) are never deleted. SCAN MATCH per pattern, UNLINK in batches of
    FLUSH_BATCH, at most FLUSH_MAX_KEYS_PER_RUN keys per run: a capped run reports how
    many matching keys are left for the next one. Never FLUSHALL or FLUSHDB."""
    refusal = _refusal(ctx, params)
    if refusal:
        return ActionResult(ok=False, changed=False, summary=refusal)
    cfg = ctx.settings.cache
    run = _Flush(ctx.redis(params.target), cfg.flush_batch, cfg.flush_max_keys_per_run, ctx)
    for pattern in params.patterns or cfg.flush_patterns:
        if not run.blast_capped:
            run.pattern(pattern)
    capped = run.left > 0
    summary = f"deleted {run.total} key(s) matching {list(run.deleted)}"
    if capped:
        summary += f"; capped at {cfg.flush_max_keys_per_run}, {run.left} left"
    if run.blast_capped:
        summary += "; stopped at the blast-radius cap for flush_cache"
    return ActionResult(
        changed=run.total > 0,
        summary=summary,
        detail={"deleted": run.deleted, "scanned": run.scanned, "capped": capped,
                "left": run.left, "left_is_lower_bound": run.left >= LEFT_COUNT_MAX,
                "protected": run.protected, "blast_capped": run.blast_capped},
    )  # fmt: skip
