"""``/v1/budgets``: spend against the budgets of kernos.toml, the figures ``kernos budgets``
prints (both come from ``kernos.governance.budget_report``).

What a tenant-scoped key sees: its tenant's line of each per-tenant budget, and the lines of
per-run budgets for its own runs. Per-agent budgets count the calls of every tenant's runs of
the agent, so their lines (which would tell one tenant what others spend) need a key without a
tenant. The budgets are those of kernos.toml when the API started, as for the workers, which
also read it once at start.
"""

from __future__ import annotations

import time

from fastapi import APIRouter

from kernos.errors import RunNotFound
from kernos.governance import BudgetLine, budget_report
from kernos.store import Store

from ._auth import Principal, Reader
from ._models import BudgetLineOut, BudgetReport
from ._problems import problem_responses
from ._state import Svc

router = APIRouter(
    prefix="/v1/budgets",
    tags=["budgets"],
    responses=problem_responses(401, 403, 413, 503),
)


@router.get("", response_model=BudgetReport, summary="Spend against budgets")
async def budgets(principal: Reader, svc: Svc) -> BudgetReport:
    """Spent, reserved (calls in flight) and left of each ``[[budgets]]`` entry this period,
    by budget and key; only lines with spend this period. A tenant-scoped key sees its
    tenant's lines and its runs' (per-agent lines need a key without a tenant)."""
    now = time.time()
    lines = await budget_report(svc.client.store, svc.budgets, now=now)
    if principal.tenant is not None:
        lines = await _of_tenant(svc.client.store, lines, principal)
    return BudgetReport(at=now, lines=[BudgetLineOut.of(line) for line in lines])


async def _of_tenant(
    store: Store, lines: list[BudgetLine], principal: Principal
) -> list[BudgetLine]:
    """The lines a tenant-scoped key may see. A per-run line costs a lookup of its run (once
    per run): the usage rows name runs, not their tenants."""
    tenants: dict[str, str | None] = {}
    shown: list[BudgetLine] = []
    for line in lines:
        if line.per == "tenant":
            mine = line.key == principal.tenant
        elif line.per == "run":
            if line.key not in tenants:
                tenants[line.key] = await _tenant_of(store, line.key)
            mine = tenants[line.key] == principal.tenant
        else:
            mine = False
        if mine:
            shown.append(line)
    return shown


async def _tenant_of(store: Store, run_id: str) -> str | None:
    try:
        return (await store.get_run(run_id)).tenant
    except RunNotFound:  # spend of a run since deleted: nobody's
        return None
