"""``/v1/approvals`` and ``/v1/audit``: people deciding what runs asked them, and the record.

Deciding is exactly-once in the store (a second decision, or a second person deciding at the
same moment, gets 409 saying what was decided and by whom); the decision, its audit entry and
the waiting run's wake-up commit together. The decider is the API key (``key:<name>/<id>``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query

from kernos.errors import ApprovalNotFound
from kernos.store import ApprovalState

from ._auth import Approver, Auditor, Principal
from ._models import (
    INT63,
    RUN_ID_PATTERN,
    ApprovalList,
    ApprovalOut,
    AuditEntryOut,
    AuditPage,
    ControlRequest,
    Decision,
    epoch,
)
from ._problems import not_found, problem_responses
from ._state import Services, Svc

_COMMON = problem_responses(400, 401, 403, 413, 422, 503)
approvals = APIRouter(prefix="/v1/approvals", tags=["approvals"], responses=_COMMON)
audit = APIRouter(prefix="/v1/audit", tags=["audit"], responses=_COMMON)

ApprovalId = Annotated[str, Path(pattern=r"^[^\x00/]{1,300}$", description="The approval's id")]


@approvals.get("", response_model=ApprovalList, summary="List approvals")
async def list_approvals(
    principal: Approver,
    svc: Svc,
    state: Annotated[
        ApprovalState | Literal["all"], Query(description="Only approvals in this state")
    ] = ApprovalState.PENDING,
    run_id: Annotated[
        str | None, Query(pattern=RUN_ID_PATTERN, description="Only this run's approvals")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> ApprovalList:
    """Approvals oldest first (default: those waiting for a decision), of the key's tenant."""
    found = await svc.client.store.list_approvals(
        state=None if state == "all" else state,
        tenant=principal.tenant,
        run_id=run_id,
        limit=limit,
    )
    return ApprovalList(approvals=[ApprovalOut.of(a) for a in found])


async def _approval(svc: Services, principal: Principal, approval_id: str) -> ApprovalOut:
    try:
        found = await svc.client.store.get_approval(approval_id, tenant=principal.tenant)
    except ApprovalNotFound:
        raise not_found(f"approval {approval_id}") from None
    return ApprovalOut.of(found)


@approvals.get(
    "/{approval_id}",
    response_model=ApprovalOut,
    summary="Get an approval",
    responses=problem_responses(404),
)
async def get_approval(approval_id: ApprovalId, principal: Approver, svc: Svc) -> ApprovalOut:
    return await _approval(svc, principal, approval_id)


_DECIDE = problem_responses(404, 409)


@approvals.post(
    "/{approval_id}/approve", response_model=ApprovalOut, summary="Approve", responses=_DECIDE
)
async def approve(
    approval_id: ApprovalId, principal: Approver, svc: Svc, body: Decision | None = None
) -> ApprovalOut:
    """Approve, with an ``answer`` when the run asked a question (``ctx.ask_human``) or with
    the tool's arguments as edited. The run wakes."""
    decision = body or Decision()
    return await _decide(svc, principal, approval_id, True, decision.reason, decision.answer)


@approvals.post(
    "/{approval_id}/reject", response_model=ApprovalOut, summary="Reject", responses=_DECIDE
)
async def reject(
    approval_id: ApprovalId, principal: Approver, svc: Svc, body: ControlRequest | None = None
) -> ApprovalOut:
    """Reject, saying why; the run wakes and learns the reason."""
    return await _decide(svc, principal, approval_id, False, body.reason if body else None, None)


async def _decide(
    svc: Services,
    principal: Principal,
    approval_id: str,
    approve: bool,
    reason: str | None,
    answer: object,
) -> ApprovalOut:
    try:
        decided = await svc.client.decide(
            approval_id,
            approve=approve,
            by=principal.actor,
            reason=reason,
            answer=answer,
            tenant=principal.tenant,
        )
    except ApprovalNotFound:
        raise not_found(f"approval {approval_id}") from None
    return ApprovalOut.of(decided)


@audit.get("", response_model=AuditPage, summary="The audit log")
async def list_audit(
    principal: Auditor,
    svc: Svc,
    after: Annotated[int, Query(ge=0, le=INT63, description="Only entries after this seq")] = 0,
    since: Annotated[
        datetime | None, Query(description="Only entries since (ISO 8601 or epoch seconds)")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditPage:
    """Control actions and decisions in order, of the key's tenant (all, for a key without
    one). Page with ``?after=<next>``; ``kernos audit verify`` checks the chain."""
    entries = await svc.client.store.list_audit(
        since=epoch(since) if since is not None else None,
        after_seq=after,
        tenant=principal.tenant,
        limit=limit + 1,
    )
    page = entries[:limit]
    return AuditPage(
        entries=[AuditEntryOut.of(e) for e in page],
        next=page[-1].seq if len(entries) > limit else None,
    )
