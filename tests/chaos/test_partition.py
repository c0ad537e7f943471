"""Partition chaos across hosts: two (three) hosts as network namespaces on a bridge, each
with a worker and a beat; Redis, PostgreSQL, RabbitMQ and the webhook stay on the test's
side, behind a TCP relay on the bridge address. One host at a time loses its link for
longer than the beat lock's timeout, mid-action or while its beat holds the lock, and gets
it back; on the Redis broker and on RabbitMQ.

Counted per message (each beat message's task id from the beat's debug log, its run from
the audit): no (entry, slot) run twice (a second message of a slot is audited 'duplicate'
and runs nothing), no slot skipped beyond the handover policy, no message lost except one
Redis handed to a worker just as its host was cut (kombu's Redis transport: README
"Brokers"); each injected fault's effect exactly once (Redis' own count of the dedupe's
writes); the lock of a cut-off beat taken over within the lock timeout; every task a worker
finished has its audit rows (the cut host's spool drained after healing)."""

from __future__ import annotations

import itertools
import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from celery.schedules import schedule

from remediation import slots
from remediation.audit.spool import ACTIVE, CLAIMED
from remediation.guards import lua
from tests.support.audit import Audit
from tests.support.base import wait_for
from tests.support.chaos import scale
from tests.support.netns import Host, Network, Relay, bridged_hosts
from tests.support.processes import BeatProcess, WorkerProcess
from tests.support.services import RedisServer

HOSTS = scale(2, 3)
CUTS = scale(2, 6)
ENTRIES = scale(6, 10)  # schedule entries probing an empty list: slots only
INTERVAL = 3  # seconds between two firings of one entry
LOCK_TIMEOUT = 10  # REMEDIATION_CELERY__REDBEAT_LOCK_TIMEOUT's minimum
LOOP = 1  # REMEDIATION_CELERY__BEAT_MAX_LOOP_INTERVAL
HANDOVER_BOUND = LOCK_TIMEOUT + LOOP + 2  # cut -> a standby holds the lock, with slack
CUT_SECONDS = LOCK_TIMEOUT + 10  # past the lock's timeout and an audit write's (10 s)
STEADY = 6  # seconds of normal running before each cut and after the last heal
STEADY_GAP = INTERVAL + LOOP + 1  # the longest gap between two firings of one entry
PAUSE_MS = 20_000  # the longest the side Redis holds writes (CLIENT PAUSE) for a cut
CONCURRENCY = 2  # worker processes per host
SETTLE = 90  # seconds for spools to drain and every task to be audited after the last heal
SLOT = "chaos:slot:"
FAULT = "chaos:fault:"
JOBS = ["a", "b", "a", "c", "b"]  # a fault: a job list with two duplicates
DEDUPED = ["a", "b", "c"]
DEDUPE_TASK = "remediation.act.dedupe_job_queue"
_TASK = re.compile(r"Task (remediation\.[\w.]+)\[([0-9a-f-]{36})\] (received|succeeded|raised)")


def entries() -> dict[str, str]:
    """Schedule entry name -> the job list it probes: the slot entries, then one entry per
    cut watching the list that cut's fault goes into."""
    names = {f"slot{i:02d}": f"{SLOT}{i:02d}" for i in range(ENTRIES)}
    return names | {f"fault{i:02d}": f"{FAULT}{i:02d}" for i in range(CUTS)}


OFFSETS = slots.spread_offsets({n: {"schedule": schedule(INTERVAL)} for n in entries()}, set())
ENTRY_OF = {key: name for name, key in entries().items()}


def schedule_module() -> str:
    return (
        "SCHEDULE = {\n"
        + "".join(
            f"    {name!r}: {{'task': 'remediation.check.redis_job_queue', "
            f"'schedule': {INTERVAL}, 'kwargs': {{'target': 'app', 'key': {key!r}}}}},\n"
            for name, key in entries().items()
        )
        + "}\n"
    )


