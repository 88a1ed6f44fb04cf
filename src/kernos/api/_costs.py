"""``/v1/costs``: what LLM calls cost, from the journal (the gateway's cost ledger)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query

from kernos.gateway import cost_report

from ._auth import Reader
from ._models import CostLineOut, CostReport, epoch
from ._problems import ProblemError, problem_responses
from ._state import Svc

router = APIRouter(
    prefix="/v1/costs",
    tags=["costs"],
    responses=problem_responses(400, 401, 403, 413, 422, 503),
)

#: every tenant's line, when a tenant-scoped key asks for its own (the ledger sorts by cost)
_ALL_TENANTS = 1_000_000


@router.get("", response_model=CostReport, summary="Costs of LLM calls")
async def costs(
    principal: Reader,
    svc: Svc,
    by: Annotated[
        Literal["agent", "model", "tenant", "run"], Query(description="Total per ...")
    ] = "agent",
    since: Annotated[
        datetime | None,
        Query(description="Only calls since this time (ISO 8601, or seconds since the epoch)"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many lines")] = 100,
) -> CostReport:
    """Dollars and tokens per agent, model, tenant or run, dearest first.

    A tenant-scoped key sees its own tenant's total (``by=tenant``): the ledger's other
    groupings add up calls of every tenant, so they need a key without a tenant.
    """
    start = epoch(since) if since is not None else None
    if principal.tenant is not None:
        if by != "tenant":
            raise ProblemError(
                403,
                f"costs by {by} add up every tenant's calls; a key of tenant "
                f"{principal.tenant!r} may ask for by=tenant (its own total)",
                kind="forbidden",
            )
        lines = await cost_report(svc.client.store, by="tenant", since=start, limit=_ALL_TENANTS)
        lines = [line for line in lines if line.key == principal.tenant]
    else:
        lines = await cost_report(svc.client.store, by=by, since=start, limit=limit)
    return CostReport(by=by, since=start, lines=[CostLineOut.of(line) for line in lines])
