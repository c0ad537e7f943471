"""The worker's own Prometheus metrics, correct across prefork children.

Celery's prefork pool runs tasks in child processes, so a plain in-process registry would
show one child's counts at random. prometheus_client's multiprocess mode gives every
process its own memory-mapped file in ``REMEDIATION_METRICS__MULTIPROC_DIR``; the worker's
main process serves the sum of all files (``MultiProcessCollector``), plus what it reads at
scrape time: circuit breaker states from the state Redis, ``remediation_worker_up`` and
build info. Files of children that exited (even by SIGKILL) are kept, so their counts stay
in the totals; only their live-gauge files are dropped (``mark_process_dead``).

Process roles:

* worker main process: ``worker_init`` -> :func:`prepare_worker` (lock and wipe the
  directory, switch to multiprocess mode before any child is forked);
  ``worker_ready`` -> :func:`start_server`; ``worker_shutdown`` -> :func:`stop`.
* worker children: record through the five functions below into their own files.
* anything else (CLI, tests): the same functions record into an in-process registry
  (:func:`registry`), never exported.

Every public function is safe to call in any process and never raises: metrics must not
break the remediation they describe. Label values are names from the code (checks,
actions, guards) and fixed outcome words; anything else is reported as ``other``.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, ParamSpec

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, values
from prometheus_client.exposition import start_http_server

from remediation.logging import get_logger
from remediation.metrics_scrape import OWN_FILE, StateCollector, label
from remediation.settings import Settings

ENV_DIR = "PROMETHEUS_MULTIPROC_DIR"
"""remediation_breaker_state values."""

CHECK_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
ACTION_BUCKETS = (0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)

# prometheus_client names its files <type>[_<gauge mode>]_<pid>.db: only those are wiped

Mode = Literal["local", "off", "multiprocess"]
P = ParamSpec("P")
_mp: Any = multiprocess  # untyped module
_values: Any = values
log = get_logger("remediation.metrics")


@dataclass
class _State:
    mode: Mode = "local"
    directory: Path | None = None
    lock: IO[str] | None = None
    server: Any = None
    port: int | None = None
    local_registry: CollectorRegistry | None = None
    metrics: _Metrics | None = None
    errors_logged: int = 0


class _Metrics:
    """The metric objects, created after the mode is known (values bind to files then)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        r = registry
        self.checks = Counter(
            "remediation_checks",
            "Check runs by status (ok, error, rejected)",
            ["check", "status"],
            registry=r,
        )
        self.check_causes = Counter(
            "remediation_check_causes",
            "Check runs by what caused them: event (remediation watch), beat, call",
            ["check", "by"],
            registry=r,
        )
        self.check_duration = Histogram(
            "remediation_check_duration_seconds",
            "Check run duration",
            ["check"],
            buckets=CHECK_BUCKETS,
            registry=r,
        )
        self.last_success = Gauge(
            "remediation_check_last_success_timestamp_seconds",
            "Unix time of the check's last successful run (the dead-man's switch)",
            ["check"],
            multiprocess_mode="max",
            registry=r,
        )
        self.findings = Counter(
            "remediation_findings",
            "Findings reported by checks",
            ["check", "kind", "severity"],
            registry=r,
        )
        self.decisions = Counter(
            "remediation_guard_decisions",
            "Guard decisions on action calls (admitted, suppressed, ...)",
            ["action", "decision", "guard"],
            registry=r,
        )
        self.actions = Counter(
            "remediation_actions", "Action calls by outcome", ["action", "outcome"], registry=r
        )
        self.action_duration = Histogram(
            "remediation_action_duration_seconds",
            "Duration of actions that ran",
            ["action"],
            buckets=ACTION_BUCKETS,
            registry=r,
        )
        self.alerts = Counter(
            "remediation_alerts",
            "Alertmanager alerts by intake outcome (received, mapped, duplicate, unmapped,"
            " refused, resolved)",
            ["outcome"],
            registry=r,
        )
        self.intake_rejected = Counter(
            "remediation_intake_rejected",
            "HTTP requests refused before anything ran (unauthorized, too_large, invalid)",
            ["reason"],
            registry=r,
        )
        self.verifications = Counter(
            "remediation_verifications",
            "Verification verdicts after an action",
            ["action", "verdict"],
            registry=r,
        )