@dataclass
class Node:
    """One host and what runs on it."""

    host: Host
    worker: WorkerProcess
    beat: BeatProcess
    spool: Path

    def spooled(self) -> list[Path]:
        if not self.spool.exists():
            return []
        return [p for p in self.spool.iterdir() if p.name.endswith((ACTIVE, CLAIMED))]

    def spool_counts(self) -> tuple[int, int]:
        """(audit rows this host's worker spooled, rows it replayed) from its log."""
        spooled = replayed = 0
        for line in self.worker.log().splitlines():
            if '"audit row spooled"' in line:
                spooled += 1
            elif '"audit spool replayed"' in line:
                replayed += int(json.loads(line).get("rows", 0))
        return spooled, replayed

    def tasks(self) -> list[tuple[str, str, str, float]]:
        """(task name, task id, received|succeeded|raised, epoch) from the worker's log."""
        out = []
        for event, at in self.worker.events("Task remediation."):
            match = _TASK.search(event)
            if match:
                out.append((match.group(1), match.group(2), match.group(3), at))
        return out


@dataclass
class Cut:
    """One cut of a host's link and what followed."""

    kind: str  # "mid-action" or "lock hold"
    host: str
    at: float
    healed: float = 0.0
    held_lock: bool = False  # the cut host's beat was the one firing
    in_flight: int = 0  # actions received on the cut host and not finished at the cut
    lock_taken_after: float | None = None  # cut -> another beat "Acquired lock"
    first_firing_after: float | None = None  # cut -> the next firing by another beat


@dataclass
class Message:
    """A message a beat published: its entry and the slot it fired (the grid point the
    beat was at when it sent it: remediation.beat's slot header), and when."""

    entry: str
    slot: float
    at: float


def messages(nodes: list[Node]) -> dict[str, Message]:
    """Task id -> the message, from the beats' DEBUG logs: 'Sending due task NAME' then,
    once published, '... sent. id->ID' (a send that failed or was cut short has no id)."""
    out = {}
    for node in nodes:
        due: tuple[str, float] | None = None
        for event, at in node.beat.events("Scheduler: "):
            if match := re.match(r"Scheduler: Sending due task (\S+) ", event):
                due = (match.group(1), at) if match.group(1) in OFFSETS else None
            elif (match := re.search(r"sent\. id->([0-9a-f-]{36})", event)) and due:
                out[match.group(1)] = Message(due[0], slot_of(*due), due[1])
                due = None
    return out


@dataclass
class Runs:
    """Check runs of the schedule's entries from the audit, each matched to its message."""

    status: dict[str, str] = field(default_factory=dict)  # task id -> status

    @classmethod
    def read(cls, audit: Audit) -> Runs:
        rows = audit.rows(
            "SELECT task_id, status FROM check_runs"
            " WHERE purpose = 'detect' AND params->>'key' LIKE 'chaos:%%'"
        )
        return cls({str(r["task_id"]): str(r["status"]) for r in rows})

    def statuses(self) -> Counter[str]:
        return Counter(self.status.values())

    def per_slot(self, sent: dict[str, Message]) -> dict[tuple[str, float], list[str]]:
        """(entry, slot) -> the statuses of its messages' runs."""
        out: dict[tuple[str, float], list[str]] = {}
        for task_id, msg in sent.items():
            if task_id in self.status:
                out.setdefault((msg.entry, msg.slot), []).append(self.status[task_id])
        return out

    def fired(self, sent: dict[str, Message]) -> dict[str, list[float]]:
        """Entry -> the slots that ran (not as a duplicate), in order."""
        out: dict[str, list[float]] = {}
        for (entry, slot), statuses in sorted(self.per_slot(sent).items()):
            if any(s not in ("duplicate", "running") for s in statuses):
                out.setdefault(entry, []).append(slot)
        return out


def slot_of(name: str, started: float) -> float:
    return slots.grid_slot(started, INTERVAL, OFFSETS[name])


@pytest.fixture
def network() -> Iterator[Network]:
    """HOSTS namespaces on a bridge (skip locally without root or ip; fail in CI)."""
    with bridged_hosts(HOSTS) as net:
        yield net


@pytest.fixture
def relay(network: Network) -> Iterator[Relay]:
    relay = Relay(network.bridge_ip)
    try:
        yield relay
    finally:
        relay.close()


