"""Bans of client addresses: a blocklist in the state Redis that applications read, and an
nftables set with timeouts on the host that drops the client's packets.

Redis layout (the applications' contract, README "Hostile clients"):

* ``rem:ban:ip:<ip>``: exists while ``<ip>`` is banned (TTL = the ban's remaining time);
  its value is JSON ``{"ip", "since", "until", "seconds", "offence", "log", "reason"}``.
  An application checks ``EXISTS rem:ban:ip:<ip>`` (the address as ``ipaddress`` prints
  it: IPv4 dotted, IPv6 compressed lower case; an IPv4-mapped address is its IPv4 form).
* ``rem:ban:index``: sorted set of banned addresses scored by their ``until`` (epoch s).
* ``rem:ban:history:<ip>``: hash ``offences`` (bans so far), ``until`` (when the last ban
  ended or ends); it lives ``repeat_window`` beyond the ban: a repeat offender's next ban
  is ``bantime * factor ** (offences)``, capped.

Expiry needs nothing to run: Redis drops the key at its TTL and the kernel drops the set
element at its timeout.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from typing import Any

import redis

from remediation.errors import RemediationError
from remediation.guards import keys
from remediation.settings import AccessSettings

PREFIX = keys.BAN
INDEX = PREFIX + "index"
MAX_STDERR = 500


class BanError(RemediationError):
    """nft failed, or did not answer in time."""


def ban_key(ip: str) -> str:
    return f"{PREFIX}ip:{ip}"


def history_key(ip: str) -> str:
    return f"{PREFIX}history:{ip}"


_BAN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local offences = tonumber(redis.call('HGET', KEYS[3], 'offences') or '0')
local left = redis.call('PTTL', KEYS[1])
if left > 0 then
  return {0, tostring(left / 1000), offences, tostring(now)}
end
local n = offences + 1
local secs = math.floor(math.min(tonumber(ARGV[2]) * tonumber(ARGV[3]) ^ (n - 1), tonumber(ARGV[4])))
local record = cjson.encode({ip = ARGV[1], since = now, ["until"] = now + secs, seconds = secs,
  offence = n, log = ARGV[6], reason = ARGV[7]})
redis.call('SET', KEYS[1], record, 'EX', secs)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZADD', KEYS[2], now + secs, ARGV[1])
redis.call('HSET', KEYS[3], 'offences', n, 'until', tostring(now + secs))
redis.call('EXPIRE', KEYS[3], secs + tonumber(ARGV[5]))
return {1, tostring(secs), n, tostring(now)}
"""

_UNBAN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local was = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('HSET', KEYS[3], 'until', tostring(now))
end
return was
"""


@dataclass(frozen=True)
class Placed:
    """What ban() did: a new ban (``new``) or the one already in place, and its length."""

    new: bool
    seconds: float  # the new ban's length, or what is left of the one in place
    offence: int
    at: float


def ban(
    r: redis.Redis,
    ip: str,
    *,
    base: int,
    factor: float,
    most: int,
    repeat_window: int,
    log: str,
    reason: str,
) -> Placed:
    """Ban ip in Redis, atomically: a repeat offender's ban is longer; an address already
    banned keeps its ban (nothing is counted twice)."""
    new, secs, offence, now = r.eval(
        _BAN,
        3,
        ban_key(ip),
        INDEX,
        history_key(ip),
        ip,
        base,
        factor,
        most,
        repeat_window,
        log,
        reason[:200],
    )
    return Placed(bool(new), float(secs), int(offence), float(now))


@dataclass(frozen=True)
class Pending:
    """What ban() would do now, read without writing: a new ban or the one in force."""

    new: bool
    seconds: float
    offence: int


def would_ban(r: redis.Redis, ip: str, *, base: int, factor: float, most: int) -> Pending:
    """Read-only: the ban ip would get now (the formula of _BAN: base * factor ** earlier
    offences, capped, whole seconds), or the time left of the ban it has."""
    left_ms = int(r.pttl(ban_key(ip)))
    offences = int(r.hget(history_key(ip), "offences") or 0)
    if left_ms > 0:
        return Pending(False, left_ms / 1000, offences)
    return Pending(True, float(int(min(base * factor**offences, most))), offences + 1)


def unban(r: redis.Redis, ip: str) -> bool:
    """Lift ip's ban in Redis (its history says it ended now). True if it was banned."""
    return bool(r.eval(_UNBAN, 3, ban_key(ip), INDEX, history_key(ip), ip))