_STATE = _State()


def _safe(fn: Callable[P, None]) -> Callable[P, None]:
    """Never let a metrics problem reach the caller; log the first few."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        if _STATE.mode == "off":
            return
        try:
            fn(*args, **kwargs)
        except Exception as exc:
            if _STATE.errors_logged < 5:
                _STATE.errors_logged += 1
                log.warning("metrics not recorded", metric=fn.__name__, error=repr(exc))

    return wrapper


def _m() -> _Metrics:
    if _STATE.metrics is None:
        if _STATE.mode == "multiprocess":
            _STATE.metrics = _Metrics(None)  # served through MultiProcessCollector
        else:
            _STATE.local_registry = CollectorRegistry()
            _STATE.metrics = _Metrics(_STATE.local_registry)
    return _STATE.metrics


# --- the API the runner calls ----------------------------------------------------------


@_safe
def check_run(check: str, status: str, duration_s: float) -> None:
    """A check finished with status ok | error | rejected."""
    m, name = _m(), label(check)
    m.checks.labels(name, label(status)).inc()
    m.check_duration.labels(name).observe(max(0.0, duration_s))
    if status == "ok":
        m.last_success.labels(name).set(time.time())


@_safe
def check_cause(check: str, by: str) -> None:
    """A check run started, caused by an event, a beat slot or a call (remediation.causes)."""
    _m().check_causes.labels(label(check), label(by)).inc()


@_safe
def finding(check: str, kind: str, severity: str) -> None:
    """A check reported a finding."""
    _m().findings.labels(label(check), label(kind), label(severity)).inc()


@_safe
def guard_decision(action: str, decision: str, guard: str) -> None:
    """The guards decided on an action call."""
    _m().decisions.labels(label(action), label(decision), label(guard or "none")).inc()


@_safe
def action_run(action: str, outcome: str, duration_s: float | None) -> None:
    """An action call ended with this outcome."""
    m, name = _m(), label(action)
    m.actions.labels(name, label(outcome)).inc()
    if duration_s is not None:
        m.action_duration.labels(name).observe(max(0.0, duration_s))


@_safe
def verification(action: str, verdict: str) -> None:
    """An action's fix was verified (recovered | not_recovered | error)."""
    _m().verifications.labels(label(action), label(verdict)).inc()


@_safe
def alert(outcome: str) -> None:
    """An Alertmanager alert was received, or what became of it."""
    _m().alerts.labels(label(outcome)).inc()


@_safe
def intake_rejected(reason: str) -> None:
    """`remediation serve` refused a request (unauthorized | too_large | invalid)."""
    _m().intake_rejected.labels(label(reason)).inc()


def registry() -> CollectorRegistry:
    """What this process exposes: the multiprocess view in a worker, else local values."""
    if _STATE.mode == "multiprocess" and _STATE.directory is not None:
        reg = CollectorRegistry()
        _mp.MultiProcessCollector(reg, path=str(_STATE.directory))
        return reg
    _m()
    assert _STATE.local_registry is not None
    return _STATE.local_registry


# --- worker wiring (celery_app.py signal handlers) --------------------------------------


def prepare_worker(settings: Settings) -> None:
    """In the worker's main process, before the pool forks: own and wipe the directory."""
    cfg = settings.metrics
    if not cfg.enabled:
        _set_mode("off")
        return
    directory = Path(cfg.multiproc_dir).resolve()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # held (open, locked) for the worker's life: a second worker on this directory sees it
        lock = open(directory / ".worker.lock", "a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            log.error(
                "metrics directory is used by another running worker; metrics are off"
                " for this one (give each worker its own REMEDIATION_METRICS__MULTIPROC_DIR)",
                directory=str(directory),
            )
            _set_mode("off")
            return
        removed = wipe(directory)
    except OSError as exc:
        log.error(
            "metrics directory unusable; metrics are off", directory=str(directory), error=repr(exc)
        )
        _set_mode("off")
        return
    os.environ[ENV_DIR] = str(directory)  # children inherit it; mark_process_dead reads it
    _STATE.directory, _STATE.lock = directory, lock
    _set_mode("multiprocess")
    log.info("metrics: multiprocess mode", directory=str(directory), stale_files_removed=removed)