def host_env(base: dict[str, str], relay: Relay, host: Host, tmp_path: Path) -> dict[str, str]:
    """The chaos environment as a process on host sees it: every service through the relay,
    a spool and a metrics folder of its own."""
    env = {k: relay.rewrite(v) if k.startswith("REMEDIATION_") else v for k, v in base.items()}
    env["REMEDIATION_AUDIT__SPOOL_DIR"] = str(tmp_path / f"spool-{host.name}")
    env["REMEDIATION_METRICS__MULTIPROC_DIR"] = str(tmp_path / f"metrics-{host.name}")
    leaks = [k for k, v in env.items() if k.startswith("REMEDIATION_") and "127.0.0.1" in v]
    assert leaks == [], f"not reachable from {host.name}: {leaks}"
    return env


def firing(nodes: list[Node], since: float) -> list[Node]:
    """The nodes whose beat sent something since then and has not said it lost the lock."""
    out = []
    for node in nodes:
        sent = [at for _, at in node.beat.events("Sending due task") if at >= since]
        lost = [at for _, at in node.beat.events("lost the lock") if at >= since]
        if sent and (not lost or max(lost) < max(sent)):
            out.append(node)
    return out


def the_holder(nodes: list[Node]) -> Node:
    """The one node whose beat is firing now."""

    def one() -> Node | None:
        now = firing(nodes, time.time() - INTERVAL)
        return now[0] if len(now) == 1 else None

    found: Node = wait_for(one, 4 * INTERVAL, 0.2, "exactly one beat firing")
    return found


def acting(nodes: list[Node], since: float) -> Node | None:
    """The node whose worker received a dedupe_job_queue task after since and has not
    finished it (others may have received one and let the guards suppress it)."""
    for node in nodes:
        dedupes = [(t, w, at) for name, t, w, at in node.tasks() if name == DEDUPE_TASK]
        received = {t for t, w, at in dedupes if w == "received" and at >= since}
        if received - {t for t, w, _ in dedupes if w != "received"}:
            return node
    return None


def cut_and_heal(
    network: Network, nodes: list[Node], n: int, jobs: redis.Redis
) -> tuple[Cut, Node]:
    """Inject fault n, cut a host (even n: the one acting on it; odd n: the one whose beat
    fires), hold the cut past the lock timeout, heal it."""
    injected = time.time()
    jobs.rpush(f"{FAULT}{n:02d}", *JOBS)
    holder = the_holder(nodes)
    mid_action = n % 2 == 0
    try:
        if mid_action:  # the action's script waits in Redis until after the cut
            jobs.client_pause(PAUSE_MS, all=False)  # writes only: checks still read
            wait_for(lambda: held_script(jobs), 4 * INTERVAL, 0.02, f"fault {n}'s script held")
            victim = wait_for(lambda: acting(nodes, injected), 10, 0.05, "the host acting")
        else:
            victim = holder
        cut = Cut("mid-action" if mid_action else "lock hold", victim.host.name, time.time())
        network.cut(victim.host)
    finally:
        if mid_action:
            time.sleep(0.5)
            jobs.client_unpause()  # the effect happens, its reply is lost
    try:
        cut.held_lock = victim is holder
        time.sleep(CUT_SECONDS)
    finally:
        network.heal(victim.host)
    cut.healed = time.time()
    others = [node for node in nodes if node is not victim]
    if cut.held_lock:
        taken = [at for o in others for _, at in o.beat.events("Acquired lock") if at > cut.at]
        cut.lock_taken_after = min(taken) - cut.at if taken else None
        sent = [at for o in others for _, at in o.beat.events("Sending due task") if at > cut.at]
        cut.first_firing_after = min(sent) - cut.at if sent else None
    return cut, victim


def held_script(jobs: redis.Redis) -> bool:
    """A client's script waits in the paused Redis (CLIENT LIST flag b: the action sent it)."""
    return any(
        "b" in str(c.get("flags")) and str(c.get("cmd", "")).startswith("eval")
        for c in jobs.client_list()
    )


def effects(jobs: redis.Redis) -> int:
    """Dedupes that changed a list, counted by Redis itself: the script's LREM runs only
    when it removes something (remediation/actions/dedupe_job_queue.lua)."""
    stats = jobs.info("commandstats").get("cmdstat_lrem", {})
    return int(stats.get("calls", 0)) if isinstance(stats, dict) else 0