def banned(r: redis.Redis, ips: list[str]) -> dict[str, float]:
    """{ip: seconds left} for those of ips banned now."""
    pipe = r.pipeline(transaction=False)
    for ip in ips:
        pipe.pttl(ban_key(ip))
    return {ip: ms / 1000 for ip, ms in zip(ips, pipe.execute(), strict=True) if ms > 0}


def ended(r: redis.Redis, ips: list[str]) -> dict[str, float]:
    """{ip: when its last ban ended or ends} for those of ips banned before."""
    pipe = r.pipeline(transaction=False)
    for ip in ips:
        pipe.hget(history_key(ip), "until")
    return {ip: float(u) for ip, u in zip(ips, pipe.execute(), strict=True) if u is not None}


class Nft:
    """The nftables side: an ``inet`` table with one set per family (``flags timeout``) and
    an input chain dropping both sets' sources; made when missing. Commands run as argv
    (REMEDIATION_ACCESS__NFT_COMMAND, e.g. ``["ip", "netns", "exec", "srv", "nft"]``),
    scripts go on stdin to ``nft -f -`` (one transaction), each bounded in time."""

    def __init__(self, cfg: AccessSettings) -> None:
        self.cfg = cfg
        self.table = f"inet {cfg.nft_table}"

    def _run(self, args: list[str], script: str | None = None) -> Any:
        argv = [*self.cfg.nft_command, *args]
        try:
            done = subprocess.run(  # argv from configuration, no shell
                argv,
                input=script,
                capture_output=True,
                text=True,
                timeout=self.cfg.nft_timeout_seconds,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BanError(f"{argv[0]}: {type(exc).__name__}: {exc}") from None
        if done.returncode != 0:
            raise BanError(f"nft {' '.join(args[:3])} failed: {done.stderr.strip()[-MAX_STDERR:]}")
        return done.stdout

    def set_for(self, ip: str) -> str:
        return self.cfg.nft_set_v6 if ":" in ip else self.cfg.nft_set_v4

    def ensure(self) -> list[str]:
        """Make the table, sets, chain and drop rules that are missing; returns what was made."""
        c = self.cfg
        try:
            listed = json.loads(self._run(["-j", "list", "table", "inet", c.nft_table]))
        except BanError:
            listed = {"nftables": []}
        objects = listed.get("nftables", [])
        sets = {o["set"]["name"] for o in objects if "set" in o}
        chains = {o["chain"]["name"] for o in objects if "chain" in o}
        rules = json.dumps([o["rule"] for o in objects if "rule" in o])
        lines, made = [f"add table {self.table}"], []
        for name, kind in ((c.nft_set_v4, "ipv4_addr"), (c.nft_set_v6, "ipv6_addr")):
            if name not in sets:
                lines.append(f"add set {self.table} {name} {{ type {kind}; flags timeout; }}")
                made.append(f"set {name}")
        if c.nft_chain not in chains:
            lines.append(
                f"add chain {self.table} {c.nft_chain} {{ type filter hook input"
                f" priority {c.nft_priority}; policy accept; }}"
            )
            made.append(f"chain {c.nft_chain}")
        for proto, name in (("ip", c.nft_set_v4), ("ip6", c.nft_set_v6)):
            if f'"@{name}"' not in rules:
                lines.append(f"add rule {self.table} {c.nft_chain} {proto} saddr @{name} drop")
                made.append(f"rule {proto} saddr @{name} drop")
        if made:
            self._run(["-f", "-"], "\n".join(lines) + "\n")
        return made

    def add(self, ip: str, seconds: int) -> None:
        """ip in its family's set for ``seconds`` (replacing any timeout it had)."""
        where = f"{self.table} {self.set_for(ip)}"
        self._run(
            ["-f", "-"],
            f"add element {where} {{ {ip} }}\ndelete element {where} {{ {ip} }}\n"
            f"add element {where} {{ {ip} timeout {max(1, seconds)}s }}\n",
        )

    def remove(self, ip: str) -> None:
        """ip out of its set (no error when it was not there)."""
        where = f"{self.table} {self.set_for(ip)}"
        self._run(
            ["-f", "-"], f"add element {where} {{ {ip} }}\ndelete element {where} {{ {ip} }}\n"
        )

    def elements(self) -> set[str]:
        """Addresses in both sets now (an expired element is gone)."""
        found: set[str] = set()
        for name in (self.cfg.nft_set_v4, self.cfg.nft_set_v6):
            listed = json.loads(self._run(["-j", "list", "set", "inet", self.cfg.nft_table, name]))
            for obj in listed.get("nftables", []):
                for elem in obj.get("set", {}).get("elem", []):
                    value = elem.get("elem", {}).get("val") if isinstance(elem, dict) else elem
                    if isinstance(value, str):
                        found.add(value)
        return found
