"""`remediation serve`: one HTTP service (FastAPI on uvicorn) for what comes from outside:
Alertmanager's webhook (remediation.serve.intake) and the web console
(remediation.serve.console, under /console); approvals (remediation.serve.approvals_api:
the API and the signed links)."""

from __future__ import annotations

from typing import cast

from remediation.runner import Runner
from remediation.serve.app import create_app
from remediation.serve.guard import TokenAuth
from remediation.serve.intake import Intake, check_rules
from remediation.settings import Settings

__all__ = ["build", "run"]


def build(settings: Settings, runner: Runner | None = None) -> TokenAuth:
    """The application, its runner sending action tasks through the broker (trigger headers
    signed as the worker's are). ConfigError when the alert rules are wrong."""
    from remediation.registry import load_all

    load_all()
    check_rules(settings)
    if runner is None:
        from remediation import signing
        from remediation.celery_app import get_app
        from remediation.tasks import dispatch_via

        runner = Runner(settings, dispatch_via(get_app(), signing.key_of(settings)))
    from remediation.approvals import Approvals, SendApproved
    from remediation.serve.approvals_api import approvals_router
    from remediation.serve.console import console_router

    approvals = Approvals(settings, runner.store, cast(SendApproved, runner.dispatch))
    routers = [approvals_router(approvals), console_router(settings, approvals)]
    return create_app(settings, Intake(settings, runner, approvals), routers=routers)


def run(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    """Serve until interrupted (uvicorn, one process; sync routes run in its thread pool)."""
    import uvicorn

    app = build(settings)
    uvicorn.run(
        app,
        host=host or settings.serve.host,
        port=port or settings.serve.port,
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=10,
    )
