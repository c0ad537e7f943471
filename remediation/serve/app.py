"""The `remediation serve` application: FastAPI routes behind token and body-size middleware.

``create_app`` is the one factory: routers are added with ``app.include_router`` (the
Alertmanager intake here; the approvals API and the console are further routers on the
same app, behind the same middleware)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.concurrency import run_in_threadpool

from remediation import metrics
from remediation.logging import get_logger
from remediation.metrics_scrape import ApprovalCollector
from remediation.redact import bounded_text, storable, truncated
from remediation.serve.guard import BodyLimit, TokenAuth
from remediation.serve.intake import CHECK, Intake
from remediation.serve.payload import IntakeReply, Problem, WebhookPayload
from remediation.settings import Settings

log = get_logger("remediation.serve")
# Documents the scheme in the OpenAPI description; TokenAuth enforces it before any route.
bearer = HTTPBearer(auto_error=False, description="a token from REMEDIATION_SERVE__TOKENS")
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "no valid bearer token"},
    413: {"model": Problem, "description": "body over REMEDIATION_SERVE__MAX_BODY_BYTES"},
    422: {"model": Problem, "description": "not an Alertmanager v4 webhook payload"},
    503: {"model": Problem, "description": "state or audit unavailable; retry later"},
}


def alerts_router(intake: Intake) -> APIRouter:
    router = APIRouter(tags=["alerts"])

    @router.post("/alerts", response_model=IntakeReply, responses=ERRORS)
    def post_alerts(payload: WebhookPayload, _: Annotated[Any, Depends(bearer)]) -> IntakeReply:
        """Alertmanager's webhook (payload version 4). Mapped firing alerts run the playbook
        once per occurrence; unmapped ones are audited; resolved ones close their incident."""
        if len(payload.alerts) > intake.settings.alerts.max_alerts:
            raise TooMany(len(payload.alerts), intake.settings.alerts.max_alerts)
        return intake.receive(payload)

    return router


class TooMany(Exception):
    def __init__(self, given: int, limit: int) -> None:
        super().__init__(
            f"{given} alerts in one call; the limit is {limit} (REMEDIATION_ALERTS__MAX_ALERTS)"
        )


def create_app(settings: Settings, intake: Intake, routers: Sequence[APIRouter] = ()) -> TokenAuth:
    """The ASGI application: FastAPI inside the body limit inside the token check. Further
    routers (approvals, the console) get the same token check, body limit and error
    handling; the FastAPI app itself is ``.api`` of the result."""
    api = FastAPI(
        title="remediation",
        version="0.1.0",
        description="Alertmanager intake and approvals of the remediation worker (issue 14).",
        docs_url=None,
        redoc_url=None,
    )
    api.include_router(alerts_router(intake))
    for router in routers:
        api.include_router(router)

    @api.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    approval_metrics = CollectorRegistry()
    approval_metrics.register(ApprovalCollector(settings.state_redis_url.get_secret_value()))

    @api.get("/metrics", include_in_schema=False)
    def metrics_text() -> Response:
        """This process's intake metrics and the approval metrics every process counts."""
        text = generate_latest(metrics.registry()) + generate_latest(approval_metrics)
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    @api.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [
            ".".join(str(p) for p in e.get("loc", ())) + ": " + str(e.get("msg"))
            for e in exc.errors()[:20]
        ]
        detail = bounded_text(str(storable("; ".join(parts))), 2000)
        metrics.intake_rejected("invalid")
        if request.url.path != "/alerts":  # only webhook bodies are audited, as the webhook's:
            return JSONResponse({"detail": detail}, status_code=422)  # a link needs no token
        try:  # an authenticated caller's bad payload is audited; the audit failing is no 5xx
            await run_in_threadpool(
                intake.runner.store.rejected_check, CHECK, truncated(_body_of(exc)), detail, None
            )
        except Exception as err:
            log.error("could not audit a rejected webhook", error=str(err))
        return JSONResponse({"detail": detail}, status_code=422)

    @api.exception_handler(TooMany)
    async def too_many(request: Request, exc: TooMany) -> JSONResponse:
        metrics.intake_rejected("invalid")
        return JSONResponse({"detail": str(exc)}, status_code=413)

    @api.exception_handler(Exception)
    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        log.error("request failed", path=request.url.path, error=f"{type(exc).__name__}: {exc}")
        return JSONResponse({"detail": "temporarily unavailable; retry"}, status_code=503)

    tokens = [t.get_secret_value().encode() for t in settings.serve.tokens]
    app = TokenAuth(BodyLimit(api, settings.serve.max_body_bytes), tokens)
    app.api = api
    return app


def _body_of(exc: RequestValidationError) -> Any:
    body = getattr(exc, "body", None)
    if isinstance(body, bytes | bytearray):
        return bytes(body[:4096]).decode("utf-8", "replace")
    return body
