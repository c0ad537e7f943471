"""The worker's metrics: a real prefork worker, real HTTP scrapes, real breakers, promtool."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from celery import Celery
from prometheus_client import values
from prometheus_client.parser import text_string_to_metric_families

from remediation import metrics
from remediation.guards.breaker import Breaker
from remediation.settings import BreakerSettings, Settings
from tests.support.base import free_port, listening, wait_for
from tests.support.env import IN_CI, process_env
from tests.support.http_doubles import WebhookReceiver
from tests.support.processes import WorkerProcess
from tests.support.services import RedisServer, as_url, scratch_database

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "remediation-alerts.yml"
# broker, results and state on databases no other test's worker consumes from
BROKER_DB, RESULT_DB, STATE_DB = 5, 6, 4


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics -> {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def children(pid: int) -> set[int]:
    """The pool children of a worker's main process (from /proc)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:  # a thread may exit between the listing and the read: it has no children then
            found |= {int(p) for p in (task / "children").read_text().split()}
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


def listening_inode(port: int) -> str:
    """The socket inode listening on 127.0.0.1:port (from /proc/net/tcp)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":
            return fields[9]
    raise AssertionError(f"nothing listens on {port}")


def open_files(pid: int) -> set[str]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            found.add(os.readlink(fd))
    return found


def pids_with_counters(directory: Path) -> set[int]:
    return {int(p.stem.rsplit("_", 1)[1]) for p in directory.glob("counter_*.db")}


@pytest.fixture(scope="module")
def metrics_audit(pg_admin: str) -> Iterator[str]:
    with scratch_database(pg_admin, "rem_metrics") as dsn:
        yield as_url(dsn)


@pytest.fixture
def worker_env(
    redis_server: RedisServer, metrics_audit: str, webhook: WebhookReceiver, tmp_path: Path
) -> dict[str, str]:
    for db in (BROKER_DB, RESULT_DB, STATE_DB):
        redis_server.empty(db)
    return process_env(
        redis_server,
        metrics_audit,
        REMEDIATION_STATE_REDIS_URL=redis_server.url(STATE_DB),
        REMEDIATION_BROKER_URL=redis_server.url(BROKER_DB),
        REMEDIATION_RESULT_BACKEND=redis_server.url(RESULT_DB),
        REMEDIATION_METRICS__PORT=str(free_port()),
        REMEDIATION_METRICS__MULTIPROC_DIR=str(tmp_path / "metrics"),
        REMEDIATION_NOTIFY__WEBHOOK_URL=webhook.url,
        # no disk is fuller than 100 %: host_disk finds nothing, so no action is fanned out
        REMEDIATION_HOST__DISK_WARNING_PERCENT="100",
        REMEDIATION_HOST__DISK_HIGH_PERCENT="100",
        REMEDIATION_HOST__DISK_CRITICAL_PERCENT="100",
    )


@pytest.fixture
def client(worker_env: dict[str, str]) -> Iterator[Celery]:
    app = Celery(
        broker=worker_env["REMEDIATION_BROKER_URL"],
        backend=worker_env["REMEDIATION_RESULT_BACKEND"],
    )
    yield app
    app.close()


@pytest.fixture
def worker(worker_env: dict[str, str]) -> Iterator[WorkerProcess]:
    proc = WorkerProcess(worker_env, "metrics", concurrency=2)
    try:
        proc.start()
        yield proc
    finally:
        proc.stop()


def send_batch(client: Celery, checks: int, notifies: int, tag: str) -> None:
    """Send checks and notifications at once and wait for every one of them."""
    results = [
        client.send_task("remediation.check.host_disk", kwargs={"target": "self"})
        for _ in range(checks)
    ]
    results += [
        client.send_task(
            "remediation.act.notify",
            kwargs={"text": f"metrics test {tag}-{i}", "incident": f"m-{tag}-{i}"},
        )
        for i in range(notifies)
    ]
    for res in results:
        res.get(timeout=60)


def test_counts_aggregate_across_children_and_survive_a_killed_child(
    worker: WorkerProcess, worker_env: dict[str, str], client: Celery, redis_server: RedisServer
) -> None:
    """Counts over HTTP equal the tasks sent by both children, also after one is SIGKILLed."""
    assert worker.proc is not None
    port = int(worker_env["REMEDIATION_METRICS__PORT"])
    directory = Path(worker_env["REMEDIATION_METRICS__MULTIPROC_DIR"])
    assert f"metrics endpoint listening on http://127.0.0.1:{port}/metrics" in worker.log()
    started = time.time()
    sent_checks = sent_notifies = 0
    kids = children(worker.proc.pid)
    assert len(kids) == 2
    for batch in range(10):  # the pool decides who runs what: send until both children did
        send_batch(client, 6, 4, f"a{batch}")
        sent_checks, sent_notifies = sent_checks + 6, sent_notifies + 4
        if kids <= pids_with_counters(directory):
            break
    assert kids <= pids_with_counters(directory), "both pool children ran tasks"
    samples = scrape(port)
    assert value(samples, "remediation_checks_total", check="host_disk", status="ok") == sent_checks
    assert (
        value(samples, "remediation_check_duration_seconds_count", check="host_disk") == sent_checks
    )
    sent_by_hand = {"check": "host_disk", "by": "call"}  # no slot or event header
    assert value(samples, "remediation_check_causes_total", **sent_by_hand) == sent_checks
    assert (
        value(samples, "remediation_actions_total", action="notify", outcome="succeeded")
        == sent_notifies
    )
    admitted = {"action": "notify", "decision": "admitted", "guard": "none"}
    assert value(samples, "remediation_guard_decisions_total", **admitted) == sent_notifies
    assert value(samples, "remediation_worker_up") == 1
    last = value(samples, "remediation_check_last_success_timestamp_seconds", check="host_disk")
    assert last is not None and started - 1 <= last <= time.time() + 1

    victim = sorted(kids)[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(children(worker.proc.pid) - {victim}) == 2, 30, 0.2, "a new pool child")  # type: ignore[union-attr]
    samples = scrape(port)
    assert value(samples, "remediation_checks_total", check="host_disk", status="ok") == sent_checks
    assert (
        value(samples, "remediation_actions_total", action="notify", outcome="succeeded")
        == sent_notifies
    )

    send_batch(client, 4, 2, "after-kill")
    samples = scrape(port)
    assert (
        value(samples, "remediation_checks_total", check="host_disk", status="ok")
        == sent_checks + 4
    )
    assert (
        value(samples, "remediation_actions_total", action="notify", outcome="succeeded")
        == sent_notifies + 2
    )
    assert victim in pids_with_counters(directory), "the killed child's file is still counted"
    # a child forked after the endpoint started holds neither its socket nor the dir lock
    (replacement,) = children(worker.proc.pid) - kids
    held = open_files(replacement)
    assert f"socket:[{listening_inode(port)}]" in open_files(worker.proc.pid)
    assert f"socket:[{listening_inode(port)}]" not in held
    assert str(directory / ".worker.lock") not in held


def test_breaker_states_are_read_at_scrape_time(
    worker: WorkerProcess, worker_env: dict[str, str], redis_server: RedisServer
) -> None:
    """Closed, half-open and open breakers show as 0, 1 and 2; no restart needed."""
    port = int(worker_env["REMEDIATION_METRICS__PORT"])
    state = redis.Redis.from_url(worker_env["REMEDIATION_STATE_REDIS_URL"])
    cfg = BreakerSettings(minimum_calls=1, wait_seconds=1, failure_rate_threshold=0.5)
    closed = Breaker(state, "vacuum_analyze:app", cfg)
    closed.record(closed.acquire(), success=True)
    opened = Breaker(
        state, "restart_container:docker", cfg.model_copy(update={"wait_seconds": 600})
    )
    assert opened.record(opened.acquire(), success=False) == "opened"
    trial = Breaker(state, "flush_cache:self", cfg)
    assert trial.record(trial.acquire(), success=False) == "opened"
    time.sleep(1.1)
    assert trial.acquire().state == "half_open"
    samples = scrape(port)
    got = {
        b: value(samples, "remediation_breaker_state", breaker=b)
        for b in ("vacuum_analyze:app", "restart_container:docker", "flush_cache:self")
    }
    assert got == {"vacuum_analyze:app": 0, "restart_container:docker": 2, "flush_cache:self": 1}
    assert value(samples, "remediation_state_redis_up") == 1
    state.close()


def test_second_worker_on_the_same_directory_leaves_it_alone(
    worker: WorkerProcess, worker_env: dict[str, str], client: Celery
) -> None:
    """A second worker cannot take a directory in use: it serves nothing and wipes nothing."""
    port = int(worker_env["REMEDIATION_METRICS__PORT"])
    send_batch(client, 2, 0, "before-second")
    before = value(scrape(port), "remediation_checks_total", check="host_disk", status="ok")
    assert before == 2
    other_port = free_port()
    second = WorkerProcess({**worker_env, "REMEDIATION_METRICS__PORT": str(other_port)}, "second")
    try:
        second.start()
        assert "metrics directory is used by another running worker" in second.log()
        assert not listening(other_port)
        assert (
            value(scrape(port), "remediation_checks_total", check="host_disk", status="ok")
            == before
        )
    finally:
        second.stop()


def test_last_success_survives_a_restart(
    worker: WorkerProcess, worker_env: dict[str, str], client: Celery, metrics_audit: str
) -> None:
    """A restarted worker wipes the directory but seeds last-success times from the audit."""
    port = int(worker_env["REMEDIATION_METRICS__PORT"])
    send_batch(client, 1, 0, "before-restart")
    worker.stop()
    with psycopg.connect(metrics_audit) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM max(finished_at))::float8 FROM check_runs"
            " WHERE check_name = 'host_disk' AND status = 'ok'"
        ).fetchone()
    assert row is not None and row[0] is not None
    again = WorkerProcess(worker_env, "metrics-again", concurrency=1)
    try:
        again.start()
        samples = wait_for(lambda: listening(port) and scrape(port), 10, 0.1, "the endpoint")
        assert value(samples, "remediation_checks_total", check="host_disk", status="ok") is None
        last = value(samples, "remediation_check_last_success_timestamp_seconds", check="host_disk")
        assert last == pytest.approx(row[0], abs=0.001)
    finally:
        again.stop()


def test_disabled_metrics_serve_nothing(worker_env: dict[str, str], tmp_path: Path) -> None:
    """REMEDIATION_METRICS__ENABLED=false: no endpoint, no files, tasks still run."""
    env = {**worker_env, "REMEDIATION_METRICS__ENABLED": "false"}
    port = int(env["REMEDIATION_METRICS__PORT"])
    proc = WorkerProcess(env, "nometrics", concurrency=1)
    try:
        proc.start()
        app = Celery(
            broker=env["REMEDIATION_BROKER_URL"], backend=env["REMEDIATION_RESULT_BACKEND"]
        )
        app.send_task("remediation.check.host_disk", kwargs={}).get(timeout=60)
        app.close()
        assert not listening(port)
        assert not Path(env["REMEDIATION_METRICS__MULTIPROC_DIR"]).exists()
    finally:
        proc.stop()


# --- in this process ---------------------------------------------------------------------


@pytest.fixture
def local_metrics() -> Iterator[None]:
    """Each test starts with fresh in-process metrics and leaves the module as it found it."""
    metrics._set_mode("local")
    yield
    metrics.stop()
    metrics._set_mode("local")
    os.environ.pop(metrics.ENV_DIR, None)


def test_api_records_in_process_and_bounds_labels(local_metrics: None) -> None:
    """Outside a worker the calls record locally; free text never becomes a label value."""
    metrics.check_run("host_disk", "ok", 0.2)
    metrics.check_run("host_disk", "error", 0.1)
    metrics.finding("host_disk", "host_disk_full", "high")
    metrics.guard_decision("cleanup_disk", "suppressed", "cooldown")
    metrics.action_run("cleanup_disk", "succeeded", 1.5)
    metrics.action_run("cleanup_disk", "dry_run", None)
    metrics.verification("cleanup_disk", "recovered")
    metrics.guard_decision("notify", "suppressed", "reason with spaces and a p4ss=word")
    reg = metrics.registry()
    get = reg.get_sample_value
    assert get("remediation_checks_total", {"check": "host_disk", "status": "ok"}) == 1
    assert get("remediation_checks_total", {"check": "host_disk", "status": "error"}) == 1
    finding = {"check": "host_disk", "kind": "host_disk_full", "severity": "high"}
    assert get("remediation_findings_total", finding) == 1
    assert get("remediation_action_duration_seconds_count", {"action": "cleanup_disk"}) == 1
    assert (
        get("remediation_verifications_total", {"action": "cleanup_disk", "verdict": "recovered"})
        == 1
    )
    suppressed = {"action": "notify", "decision": "suppressed", "guard": "other"}
    assert get("remediation_guard_decisions_total", suppressed) == 1
    assert get("remediation_check_last_success_timestamp_seconds", {"check": "host_disk"}) == (
        pytest.approx(time.time(), abs=5)
    )


def test_calls_never_raise(local_metrics: None, tmp_path: Path) -> None:
    """A broken metrics directory (removed under a worker) costs metrics, never the task."""
    directory = tmp_path / "gone"
    directory.mkdir()
    metrics._STATE.directory = directory
    metrics._set_mode("multiprocess")
    shutil.rmtree(directory)
    metrics.check_run("host_disk", "ok", -1.0)
    metrics.action_run("notify", "succeeded", float("nan"))
    metrics.finding(None, None, None)  # type: ignore[arg-type]
    assert values.ValueClass is not values.MutexValue


def test_disabled_calls_are_noops(local_metrics: None, settings_env: Any) -> None:
    """With metrics disabled, prepare_worker turns every call into a no-op and serves nothing."""
    s: Settings = settings_env(REMEDIATION_METRICS__ENABLED="false")
    metrics.prepare_worker(s)
    assert metrics.start_server(s) is None
    metrics.check_run("host_disk", "ok", 0.1)
    assert metrics._STATE.metrics is None


def test_wipe_removes_only_prometheus_files(tmp_path: Path) -> None:
    """Only <type>_<pid>.db files go; other files, folders and symlinks stay."""
    keep = ["notes.db", "counter_abc.db", ".worker.lock", "counter_1.db.bak"]
    gone = ["counter_12.db", "histogram_7.db", "gauge_max_3.db", "gauge_livesum_9.db"]
    for name in keep + gone:
        (tmp_path / name).write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "counter_5.db").write_text("x")
    outside = tmp_path / "sub" / "target.txt"
    outside.write_text("x")
    (tmp_path / "counter_99.db").symlink_to(outside)
    assert metrics.wipe(tmp_path) == len(gone)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*keep, "sub", "counter_99.db"])
    assert outside.exists() and (tmp_path / "sub" / "counter_5.db").exists()


# --- the alerting rules -------------------------------------------------------------------

UNIT_TEST = """
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'remediation_check_last_success_timestamp_seconds{{check="host_memory",instance="w"}}'
        values: '0+60x5 300x20'
      - series: 'remediation_worker_up{{instance="w"}}'
        values: '1x5 _x20'
    alert_rule_test:
      - eval_time: 4m
        alertname: RemediationCheckNotSucceeding
        exp_alerts: []
      - eval_time: 15m
        alertname: RemediationCheckNotSucceeding
        exp_alerts:
          - exp_labels: {{severity: critical, check: host_memory, instance: w}}
            exp_annotations:
              summary: 'Check host_memory has not succeeded for 10m 0s'
              description: 'Look at `remediation history` and the worker log; `remediation run host_memory` runs it by hand.'
      - eval_time: 20m
        alertname: RemediationWorkerAbsent
        exp_alerts:
          - exp_labels: {{severity: critical}}
            exp_annotations:
              summary: No remediation worker is exporting metrics
              description: Start one (make run) or check the scrape target; checks and fixes are not running.
"""


def test_alert_rules_pass_promtool(tmp_path: Path) -> None:
    """The shipped rules load in promtool and fire on a stale check and a vanished worker."""
    promtool = shutil.which("promtool")
    if promtool is None:
        if IN_CI:
            pytest.fail("promtool (Debian package prometheus) is required in CI")
        pytest.skip("promtool not installed")
    check = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    test_file = tmp_path / "alerts_test.yml"
    test_file.write_text(UNIT_TEST.format(rules=RULES))
    unit = subprocess.run(
        [promtool, "test", "rules", str(test_file)], capture_output=True, text=True, timeout=60
    )
    assert unit.returncode == 0, unit.stdout + unit.stderr