def in_flight(node: Node, cut: Cut) -> int:
    """Action tasks the cut host's worker had received before the cut and not finished."""
    tasks = [(tid, what) for name, tid, what, at in node.tasks() if ".act." in name and at < cut.at]
    return len({t for t, w in tasks if w == "received"} - {t for t, w in tasks if w != "received"})


def back_at_work(nodes: list[Node], since: float) -> bool:
    """Every worker has finished a task a second or more after since."""
    return all(
        any(what != "received" and at > since + 1 for _, _, what, at in node.tasks())
        for node in nodes
    )


def finished_task_ids(nodes: list[Node]) -> set[str]:
    """Checks and actions a worker says it finished (each writes audit rows)."""
    return {
        tid
        for node in nodes
        for name, tid, what, _ in node.tasks()
        if what != "received" and name.startswith(("remediation.check.", "remediation.act."))
    }


def audited_task_ids(audit: Audit, ids: set[str]) -> set[str]:
    rows = audit.rows(
        "SELECT task_id FROM check_runs WHERE task_id = ANY(%s) AND status <> 'running'"
        " UNION SELECT task_id FROM guard_decisions WHERE task_id = ANY(%s)",
        list(ids),
        list(ids),
    )
    return {str(r["task_id"]) for r in rows}


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest, chaos_env: dict[str, str]) -> str:
    """The broker URL: the state Redis's db 1, or a RabbitMQ vhost of this test's own."""
    if request.param == "rabbitmq":
        return str(request.getfixturevalue("rabbitmq_url"))
    return chaos_env["REMEDIATION_BROKER_URL"]


@pytest.mark.timeout(scale(300, 900))
def test_hosts_cut_off_mid_action_and_holding_the_lock(
    chaos_env: dict[str, str],
    broker: str,
    network: Network,
    relay: Relay,
    chaos_audit: Audit,
    side_redis: RedisServer,
    tmp_path: Path,
) -> None:
    """Hosts cut off mid-action and while their beat holds the lock, then healed: each slot
    runs once, none is skipped beyond the handover, each fault is acted on once, the lock
    is taken over, and every finished task's audit rows arrive (spools drained)."""
    (tmp_path / "partition_schedule.py").write_text(schedule_module())
    base = {
        **chaos_env,
        "REMEDIATION_BROKER_URL": broker,
        "REMEDIATION_SCHEDULE_MODULE": "partition_schedule",
        "PYTHONPATH": str(tmp_path),
        "REMEDIATION_CELERY__REDBEAT_LOCK_TIMEOUT": str(LOCK_TIMEOUT),
        "REMEDIATION_CELERY__BEAT_MAX_LOOP_INTERVAL": str(LOOP),
        # each cut mid-action is a failed run: the breaker would open after two (as it
        # should) and suppress the next faults; this test counts effects, not the breaker
        "REMEDIATION_BREAKER__MINIMUM_CALLS": "1000",
    }
    nodes: list[Node] = []
    jobs = redis.Redis.from_url(side_redis.url(0), decode_responses=True)
    # loaded as on a Redis that ran it before: the held EVALSHA is the dedupe, not NOSCRIPT
    jobs.script_load(lua.source("dedupe_job_queue", "remediation.actions"))
    started = time.time()
    try:
        for i, host in enumerate(network.hosts):
            env = host_env(base, relay, host, tmp_path)
            worker = WorkerProcess(
                env,
                f"part{i}",
                CONCURRENCY,
                log_path=tmp_path / f"worker{i}.log",
                prefix=host.prefix(),
            )
            beat = BeatProcess(
                {**env, "REMEDIATION_LOG_LEVEL": "DEBUG"},  # each message's task id
                f"beat{i}",
                tmp_path / f"beat{i}.log",
                prefix=host.prefix(),
            )
            nodes.append(Node(host, worker, beat, Path(env["REMEDIATION_AUDIT__SPOOL_DIR"])))
            worker.start()
            beat.start()
        wait_for(
            lambda: len(Runs.read(chaos_audit).fired(messages(nodes))) == len(OFFSETS),
            60,
            0.3,
            "every entry firing",
        )
        cuts = []
        for n in range(CUTS):
            time.sleep(STEADY)
            cut, victim = cut_and_heal(network, nodes, n, jobs)
            cut.in_flight = in_flight(victim, cut)
            cuts.append(cut)
        time.sleep(STEADY)
        # a spool drains on its process's next audit write: keep the beats firing until
        # every worker is back at work (a RabbitMQ reconnect backs off: seconds after the
        # heal) and every spool is empty
        wait_for(lambda: back_at_work(nodes, cuts[-1].healed), SETTLE, 0.5, "workers back")
        wait_for(lambda: not any(n.spooled() for n in nodes), SETTLE, 0.5, "spools drained")
        for node in nodes:
            node.beat.kill()
        ended = time.time()
        sent = messages(nodes)
        try:  # a message TCP still retransmits to a healed host arrives late, not never
            wait_for(lambda: settled(chaos_audit, sent, nodes, cuts), SETTLE, 0.5, "all run")
        except TimeoutError:
            pass  # report() names what never ran
        report(chaos_audit, nodes, cuts, jobs, sent, started, ended)
    finally:
        for node in nodes:
            node.beat.kill()
            node.worker.stop()
        jobs.close()