def _set_mode(mode: Mode) -> None:
    _STATE.mode = mode
    _STATE.metrics = None
    _STATE.local_registry = None
    # values.ValueClass is read whenever a metric value is created; prometheus_client picks
    # it from the environment at import, which is too early for settings-driven config.
    values.ValueClass = _values.MultiProcessValue() if mode == "multiprocess" else values.MutexValue


def wipe(directory: Path) -> int:
    """Delete prometheus_client's own files (``*_<pid>.db``) in directory; nothing else."""
    removed = 0
    for path in directory.iterdir():
        if OWN_FILE.match(path.name) and path.is_file() and not path.is_symlink():
            path.unlink()
            removed += 1
    return removed


def child_started() -> None:
    """In a pool child: join multiprocess mode if the parent set it up (fork or spawn).

    A forked child also drops its copies of the directory lock and the listening socket: a
    child outliving a SIGKILLed parent must not keep a restarted worker from either."""
    if _STATE.lock is not None:
        _STATE.lock.close()
        _STATE.lock = None
    if _STATE.server is not None:
        _STATE.server.socket.close()
        _STATE.server = _STATE.port = None
    directory = os.environ.get(ENV_DIR)
    if _STATE.mode == "local" and directory and os.path.isdir(directory):
        _STATE.directory = Path(directory)
        _set_mode("multiprocess")


def child_exited(pid: int) -> None:
    """A pool child ended: drop its live-gauge files; its counters stay in the totals."""
    if _STATE.mode == "multiprocess" and _STATE.directory is not None:
        with contextlib.suppress(OSError):
            _mp.mark_process_dead(pid, str(_STATE.directory))


def start_server(settings: Settings) -> int | None:
    """Serve /metrics from the worker's main process; returns the port (None: not served)."""
    if _STATE.mode != "multiprocess" or _STATE.directory is None or _STATE.server is not None:
        return None
    reg = CollectorRegistry()
    reg.register(StateCollector(settings, _STATE.directory))
    _mp.MultiProcessCollector(reg, path=str(_STATE.directory))
    _seed_last_success(settings)  # before serving: never expose a switch without its times
    cfg = settings.metrics
    try:
        server, _thread = start_http_server(cfg.port, addr=cfg.host, registry=reg)
    except OSError as exc:
        log.error("metrics endpoint could not start", host=cfg.host, port=cfg.port, error=repr(exc))
        return None
    _STATE.server, _STATE.port = server, int(server.server_address[1])
    log.info(
        f"metrics endpoint listening on http://{cfg.host}:{_STATE.port}/metrics",
        host=cfg.host,
        port=_STATE.port,
    )
    return _STATE.port


def _seed_last_success(settings: Settings) -> None:
    """Carry each check's last success over a restart (the directory was wiped)."""
    from remediation.audit.store import AuditStore

    try:
        rows = AuditStore(settings.audit_dsn.get_secret_value()).query(
            "SELECT check_name, extract(epoch FROM max(finished_at))::float8 AS at"
            " FROM check_runs WHERE status = 'ok' AND finished_at IS NOT NULL"
            " AND purpose <> 'maintenance'"  # the audit prune's own rows are no check
            " GROUP BY check_name"
        )
        gauge = _m().last_success
        for row in rows:
            gauge.labels(label(row["check_name"])).set(row["at"])
    except Exception as exc:  # the audit database may be down: the gauges fill as checks run
        log.warning("could not seed last-success times from the audit", error=repr(exc))


def stop() -> None:
    """Stop serving and release the directory (worker shutdown)."""
    if _STATE.server is not None:
        _STATE.server.shutdown()
        _STATE.server.server_close()
        _STATE.server = _STATE.port = None
    if _STATE.lock is not None:
        _STATE.lock.close()
        _STATE.lock = None


def port() -> int | None:
    """The port the endpoint listens on, once started."""
    return _STATE.port
