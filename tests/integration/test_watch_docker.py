"""Docker events -> the container check -> restart_container, verified (runbook 000 "Docker
Management: restart the service"), through a real worker and real `remediation watch`
processes on the real Docker engine, with no beat: a killed container, a watcher killed -9
(its standby takes over and its catch-up finds what died meanwhile), and a storm."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.base import free_port, wait_for
from tests.support.docker_storm import StormProxy
from tests.support.http_doubles import WebhookReceiver
from tests.support.processes import WatchProcess
from tests.support.watch import CRASH, LEASE_SECONDS, SERVE, DockerStack, docker_stack


@pytest.fixture(scope="module")
def stack(pg_admin: str) -> Iterator[DockerStack]:
    with docker_stack(pg_admin) as made:
        yield made


def test_a_killed_container_is_restarted_and_verified_by_the_event(stack: DockerStack) -> None:
    """die -> docker_containers(container=...) -> container_down -> restart_container ->
    recovered; the check run records the die event that caused it."""
    port = free_port()
    watcher = stack.watcher("w1", REMEDIATION_WATCH__METRICS_PORT=str(port))
    try:
        app = stack.project.run(SERVE)
        stack.project.wait_status(app, "running")
        stack.caught_up("w1")
        killed = stack.kill(app)
        row = stack.verified_after(app.name, killed, timeout=30)
        assert (row["outcome"], row["verification"]) == ("succeeded", "recovered")
        cause = row["cause"]
        assert cause["by"] == "event" and cause["source"] == "docker", cause
        assert "die" in cause["kind"].split(",")
        assert cause["resource"] == f"docker/{app.name}" and cause["watcher"] == "w1"
        assert cause["detail"]["id"] == app.id[:12] and cause["detail"]["exit_code"] == "137"
        assert row["params"] == {"target": "docker", "container": app.name}
        assert stack.project.status(app) == "running"

        def flushed() -> dict[str, int] | None:  # the watcher writes its counters every second
            s = stack.stats()
            return (
                s
                if s.get("received", 0) >= 1 and s.get("checks:docker_containers", 0) >= 2
                else None
            )

        wait_for(flushed, 10, 0.1, "the watcher's counters: catch-up + die")
        shown = subprocess.run(
            [str(Path(sys.executable).parent / "remediation"), "status", "--json"],
            env=stack.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        (docker,) = json.loads(shown.stdout)["watch"]
        assert (docker["source"], docker["holder"]) == ("docker", "w1"), docker
        assert docker["checks"] >= 2 and docker["received"] >= 1, docker
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
            metrics = page.read().decode()
        assert 'remediation_watch_events_total{outcome="received",source="docker"}' in metrics
        assert 'remediation_watch_checks_sent_total{check="docker_containers",source="docker"}' in (
            metrics
        )
        assert 'remediation_watch_lease_held{source="docker"} 1.0' in metrics
    finally:  # a failed assertion must not leave w1 holding the lease for the next tests
        watcher.stop()


def test_a_standby_takes_over_a_killed_watcher_and_its_catch_up_finds_what_died_meanwhile(
    stack: DockerStack,
) -> None:
    """kill -9 of the active watcher, then two containers killed while nobody listens: the
    standby takes the lease within its length (and a tick), and its catch-up sweep finds both
    down; both are restarted and verified (none missed)."""
    first = stack.watcher("fa")
    second = stack.watcher("fb", wait=False)
    apps = [stack.project.run(SERVE) for _ in range(2)]
    for app in apps:
        stack.project.wait_status(app, "running")
    time.sleep(1)
    assert not second.active("docker")  # a standby
    first.kill()
    gone = time.time()
    for app in apps:
        app.kill()
    wait_for(lambda: second.active("docker"), LEASE_SECONDS + 10, 0.05, "the standby listening")
    taken = next(at for _event, at in second.events("lease taken"))
    print(f"\nstandby took the lease {taken - gone:.2f} s after the kill (lease {LEASE_SECONDS} s)")
    assert taken - gone <= LEASE_SECONDS + 2, taken - gone  # the lease, one tick, start-up
    for app in apps:
        row = stack.verified_after(app.name, gone, timeout=60)
        assert (row["outcome"], row["verification"]) == ("succeeded", "recovered"), row
        assert row["cause"]["kind"] == "catch_up" and row["cause"]["watcher"] == "fb", row
        assert stack.project.status(app) == "running"
    second.stop()


def test_a_storm_of_a_thousand_deaths_is_a_few_checks_and_one_escalation(pg_admin: str) -> None:
    """1,000 die events of one crash-looping container in two seconds (one real death, passed on
    1,000 times by a proxy in front of the engine, tests/support/docker_storm.py), then its
    real deaths after each restart: a bounded number of checks (one per resource per
    REMEDIATION_WATCH__MIN_INTERVAL_SECONDS, leading and trailing), restarts up to the
    container's flap limit, one give-up escalated once, not 1,000 actions."""
    receiver = WebhookReceiver().start()
    extra = {
        "REMEDIATION_CONTAINERS__FLAP_MAX_RESTARTS": "3",
        "REMEDIATION_CONTAINERS__FLAP_WINDOW_SECONDS": "300",
        "REMEDIATION_NOTIFY__WEBHOOK_URL": receiver.url,
    }
    with docker_stack(pg_admin, "storm", **extra) as stack:
        app = stack.project.run(CRASH, start=False)
        proxy = StormProxy(app.name, copies=1000, spread=2.0).start()
        try:
            env = {**stack.env, "REMEDIATION_CONTAINERS__DOCKER_URL": proxy.url}
            watcher = WatchProcess(env, "storm", sources=["docker"]).start()
            stack.watchers.append(watcher)
            wait_for(lambda: watcher.active("docker"), 30, 0.05, "the watcher listening")
            stack.caught_up("storm")  # the storm meets a quiet resource
            started = time.time()
            app.start()
            assert proxy.stormed.wait(60), "the die event never came"

            def gave_up() -> bool:
                return any(r["outcome"] == "failed" for r in stack.restarts(app.name))

            wait_for(gave_up, 60, 0.2, "restart_container to give up")
            checks = _settled(stack, app.name)
            elapsed = time.time() - started
        finally:
            proxy.stop()
        runs = stack.restarts(app.name)
        stats = stack.stats()
    receiver.stop()
    assert proxy.sent == 1000
    assert stats["received"] >= 1000, stats
    assert 2 <= checks <= elapsed / 1.0 + 3, (checks, elapsed)  # MIN_INTERVAL_SECONDS: 1
    assert stats["coalesced"] >= 1000 - checks, stats
    assert [r["outcome"] for r in runs] == ["succeeded"] * 3 + ["failed"], runs
    mine = [b for b in receiver.bodies if app.name in b["text"]]
    assert [b["kind"] for b in mine] == ["action_failed"], mine


