"""Kill -> verified fix: Docker events (`remediation watch`) against the one-minute sweep.

One real worker (2 processes), a compose project of CONTAINERS busybox containers on the real
Docker engine, a private Redis and audit database. Both halves run in the same invocation:

* events: one `remediation watch --source docker`, no beat. KILLS times, a running container
  (round robin) is `docker kill`ed; the time is taken just before the kill call, the end is
  the restart's verified_at in the audit (the verification check saw it running again).
  Broken down with the check run's cause and the audit: the engine's event time, the
  watcher's send time, the check's start, the guards' admission, the verification (the
  restart itself, `docker restart` of an exited container, is most of the last step).
* sweep: the watcher stopped; the same number of kills, spread at random over WINDOWS
  one-minute windows (one kill per container per window), and the check sent every 60 s on
  a grid, as the shipped schedule's docker_containers entry does; the same measurement.

Reported: p50/p95/min/max of each and the ratio of the medians.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

from bench import stats
from bench.pipeline import admin_dsn
from tests.support.base import wait_for
from tests.support.watch import SERVE, DockerStack, docker_stack

KILLS = int(os.environ.get("REMEDIATION_BENCH_WATCH_KILLS", "30"))
CONTAINERS = 10
SWEEP_SECONDS = float(os.environ.get("REMEDIATION_BENCH_WATCH_SWEEP_SECONDS", "60"))
CHECK = "remediation.check.docker_containers"


def _summary(values: list[float]) -> dict[str, Any]:
    return stats.summary(values, digits=3)


def _running(stack: DockerStack, containers: list[Any]) -> None:
    for c in containers:
        wait_for(lambda c=c: stack.project.status(c) == "running", 60, 0.05, f"{c.name} runs")


def events(stack: DockerStack, containers: list[Any]) -> dict[str, Any]:
    watcher = stack.watcher("bench-events")
    stack.caught_up("bench-events")
    totals, to_event, to_send, to_check, to_admit, to_verify = [], [], [], [], [], []
    for i in range(KILLS):
        c = containers[i % len(containers)]
        _running(stack, [c])
        time.sleep(1.2)  # past the container's one-second restart back-off
        killed = stack.kill(c)
        row = stack.verified_after(c.name, killed, timeout=60)
        assert row["verification"] == "recovered", row
        totals.append(float(row["verified"]) - killed)
        cause = row["cause"] or {}
        if cause.get("by") == "event" and cause.get("kind") != "catch_up":
            to_event.append(float(cause["at"]) - killed)
            to_send.append(float(cause["sent"]) - float(cause["at"]))
            to_check.append(float(row["checked"]) - float(cause["sent"]))
            to_admit.append(float(row["decided"]) - float(row["checked"]))
            to_verify.append(float(row["verified"]) - float(row["decided"]))
    watcher.stop()
    out = {"kill_to_verified": _summary(totals), "stats": stack.stats()}
    if to_event:
        out["kill_to_event"] = _summary(to_event)
        out["event_to_send"] = _summary(to_send)
        out["send_to_check_start"] = _summary(to_check)
        out["check_start_to_admitted"] = _summary(to_admit)
        out["admitted_to_verified"] = _summary(to_verify)
    return out


def sweep(stack: DockerStack, containers: list[Any]) -> dict[str, Any]:
    from celery import Celery

    client = Celery(broker=stack.env["REMEDIATION_BROKER_URL"])
    windows = -(-KILLS // len(containers))
    rng = random.Random(16)
    plan = sorted(
        (w * SWEEP_SECONDS + rng.uniform(2, SWEEP_SECONDS - 2), containers[i % len(containers)])
        for i in range(KILLS)
        for w in [i // len(containers)]
    )
    _running(stack, containers)
    timeline = [(offset, c) for offset, c in plan]
    timeline += [(k * SWEEP_SECONDS, None) for k in range(1, windows + 2)]
    timeline.sort(key=lambda item: item[0])
    start = time.time()
    killed: list[tuple[Any, float]] = []
    for offset, c in timeline:
        time.sleep(max(0.0, start + offset - time.time()))
        if c is None:
            client.send_task(CHECK, kwargs={})
        else:  # one the last sweep restarted may still be starting or being verified
            before = [at for k, at in killed if k is c]
            if before:
                stack.verified_after(c.name, before[-1], timeout=2 * SWEEP_SECONDS)
            _running(stack, [c])
            killed.append((c, stack.kill(c)))
    totals = []
    for c, at in killed:
        row = stack.verified_after(c.name, at, timeout=2 * SWEEP_SECONDS)
        assert row["verification"] == "recovered", row
        totals.append(float(row["verified"]) - at)
    client.close()
    return {"kill_to_verified": _summary(totals), "sweep_seconds": SWEEP_SECONDS}


def run() -> dict[str, Any]:
    with docker_stack(admin_dsn(), "benchwatch") as stack:
        containers = [stack.project.run(SERVE) for _ in range(CONTAINERS)]
        _running(stack, containers)
        by_event = events(stack, containers)
        by_sweep = sweep(stack, containers)
    ratio = by_sweep["kill_to_verified"]["p50"] / by_event["kill_to_verified"]["p50"]
    return {
        "kills": KILLS,
        "containers": CONTAINERS,
        "events": by_event,
        "sweep": by_sweep,
        "median_ratio_sweep_over_events": round(ratio, 1),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
