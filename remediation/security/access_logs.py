"""Access logs as fail2ban reads them: which client got which refusal (401/403/429) when, and
how many within the window (findtime), counted across runs in the state Redis.

Lines are combined log format (Apache/nginx default) or JSON lines with configured field
names. Client addresses are parsed with ``ipaddress`` (an IPv4-mapped IPv6 address is its
IPv4 address; anything else is not a client and is skipped). Each run keeps, per client,
the times of its recent refusals in a sorted set (``rem:access:<log>:hits:<ip>``, newest
``keep`` only, expiring with the window) and an index of clients by last refusal
(``rem:access:<log>:clients``, at most ``max_clients``).
"""

from __future__ import annotations

import ipaddress
import json
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis

from remediation.guards import keys

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
PREFIX = keys.ACCESS
BATCH = 5000


def position_key(log: str) -> str:
    return f"{PREFIX}{log.lower()}:pos"


def lock_key(log: str) -> str:
    return f"{PREFIX}{log.lower()}:lock"


def clients_key(log: str) -> str:
    return f"{PREFIX}{log.lower()}:clients"


def hits_key(log: str, ip: str) -> str:
    return f"{PREFIX}{log.lower()}:hits:{ip}"


def parse_ip(raw: str) -> IP | None:
    """The client address, canonical; None for anything that is not one host address."""
    try:
        ip = ipaddress.ip_address(raw)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return None
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
    if ip.is_unspecified or ip.is_multicast:
        return None
    return ip


def allowed(ip: IP, networks: Iterable[Network]) -> bool:
    return any(ip.version == net.version and ip in net for net in networks)


def combined_pattern(statuses: Iterable[int]) -> re.Pattern[bytes]:
    """A combined-log-format line with one of the statuses: (client, time, status).
    Every part is bounded by a character it cannot contain, so matching is linear."""
    codes = "|".join(str(s) for s in sorted(set(statuses)))
    return re.compile(
        rb'^(\S+) \S+ \S+ \[([^\]\n]{1,64})\] "(?:[^"\\\n]|\\.)*" (' + codes.encode() + rb") ",
        re.M,
    )


@dataclass
class Hits:
    """What one run read: refusal times and statuses per client, and what was skipped."""

    times: dict[str, list[float]] = field(default_factory=dict)
    statuses: dict[str, Counter[int]] = field(default_factory=dict)
    lines: int = 0
    matched: int = 0
    bad_ip: int = 0
    old: int = 0  # refusals older than the window

    def add(self, ip: str, when: float, status: int) -> None:
        self.times.setdefault(ip, []).append(when)
        self.statuses.setdefault(ip, Counter())[status] += 1


class Parser:
    """Lines of one configured log to Hits (caches the parsed times and addresses)."""

    def __init__(self, fmt: str, statuses: Iterable[int], fields: tuple[str, str, str]) -> None:
        self.fmt = fmt
        self.statuses = set(statuses)
        self.pattern = combined_pattern(self.statuses)
        self.needles = [str(s).encode() for s in self.statuses]
        self.fields = [f.split(".") for f in fields]  # ip, status, time
        self._times: dict[bytes, float | None] = {}
        self._ips: dict[bytes | str, str | None] = {}

    def parse(self, data: bytes, now: float, since: float) -> Hits:
        hits = Hits(lines=data.count(b"\n"))
        if self.fmt == "combined":
            rows: Iterable[tuple[Any, ...]] = (m.groups() for m in self.pattern.finditer(data))
        else:
            rows = self._json_rows(data)
        for raw_ip, raw_time, raw_status in rows:
            hits.matched += 1
            ip = self._ip(raw_ip)
            if ip is None:
                hits.bad_ip += 1
                continue
            when = self._time(raw_time, now)
            if when < since:
                hits.old += 1
                continue
            hits.add(ip, min(when, now), int(raw_status))
        return hits

    def _ip(self, raw: bytes | str) -> str | None:
        if raw not in self._ips:
            text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)
            ip = parse_ip(text)
            self._ips[raw] = None if ip is None else str(ip)
        return self._ips[raw]

    def _time(self, raw: Any, now: float) -> float:
        if isinstance(raw, bytes):
            if raw not in self._times:
                try:
                    parsed = datetime.strptime(raw.decode(), "%d/%b/%Y:%H:%M:%S %z")
                    self._times[raw] = parsed.timestamp()
                except (ValueError, UnicodeDecodeError):
                    self._times[raw] = None
            cached = self._times[raw]
            return now if cached is None else cached
        return json_time(raw, now)

    def _json_rows(self, data: bytes) -> Iterable[tuple[Any, ...]]:
        for line in data.splitlines():
            if not any(n in line for n in self.needles):
                continue
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            ip, status, when = (_dig(doc, path) for path in self.fields)
            try:
                code = int(status)
            except (TypeError, ValueError):
                continue
            if code in self.statuses and isinstance(ip, str):
                yield ip, when, code


