"""`remediation watch`: event sources that trigger the checks the moment something breaks
(README "Event sources"). remediation.watch.core runs them; each source lives under
remediation.watch.sources."""

from __future__ import annotations

from remediation.settings import Settings
from remediation.watch.events import Source


def build(settings: Settings, only: list[str] | None = None) -> tuple[list[Source], list[str]]:
    """The sources this watcher runs (REMEDIATION_WATCH__SOURCES, narrowed by ``only``), and
    why each other one does not run."""
    wanted = [s for s in settings.watch.sources if not only or s in only]
    sources: list[Source] = []
    skipped = [f"{s}: not in REMEDIATION_WATCH__SOURCES" for s in (only or []) if s not in wanted]
    for name in wanted:
        if name == "docker":
            if not settings.containers.project:
                skipped.append("docker: REMEDIATION_CONTAINERS__PROJECT is not set")
                continue
            from remediation.watch.sources.docker import DockerSource

            sources.append(DockerSource(settings))
        elif name == "logs":
            if not settings.access.logs and not settings.secrets.files:
                skipped.append(
                    "logs: neither REMEDIATION_ACCESS__LOGS nor REMEDIATION_SECRETS__FILES is set"
                )
                continue
            from remediation.watch.sources.logs import LogSource

            sources.append(LogSource(settings))
        elif name == "celery":
            from remediation.watch.sources.celery import CelerySource

            sources.append(CelerySource(settings))
    return sources, skipped
