"""Runbooks 000 "Docker management" and 001 "System health / overload": compose containers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Literal

import redis
from pydantic import Field

from remediation.clients import docker as docker_client
from remediation.clients.docker import compose_containers, state
from remediation.context import CheckContext
from remediation.findings import Finding, Severity
from remediation.params import CheckParams
from remediation.redact import redact_text
from remediation.registry import check
from remediation.restarts import given_up
from remediation.settings import ContainerSettings

CHECK = "docker_containers"
STATS_WORKERS = 8
"""Containers sampled at once: a stats sample takes about a second per container."""
MEMORY_NEAR_LIMIT_PERCENT = 98.0
"""Memory past this share of the limit is high: the kernel's OOM killer is next."""
DOWN_STATES = ("exited", "dead", "restarting")
RESTARTED_KINDS = ("container_down", "container_unhealthy")
"""What restart_container fixes; once it gave up, these become container_given_up."""


class DockerContainersParams(CheckParams):
    target: Literal["docker"] = Field("docker", description="the engine at CONTAINERS__DOCKER_URL")
    container: str | None = Field(
        None,
        pattern=docker_client.CONTAINER_NAME,
        max_length=128,
        description="only this container of the project, state only (what an event names)",
    )

    @property
    def scope(self) -> str:
        return f"{self.target}/{self.container}" if self.container else self.target


def _finding(subject: str, kind: str, severity: Severity, **kw: Any) -> Finding:
    return Finding(
        check=CHECK, target="docker", subject=subject, kind=kind, severity=severity, **kw
    )


@check(CHECK)
def docker_containers(ctx: CheckContext, params: DockerContainersParams) -> list[Finding]:
    """Containers of the compose project that are down, unhealthy or overloaded (runbook 000/001).

    Exited, dead or restarting containers are container_down (high; a clean exit 0 is a
    warning: it may be a finished job), fixed by restart_container with a back-off.
    A failing HEALTHCHECK is container_unhealthy (high). Either one, high, on a container
    restart_container gave up on (its flap limit) is container_given_up (high) instead:
    restarts did not help; the hard reboot (recreate_service, opt-in) is the next step. CPU above
    REMEDIATION_CONTAINERS__CPU_HIGH_PERCENT (100 = one core) or memory above
    MEMORY_HIGH_PERCENT of its limit is container_overloaded (warning; high when both, or
    memory within 2 % of the limit). An engine that does not answer is docker_unreachable.

    With ``container`` (what `remediation watch` sends for a Docker event) only that container
    of the project is looked at, and only its state (down, unhealthy, given up): no stats
    sample, which takes a second; the sweep looks at the load. A name outside the project
    finds nothing."""
    cfg = ctx.settings.containers
    project = cfg.project
    if not project:
        return [
            _finding(
                "",
                "docker_containers_unconfigured",
                Severity.INFO,
                summary="no compose project watched: set REMEDIATION_CONTAINERS__PROJECT",
            )
        ]
    try:
        dc = docker_client.client(ctx.settings)
        containers = compose_containers(dc, project, name=params.container)
        running = [c for c in containers if c.status == "running" and params.container is None]
        with ThreadPoolExecutor(min(STATS_WORKERS, len(running) or 1)) as pool:
            samples = list(pool.map(_sample, running))
    except docker_client.FAILURES as exc:
        return [_unreachable(cfg, project, exc)]
    found = [f for c in containers for f in (_down(c), _unhealthy(c)) if f is not None]
    found = _given_up(ctx, found)
    found += [f for c, s in zip(running, samples, strict=True) if (f := _overloaded(cfg, c, s))]
    return found


def _unreachable(cfg: ContainerSettings, project: str, exc: BaseException) -> Finding:
    error = redact_text(f"{type(exc).__name__}: {exc}")[:500]
    return _finding(
        "",
        "docker_unreachable",
        Severity.HIGH,
        evidence={"docker_url": redact_text(cfg.docker_url), "project": project, "error": error},
        summary=f"Docker engine at {redact_text(cfg.docker_url)} does not answer: {error}",
    )


def _down(c: Any) -> Finding | None:
    st = state(c)
    status = st.get("Status", c.status)
    if status not in DOWN_STATES:
        return None
    code = st.get("ExitCode")
    oom = " (OOM-killed)" if st.get("OOMKilled") else ""
    how = f"{status} with exit code {code}{oom}"
    if status == "restarting":
        how = "restarting (its restart policy loops)"
    clean = status == "exited" and code == 0
    return _finding(
        c.name,
        "container_down",
        Severity.WARNING if clean else Severity.HIGH,
        observed=status,
        threshold="running",
        evidence=_evidence(
            c,
            exit_code=code,
            oom_killed=st.get("OOMKilled"),
            finished_at=st.get("FinishedAt"),
            restart_count=c.attrs.get("RestartCount"),
        ),
        summary=f"container {c.name} is {how}",
    )


