"""The pool in Redis: one hash per proxy, the index, the active set scrapers read.

Every change goes through ``ProxyPool.update``: read under WATCH, plan, write and republish
in one MULTI, re-planned when another writer got in between.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis

from remediation.clients import redis as redis_clients
from remediation.errors import RemediationError
from remediation.guards import keys as guard_keys
from remediation.proxies.entries import ProxyEntry, display_url

PREFIX = guard_keys.PROXY
INDEX_KEY = PREFIX + "index"
BAN_RATE_KEY = PREFIX + "ban_rate"
"""Banned / tested of the latest test of the pool, a decimal string (tune_backoff reads it)."""
LAST_BAN_AT_KEY = PREFIX + "last_ban_at"
"""Epoch seconds of the latest test that saw a ban (tune_backoff reads it)."""
LAST_TEST_KEY = PREFIX + "last_test"
"""HASH: at, tested, ok, slow, banned, dead, ban_rate of the latest test."""

UPDATE_ATTEMPTS = 5
"""Times an update is re-planned when another writer changed the pool under it."""

ACTIVE, QUARANTINED, DEAD = "active", "quarantined", "dead"
OK, SLOW, BANNED, UNTESTED = "ok", "slow", "banned", "untested"
HEALTHY = frozenset({OK, SLOW})
FAILING = frozenset({BANNED, DEAD})


class ProxyPoolBusy(RemediationError):
    """The pool kept changing under an update; nothing was written."""


@dataclass(frozen=True)
class ProbeResult:
    """One test of one proxy: ok | slow | banned | dead, with why and how long it took."""

    status: str
    reason: str
    latency_ms: float | None = None
    http_status: int | None = None


def _num(raw: dict[str, str], key: str, default: float = 0.0) -> float:
    try:
        return float(raw.get(key) or default)
    except ValueError:
        return default


@dataclass(frozen=True)
class ProxyRecord:
    """A proxy as the pool holds it (one Redis hash)."""

    id: str
    url: str
    region: str
    state: str
    score: float
    last_latency_ms: float | None
    consecutive_failures: int
    last_checked: float
    last_status: str
    last_reason: str
    quarantine_until: float
    quarantine_count: int
    quarantined_at: float

    @classmethod
    def from_hash(cls, pid: str, raw: dict[str, str]) -> ProxyRecord:
        latency = raw.get("last_latency_ms") or ""
        return cls(
            id=pid,
            url=raw.get("url", ""),
            region=raw.get("region", ""),
            state=raw.get("state", ACTIVE),
            score=_num(raw, "score", 1.0),
            last_latency_ms=float(latency) if latency else None,
            consecutive_failures=int(_num(raw, "consecutive_failures")),
            last_checked=_num(raw, "last_checked"),
            last_status=raw.get("last_status", UNTESTED),
            last_reason=raw.get("last_reason", ""),
            quarantine_until=_num(raw, "quarantine_until"),
            quarantine_count=int(_num(raw, "quarantine_count")),
            quarantined_at=_num(raw, "quarantined_at"),
        )

    @property
    def display(self) -> str:
        return display_url(self.url)

    @property
    def healthy(self) -> bool:
        """Active and its latest test passed (ok or slow)."""
        return self.state == ACTIVE and self.last_status in HEALTHY

    @property
    def retested(self) -> bool:
        """Parked (quarantined or dead) and tested again since it was parked."""
        return self.state != ACTIVE and self.last_checked > self.quarantined_at

    def due(self, now: float) -> bool:
        """Tested by this run: every active proxy; a parked one once its back-off is over."""
        return self.state == ACTIVE or self.quarantine_until <= now

    def brief(self, **extra: Any) -> dict[str, Any]:
        """How findings and results name a proxy: id and scheme://host:port, no credentials."""
        return {
            "id": self.id,
            "proxy": self.display,
            "region": self.region,
            "state": self.state,
            "status": self.last_status,
            "reason": self.last_reason,
            **extra,
        }


def new_proxy_fields(entry: ProxyEntry, now: float) -> dict[str, str]:
    """The hash of a proxy that just joined the pool: active, untested, full score."""
    return {
        "url": entry.url,
        "region": entry.region,
        "state": ACTIVE,
        "score": "1.0",
        "last_latency_ms": "",
        "consecutive_failures": "0",
        "last_checked": "0",
        "last_status": UNTESTED,
        "last_reason": "",
        "quarantine_until": "0",
        "quarantine_count": "0",
        "quarantined_at": "0",
        "added_at": f"{now:.3f}",
    }


@dataclass
class Changes:
    """What an update writes: fields per proxy id, new proxies, removed proxy ids.
    ``update`` fills in the active counts before and after."""

    fields: dict[str, dict[str, str]] = field(default_factory=dict)
    new: dict[str, dict[str, str]] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)
    active_before: int = 0
    active_after: int = 0
    republished: bool = False

    @property
    def empty(self) -> bool:
        return not (self.fields or self.new or self.removed)


P = TypeVar("P", bound=Changes)