def settled(audit: Audit, sent: dict[str, Message], nodes: list[Node], cuts: list[Cut]) -> bool:
    """Every message has run to its end, or is known lost in transit."""
    status = Runs.read(audit).status
    never = [m for t, m in sent.items() if t not in status]
    running = [t for t in sent if status.get(t) == "running"]
    return not running and len(never) == len(in_transit(never, nodes, cuts))


def skipped_slots(fired: dict[str, list[float]], cuts: list[Cut]) -> list[tuple[str, float, float]]:
    """(entry, slot, next slot that fired) with unfired slots between them, beyond the
    policy: only across the handover after a cut of the firing beat may slots be missed (they
    fire once, late, as the latest slot), and no longer than the handover takes."""
    out = []
    for entry, fired_slots in fired.items():
        for a, b in itertools.pairwise(fired_slots):
            limit = INTERVAL + 0.5
            for c in cuts:
                first = c.at + (c.first_firing_after or 0)
                if c.held_lock and c.first_firing_after is not None and a < first < b + INTERVAL:
                    limit = 2 * INTERVAL + HANDOVER_BOUND
            if b - a > limit:
                out.append((entry, a, b))
    return out


STALE_BRPOP = "Redis BRPOP got no reply"
"""kombu's warning when it drops a broker connection whose BRPOP got no answer."""


def in_transit(never: list[Message], nodes: list[Node], cuts: list[Cut]) -> list[Message]:
    """The messages that never ran because Redis handed them to a worker whose host had just
    been cut: BRPOP removes a message from the queue and kombu records it as unacknowledged
    only once the worker has read it; the reply waits in TCP retransmission and is gone when
    kombu drops the silent connection ('BRPOP got no reply ... dropping stale connection').
    At most one per cut (one BRPOP connection per worker). RabbitMQ keeps such a message."""
    out = []
    for cut in cuts:
        node = next(n for n in nodes if n.host.name == cut.host)
        dropped = [at for _, at in node.worker.events(STALE_BRPOP) if at > cut.at]
        during = [m for m in never if cut.at <= m.at <= cut.healed and m not in out]
        if dropped and during:
            out.append(during[0])
    return out