def _unhealthy(c: Any) -> Finding | None:
    health = state(c).get("Health") or {}
    if health.get("Status") != "unhealthy":
        return None
    last = (health.get("Log") or [{}])[-1]
    return _finding(
        c.name,
        "container_unhealthy",
        Severity.HIGH,
        observed="unhealthy",
        threshold="healthy",
        evidence=_evidence(
            c,
            failing_streak=health.get("FailingStreak"),
            last_exit_code=last.get("ExitCode"),
            last_output=str(last.get("Output", ""))[:300],
        ),
        summary=(
            f"container {c.name} fails its healthcheck "
            f"({health.get('FailingStreak')} times in a row)"
        ),
    )


def _given_up(ctx: CheckContext, found: list[Finding]) -> list[Finding]:
    """High down/unhealthy findings of containers restart_container gave up on, as one
    container_given_up each: the playbook then stops asking for restarts it would refuse.
    Without the state Redis the findings stay as they are (restart_container decides)."""
    troubled = sorted({f.subject for f in found if _restarted(f)})
    try:
        gave_up = given_up(ctx.state, troubled)
    except redis.RedisError as exc:
        ctx.log.warning("restart state unavailable; give-ups not reported", error=str(exc))
        return found
    out: list[Finding] = []
    for f in found:
        if not _restarted(f) or f.subject not in gave_up:
            out.append(f)
        elif all(o.subject != f.subject or o.kind != "container_given_up" for o in out):
            out.append(_given_up_finding(f, gave_up[f.subject]))
    return out


def _restarted(f: Finding) -> bool:
    """A finding the playbook answers with restart_container."""
    return f.kind in RESTARTED_KINDS and f.severity == Severity.HIGH


def _given_up_finding(f: Finding, at: float) -> Finding:
    when = datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")
    return _finding(
        f.subject,
        "container_given_up",
        Severity.HIGH,
        observed=f.observed,
        threshold=f.threshold,
        evidence={**f.evidence, "finding": f.kind, "given_up_at": when},
        summary=(
            f"{f.summary}; restart_container gave up on it at {when}: "
            f"hard reboot (recreate_service) or an operator is next"
        ),
    )


def _sample(c: Any) -> dict[str, Any]:
    """One stats sample (the engine waits for two readings to give a CPU delta).

    A container that stops or goes away while sampled has no load to report."""
    try:
        stats: dict[str, Any] = c.stats(stream=False)
    except docker_client.ERRORS:
        return {}
    return stats


def cpu_percent(stats: dict[str, Any]) -> float:
    """CPU use as `docker stats` shows it: 100 % is one core fully busy."""
    cpu, pre = stats.get("cpu_stats") or {}, stats.get("precpu_stats") or {}
    used = (cpu.get("cpu_usage") or {}).get("total_usage", 0) - (pre.get("cpu_usage") or {}).get(
        "total_usage", 0
    )
    system = cpu.get("system_cpu_usage", 0) - pre.get("system_cpu_usage", 0)
    cores = cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {}).get("percpu_usage") or [1])
    if used <= 0 or system <= 0:
        return 0.0
    return float(used / system * cores * 100)


def memory_percent(stats: dict[str, Any]) -> float:
    """Memory use against the limit as `docker stats` shows it (page cache not counted)."""
    mem = stats.get("memory_stats") or {}
    limit = mem.get("limit") or 0
    if not limit:
        return 0.0
    detail = mem.get("stats") or {}
    cache = detail.get("total_inactive_file", detail.get("inactive_file", 0))  # cgroup v1 / v2
    return float(max(mem.get("usage", 0) - cache, 0) / limit * 100)


def _overloaded(cfg: ContainerSettings, c: Any, stats: dict[str, Any]) -> Finding | None:
    cpu, mem = round(cpu_percent(stats), 1), round(memory_percent(stats), 1)
    over = [
        n
        for n, v, t in (
            ("cpu", cpu, cfg.cpu_high_percent),
            ("memory", mem, cfg.memory_high_percent),
        )
        if v > t
    ]
    if not over:
        return None
    high = len(over) == 2 or mem >= MEMORY_NEAR_LIMIT_PERCENT
    first = over[0]
    return _finding(
        c.name,
        "container_overloaded",
        Severity.HIGH if high else Severity.WARNING,
        observed=cpu if first == "cpu" else mem,
        threshold=cfg.cpu_high_percent if first == "cpu" else cfg.memory_high_percent,
        evidence=_evidence(c, cpu_percent=cpu, memory_percent=mem, over=over),
        summary=f"container {c.name} is overloaded: cpu {cpu}%, memory {mem}%",
    )


def _evidence(c: Any, **extra: Any) -> dict[str, Any]:
    labels = c.labels
    return {
        "project": labels.get(docker_client.PROJECT_LABEL),
        "service": labels.get(docker_client.SERVICE_LABEL),
        "number": labels.get(docker_client.NUMBER_LABEL),
        "id": c.id[:12],
        **extra,
    }