def _settled(stack: DockerStack, name: str, quiet: float = 3.0) -> int:
    """Event-caused checks of the container, once none came for `quiet` seconds."""

    def count() -> int:
        rows = stack.rows(
            "SELECT count(*) AS n FROM check_runs WHERE purpose = 'detect'"
            " AND cause->>'resource' = %s",
            f"docker/{name}",
        )
        return int(rows[0]["n"])

    last, since = count(), time.monotonic()
    while time.monotonic() - since < quiet:
        time.sleep(0.2)
        now = count()
        if now != last:
            last, since = now, time.monotonic()
    return last


def test_a_dropped_stream_reconnects_and_its_catch_up_finds_what_died_meanwhile(
    stack: DockerStack,
) -> None:
    """The engine's event stream cut and the engine unreachable for a while (a proxy in front
    of it plays the restart); a container killed meanwhile sends no event the watcher can
    see. Once the engine answers, the watcher connects again (back-off) and its catch-up
    sweep finds the container down: restarted and verified."""
    app = stack.project.run(SERVE)
    stack.project.wait_status(app, "running")
    proxy = StormProxy("none", copies=1).start()
    try:
        watcher = stack.watcher(
            "wr",
            REMEDIATION_CONTAINERS__DOCKER_URL=proxy.url,
            REMEDIATION_WATCH__RECONNECT_MIN_SECONDS="0.2",
        )
        stack.caught_up("wr")
        proxy.outage()
        time.sleep(0.5)
        killed = stack.kill(app)  # the real engine: only the watcher's way to it is down
        time.sleep(2)
        assert stack.project.status(app) == "exited"  # nobody saw it
        proxy.recover()
        row = stack.verified_after(app.name, killed, timeout=60)
        assert (row["outcome"], row["verification"]) == ("succeeded", "recovered"), row
        assert row["cause"]["kind"] == "catch_up" and row["cause"]["watcher"] == "wr", row
        assert stack.stats()["reconnects"] >= 1
        assert "event stream dropped; reconnecting" in watcher.log()
        watcher.stop()
    finally:
        proxy.stop()