def _dig(doc: Any, path: list[str]) -> Any:
    for part in path:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(part)
    return doc


def json_time(raw: Any, now: float) -> float:
    """Epoch seconds (or milliseconds) or an ISO 8601 string; ``now`` when absent or unreadable."""
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return float(raw) / 1000 if raw > 1e11 else float(raw)
    if isinstance(raw, str):
        try:
            return float(raw)
        except ValueError:
            pass
        try:
            parsed = datetime.fromisoformat(raw)
        except ValueError:
            return now
        if parsed.tzinfo is None:  # a time without a zone is UTC
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    return now


def record(
    r: redis.Redis, log: str, hits: Hits, findtime: int, keep: int, max_clients: int
) -> None:
    """Add this run's refusals to the log's window state (pipelined)."""
    run = uuid.uuid4().hex[:8]
    pipe = r.pipeline(transaction=False)
    index = clients_key(log)
    for n, (ip, times) in enumerate(hits.times.items()):
        key = hits_key(log, ip)
        pipe.zadd(key, {f"{t:.3f}:{run}:{i}": t for i, t in enumerate(times[-keep:])})
        pipe.zremrangebyrank(key, 0, -keep - 1)
        pipe.expire(key, findtime + 60)
        pipe.zadd(index, {ip: max(times)}, gt=True)
        if n % BATCH == BATCH - 1:
            pipe.execute()
    pipe.zremrangebyscore(index, "-inf", time.time() - findtime)
    pipe.expire(index, findtime + 60)
    pipe.execute()
    excess = r.zcard(index) - max_clients
    if excess > 0:
        popped: list[Any] = r.zpopmin(index, excess)
        for ip, _ in popped:
            r.delete(hits_key(log, _text(ip)))


def window_counts(
    r: redis.Redis, log: str, since: float, after: dict[str, float] | None = None
) -> dict[str, int]:
    """Refusals per client since ``since`` (and, for a client in ``after``, since then:
    its last ban ended). Every client of the log's index, pipelined."""
    after = after or {}
    ips = [_text(ip) for ip in r.zrangebyscore(clients_key(log), since, "+inf")]
    counts: dict[str, int] = {}
    for start in range(0, len(ips), BATCH):
        batch = ips[start : start + BATCH]
        pipe = r.pipeline(transaction=False)
        for ip in batch:
            pipe.zcount(hits_key(log, ip), f"({max(since, after.get(ip, 0.0))}", "+inf")
        counts.update(zip(batch, (int(n) for n in pipe.execute()), strict=True))
    return counts


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def try_lock(r: redis.Redis, log: str, seconds: int) -> str | None:
    token = uuid.uuid4().hex
    return token if r.set(lock_key(log), token, nx=True, ex=seconds) else None


_UNLOCK = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end"


def unlock(r: redis.Redis, log: str, token: str) -> None:
    r.eval(_UNLOCK, 1, lock_key(log), token)