class ProxyPool:
    """The pool of one Redis target. Reads are snapshots; writes go through ``update``."""

    def __init__(self, client: redis.Redis, active_key: str) -> None:
        self.r = client
        self.active_key = active_key

    @staticmethod
    def key(pid: str) -> str:
        return f"{PREFIX}p:{pid}"

    def records(self) -> dict[str, ProxyRecord]:
        """Every proxy in the pool, by id."""
        ids = sorted(redis_clients.text(m) for m in self.r.smembers(INDEX_KEY))
        return self._read(ids)

    def _read(self, ids: list[str]) -> dict[str, ProxyRecord]:
        pipe = self.r.pipeline(transaction=False)
        for pid in ids:
            pipe.hgetall(self.key(pid))
        out = {}
        for pid, raw in zip(ids, pipe.execute(), strict=True):
            if raw:  # an id whose hash is gone is not a proxy
                decoded = {redis_clients.text(k): redis_clients.text(v) for k, v in raw.items()}
                out[pid] = ProxyRecord.from_hash(pid, decoded)
        return out

    def published(self) -> set[str]:
        """The URLs scrapers currently read."""
        return {redis_clients.text(m) for m in self.r.smembers(self.active_key)}

    def update(self, planner: Callable[[dict[str, ProxyRecord]], P]) -> P:
        """Let planner turn a snapshot into Changes; write them and republish the active set
        in one MULTI. Re-planned if a proxy, the index or the active set changed meanwhile."""
        for _ in range(UPDATE_ATTEMPTS):
            with self.r.pipeline() as tx:
                try:
                    return self._attempt(tx, planner)
                except redis.WatchError:
                    continue
        raise ProxyPoolBusy(f"the proxy pool changed under {UPDATE_ATTEMPTS} updates in a row")

    def _attempt(self, tx: Any, planner: Callable[[dict[str, ProxyRecord]], P]) -> P:
        tx.watch(INDEX_KEY, self.active_key)
        ids = sorted(redis_clients.text(m) for m in tx.smembers(INDEX_KEY))
        if ids:
            tx.watch(*[self.key(pid) for pid in ids])
        # Read on another connection in one round trip: WATCH still guards these keys.
        records, published = self._read(ids), self.published()
        changes = planner(records)
        urls = _active_urls(records, changes)
        changes.active_before = sum(1 for rec in records.values() if rec.state == ACTIVE)
        changes.active_after = len(urls)
        changes.republished = urls != published
        tx.multi()
        self._write(tx, changes)
        if changes.republished:
            self._publish(tx, urls)
        tx.execute()
        return changes

    @staticmethod
    def _write(tx: Any, changes: Changes) -> None:
        for pid, values in changes.new.items():
            tx.hset(ProxyPool.key(pid), mapping=values)
            tx.sadd(INDEX_KEY, pid)
        for pid, values in changes.fields.items():
            if values:
                tx.hset(ProxyPool.key(pid), mapping=values)
        for pid in changes.removed:
            tx.delete(ProxyPool.key(pid))
            tx.srem(INDEX_KEY, pid)

    def _publish(self, tx: Any, urls: set[str]) -> None:
        building = f"{self.active_key}:publishing"
        tx.delete(building)
        if urls:
            tx.sadd(building, *sorted(urls))
            tx.rename(building, self.active_key)
        else:
            tx.delete(self.active_key)

    def sync(self, entries: list[ProxyEntry], *, remove_missing: bool, now: float) -> Sync:
        """Make the pool hold the configured proxies: new ones join active; ones no longer
        configured leave (only when remove_missing); a changed region or URL is updated."""

        def plan(records: dict[str, ProxyRecord]) -> Sync:
            sync = Sync()
            wanted = {e.id: e for e in entries}
            for pid, entry in wanted.items():
                rec = records.get(pid)
                if rec is None:
                    sync.new[pid] = new_proxy_fields(entry, now)
                elif (rec.url, rec.region) != (entry.url, entry.region):
                    sync.fields[pid] = {"url": entry.url, "region": entry.region}
            if remove_missing:
                sync.removed = set(records) - set(wanted)
            sync.gone = [records[pid].brief() for pid in sorted(sync.removed)]
            return sync

        return self.update(plan)

    def record_run(self, counts: dict[str, int], now: float) -> float | None:
        """Publish the latest test's counts and ban rate (banned / tested); None if nothing
        was tested (the previous ban rate then stays)."""
        tested = sum(counts.values())
        rate = round(counts.get(BANNED, 0) / tested, 4) if tested else None
        pipe = self.r.pipeline()
        ban_rate = "" if rate is None else rate
        pipe.hset(
            LAST_TEST_KEY,
            mapping={
                "at": f"{now:.3f}",
                "tested": tested,
                "ban_rate": ban_rate,
                **{k: counts.get(k, 0) for k in (OK, SLOW, BANNED, DEAD)},
            },
        )
        if rate is not None:
            pipe.set(BAN_RATE_KEY, str(rate))
        if counts.get(BANNED):
            pipe.set(LAST_BAN_AT_KEY, f"{now:.3f}")
        pipe.execute()
        return rate


@dataclass
class Sync(Changes):
    """Changes of a configuration sync; ``gone`` names the proxies removed."""

    gone: list[dict[str, Any]] = field(default_factory=list)


def _active_urls(records: dict[str, ProxyRecord], changes: Changes) -> set[str]:
    urls = set()
    for values in changes.new.values():
        if values.get("state") == ACTIVE:
            urls.add(values["url"])
    for pid, rec in records.items():
        if pid in changes.removed:
            continue
        values = changes.fields.get(pid, {})
        if values.get("state", rec.state) == ACTIVE:
            urls.add(values.get("url", rec.url))
    return urls


def result_fields(rec: ProxyRecord, result: ProbeResult, now: float) -> dict[str, str]:
    """The hash fields one test writes: status, reason, latency, failures, score."""
    value = {OK: 1.0, SLOW: 0.5}.get(result.status, 0.0)
    failures = rec.consecutive_failures + 1 if result.status == DEAD else 0
    latency = "" if result.latency_ms is None else f"{result.latency_ms:.1f}"
    return {
        "last_status": result.status,
        "last_reason": result.reason[:200],
        "last_latency_ms": latency,
        "last_checked": f"{now:.3f}",
        "last_http_status": str(result.http_status or ""),
        "consecutive_failures": str(failures),
        "score": f"{0.7 * rec.score + 0.3 * value:.4f}",
    }