def report(
    audit: Audit,
    nodes: list[Node],
    cuts: list[Cut],
    jobs: redis.Redis,
    sent: dict[str, Message],
    started: float,
    ended: float,
) -> None:
    """The counts, printed (pytest -s shows them) and asserted."""
    runs = Runs.read(audit)
    per_slot = runs.per_slot(sent)
    fired = runs.fired(sent)
    twice = [slot for slot, st in per_slot.items() if sum(s != "duplicate" for s in st) > 1]
    both = [slot for slot, st in per_slot.items() if len(st) > 1]
    never = [m for t, m in sent.items() if t not in runs.status]
    lost_in_transit = in_transit(never, nodes, cuts)
    never = [m for m in never if m not in lost_in_transit]
    gone = {(m.entry, m.slot) for m in lost_in_transit}
    unknown = [t for t in runs.status if t not in sent]
    skipped = [
        (e, a, b)
        for e, a, b in skipped_slots(fired, cuts)
        if not any(g == e and a < slot < b for g, slot in gone)  # that slot's message is gone
    ]
    late = [name for name, ts in fired.items() if ts[-1] < ended - STEADY_GAP - INTERVAL]
    faults = [f"{FAULT}{n:02d}" for n in range(CUTS)]
    acted = acting_runs(audit)
    lists = {key: jobs.lrange(key, 0, -1) for key in faults}
    done = effects(jobs)
    removing = {k: sum(1 for o, n, _ in v if o == "succeeded" and n) for k, v in acted.items()}
    finished = finished_task_ids(nodes)
    lost = finished - audited_task_ids(audit, finished)
    spooled = sum(n.spool_counts()[0] for n in nodes)
    replayed = sum(n.spool_counts()[1] for n in nodes)
    exited = [
        n.host.name for n in nodes if n.worker.proc is None or n.worker.proc.poll() is not None
    ]
    print(
        f"\npartition: {len(nodes)} hosts, {len(cuts)} cuts of {CUT_SECONDS}s"
        f" ({sum(c.held_lock for c in cuts)} during a lock hold,"
        f" {sum(c.in_flight > 0 for c in cuts)} mid-action); {len(sent)} messages sent by the"
        f" beats for {len(per_slot)} slots of {len(fired)} entries, runs {dict(runs.statuses())};"
        f" slots run twice {len(twice)}, skipped {len(skipped)}, messages never run"
        f" {len(never)} (+ {len(lost_in_transit)} lost in transit to a cut worker);"
        f" slots fired by two beats {len(both)} (the second audited duplicate);"
        f" {len(faults)} faults, {done} effects (Redis' count), {sum(map(len, acted.values()))}"
        f" acting runs ({sum(removing.values())} reported removing, "
        f"{sum(o == 'failed' for v in acted.values() for o, _, _ in v)} failed: cut off);"
        f" audit rows spooled on cut hosts {spooled}, replayed after healing {replayed};"
        f" {len(finished)} tasks finished, lost audit rows {len(lost)}; workers exited"
        f" {len(exited)};"
        f" lock taken after {[round(c.lock_taken_after or -1, 1) for c in cuts if c.held_lock]} s,"
        f" first firing after"
        f" {[round(c.first_firing_after or -1, 1) for c in cuts if c.held_lock]} s;"
        f" {round(time.time() - started)}s"
    )
    assert exited == [], [n.worker.log()[-3000:] for n in nodes if n.host.name in exited]
    assert len(fired) == len(OFFSETS), "an entry never ran"
    assert unknown == [], f"check runs no beat sent: {unknown[:5]}"
    assert twice == [], f"slots run twice: {twice}"
    assert never == [], f"messages sent and never run: {never}\n{cuts}"
    assert skipped == [], f"slots skipped: {skipped}\n{cuts}"
    assert late == [], f"entries that stopped before the end: {late}"
    assert lists == dict.fromkeys(faults, DEDUPED), "a fault not fixed"
    assert done == len(faults), f"{done} effects for {len(faults)} faults: {acted}"
    assert all(n <= 1 for n in removing.values()), acted
    assert lost == set(), f"finished tasks with no audit row: {sorted(lost)[:5]}"
    assert spooled > 0 and replayed == spooled, (spooled, replayed)
    assert sum(c.held_lock for c in cuts) >= CUTS // 2, cuts
    assert sum(c.in_flight > 0 for c in cuts) >= CUTS // 2, cuts
    for cut in cuts:
        if cut.held_lock:
            assert cut.lock_taken_after is not None, cut
            assert cut.lock_taken_after <= HANDOVER_BOUND, cut


def acting_runs(audit: Audit) -> dict[str, list[tuple[str, int | None, str | None]]]:
    """Fault list -> (outcome, jobs removed, error) of each dedupe_job_queue run that acted
    (admitted and run: succeeded, or failed in the act; not refused or suppressed)."""
    rows = audit.rows(
        "SELECT params->>'key' AS key, outcome, (result->'detail'->>'removed')::int AS removed,"
        " error FROM action_runs WHERE action = 'dedupe_job_queue'"
        " AND outcome IN ('succeeded', 'failed') ORDER BY started_at"
    )
    out: dict[str, list[tuple[str, int | None, str | None]]] = {}
    for row in rows:
        out.setdefault(row["key"], []).append((row["outcome"], row["removed"], row["error"]))
    return out
