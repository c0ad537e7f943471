"""Approvals over HTTP (issue 14): the API (bearer token) and the signed links (no token).

API: ``GET /approvals`` (pending; ``?state=all`` for recent ones too), ``GET
/approvals/{id}``, ``POST /approvals/{id}/approve`` and ``/deny`` with a JSON body
``{"reason": ..., "by": ...}``. The decider is audited as ``api:<token id>`` (a hash of the
token, never the token) followed by ``by`` when given. 404 for an unknown approval, 409 when
it was decided already (or expired): two approvers racing get one 200 and one 409.

Links (remediation.approvals.links): ``GET /approvals/{id}/link?d=&exp=&sig=`` shows the
plan and one button; ``POST`` of that form decides, audited as ``link``. A link needs no
token (the signature is the credential) and decides only what it names, until it expires.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from remediation import signing
from remediation.approvals import Approvals, Decided, links
from remediation.approvals.state import Approval
from remediation.logging import get_logger
from remediation.serve.app import bearer
from remediation.serve.console import HEADERS, Refused, environment, read_form
from remediation.serve.guard import token_id

log = get_logger("remediation.serve.approvals")
ApprovalId = Annotated[str, Path(pattern=r"^[0-9a-f]{16}$", description="an approval id")]


class DecisionBody(BaseModel):
    """Why (and, optionally, who: a name shown after the token's id in the audit)."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field("", max_length=500)
    by: str = Field("", max_length=100, pattern=r"^[\w .@\-]*$")


class DenyBody(DecisionBody):
    reason: str = Field(min_length=1, max_length=500, description="why not (required)")


class ApprovalView(BaseModel):
    """One approval: the call, its plan and what became of it (times in epoch seconds)."""

    id: str
    state: Literal["pending", "approved", "running", "done", "denied", "expired", "withdrawn"]
    action: str
    target: str
    resource: str
    params: dict[str, Any]
    plan: dict[str, Any]
    incident: str | None
    finding_id: int | None
    requested_at: float
    expires_at: float
    decided_by: str | None
    decided_at: float | None
    reason: str | None
    run_task: str | None
    outcome: str | None


class ApprovalList(BaseModel):
    approvals: list[ApprovalView]


class DecisionReply(BaseModel):
    result: Literal["approved", "denied"]
    message: str
    approval: ApprovalView


def view(a: Approval) -> ApprovalView:
    return ApprovalView.model_validate(a.as_dict())


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "no valid bearer token"},
    404: {"description": "no such approval"},
    409: {"description": "decided already, or expired"},
    422: {"description": "bad id or body"},
}


def approvals_router(approvals: Approvals) -> APIRouter:
    """The approval API and link pages, deciding through ``approvals``."""
    router = APIRouter(tags=["approvals"])
    env = environment()

    @router.get("/approvals", response_model=ApprovalList, responses=ERRORS)
    def list_approvals(
        _: Annotated[Any, Depends(bearer)],
        state: Annotated[Literal["pending", "all"], Query()] = "pending",
    ) -> ApprovalList:
        """Pending approvals (soonest to expire first), or the recent ones in any state."""
        found = approvals.pending() if state == "pending" else approvals.recent()
        return ApprovalList(approvals=[view(a) for a in found])

    @router.get("/approvals/{approval_id}", response_model=ApprovalView, responses=ERRORS)
    def get_approval(approval_id: ApprovalId, _: Annotated[Any, Depends(bearer)]) -> Any:
        """One approval with its plan."""
        approvals.expire_due()
        found = approvals.get(approval_id)
        if found is None:
            return JSONResponse({"detail": "no such approval"}, status_code=404)
        return view(found)

    def decided(result: Decided) -> Any:
        if result.status != 200 or result.approval is None:
            return JSONResponse({"detail": result.message}, status_code=result.status)
        return DecisionReply(
            result=result.result,
            message=result.message,
            approval=view(result.approval),
        )

    def who(request: Request, body: DecisionBody) -> str:
        auth = request.headers.get("authorization", "")[7:].strip().encode()
        return f"api:{token_id(auth)}" + (f" ({body.by})" if body.by else "")

    @router.post("/approvals/{approval_id}/approve", response_model=DecisionReply, responses=ERRORS)
    def approve(
        approval_id: ApprovalId,
        body: DecisionBody,
        request: Request,
        _: Annotated[Any, Depends(bearer)],
    ) -> Any:
        """Approve: the call is sent to the worker, which re-computes the plan and acts
        only on what was approved and is still true (the guards still apply)."""
        return decided(approvals.decide(approval_id, True, who(request, body), body.reason))

    @router.post("/approvals/{approval_id}/deny", response_model=DecisionReply, responses=ERRORS)
    def deny(
        approval_id: ApprovalId,
        body: DenyBody,
        request: Request,
        _: Annotated[Any, Depends(bearer)],
    ) -> Any:
        """Deny, with a reason: nothing runs; the same call is not asked again for this
        incident."""
        return decided(approvals.decide(approval_id, False, who(request, body), body.reason))

    # --- signed links: no bearer token (guard.is_link), the signature is the credential ---

    def page(status: int, **context: Any) -> HTMLResponse:
        html = env.get_template("link.html").render(**context)
        return HTMLResponse(html, status_code=status, headers=HEADERS)

    def checked(approval_id: str, d: str, exp: str, sig: str) -> tuple[Approval | None, str]:
        key = signing.key_of(approvals.settings)
        problem = links.check(key, approval_id, d, exp, sig)
        if problem is not None:
            return None, problem
        found = approvals.get(approval_id)
        return (found, "") if found is not None else (None, "no such approval")

    @router.get("/approvals/{approval_id}/link", include_in_schema=False)
    def link_page(
        approval_id: ApprovalId,
        d: Annotated[str, Query(max_length=10)] = "",
        exp: Annotated[str, Query(max_length=12)] = "",
        sig: Annotated[str, Query(max_length=64)] = "",
    ) -> HTMLResponse:
        found, problem = checked(approval_id, d, exp, sig)
        if found is None:
            return page(403, problem=problem)
        return page(200, approval=found.as_dict(), d=d, exp=exp, sig=sig)

    @router.post("/approvals/{approval_id}/link", include_in_schema=False)
    async def link_decide(approval_id: ApprovalId, request: Request) -> HTMLResponse:
        try:
            form = await read_form(request)
        except Refused as exc:
            return page(400, problem=str(exc))
        d, exp, sig = form.get("d", ""), form.get("exp", ""), form.get("sig", "")
        found, problem = await run_in_threadpool(checked, approval_id, d, exp, sig)
        if found is None:
            return page(403, problem=problem)
        reason = form.get("reason", "").strip()[:500]
        result = await run_in_threadpool(
            approvals.decide, approval_id, d == "approve", "link", reason or f"{d} by link"
        )
        log.info("approval decided by link", approval=approval_id, result=result.result)
        return page(result.status, done=result.message, approval=found.as_dict())

    return router
