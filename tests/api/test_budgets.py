"""``GET /v1/budgets``: the figures ``kernos budgets`` prints, and to a tenant-scoped key only
its tenant's lines and its runs'."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

import httpx
import pytest

from kernos.api import create_app
from kernos.governance import Budget, budget_report
from kernos.kernel import Client, Registry
from kernos.store import BudgetCharge

from ._api_support import CONFIG, Api, make_keys, register_agents

BUDGETS = (
    Budget(name="tenant-daily", per="tenant", period="day", usd=5.0),
    Budget(name="acme-monthly", per="tenant", match="acme", period="month", tokens=100_000),
    Budget(name="per-run", per="run", period="run", usd=1.0, on_exceed="fail"),
    Budget(name="agent-daily", per="agent", period="day", usd=50.0),
)


@pytest.fixture
async def budgeted(db_url: str, registry: Registry) -> AsyncIterator[Api]:
    """The API with ``BUDGETS`` configured."""
    register_agents(registry)
    app = create_app(db_url, registry=registry, config=CONFIG, budgets=BUDGETS)
    async with app.router.lifespan_context(app):
        client = app.state.kernos.get().client
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://kernos.test") as http:
            yield Api(app, http, client, await make_keys(client))


async def spend(client: Client, name: str, key: str, usd: float, tokens: int) -> None:
    budget = next(b for b in BUDGETS if b.name == name)
    reserved = [
        BudgetCharge(
            budget=name,
            key=key,
            period_start=budget.period_start(time.time()),
            limit_usd=budget.usd,
            limit_tokens=budget.tokens,
            usd=0.01,
            tokens=1,
        )
    ]
    assert (await client.store.reserve_budget(reserved)).ok
    await client.store.settle_budget(reserved, usd=usd, tokens=tokens)


async def spent_everywhere(api: Api) -> dict[str, str]:
    """Spend under every budget, for both tenants; the run ids by tenant."""
    runs = {tenant: await api.start("echo", 1, tenant=tenant) for tenant in ("acme", "globex")}
    await spend(api.client, "tenant-daily", "acme", 1.0, 100)
    await spend(api.client, "tenant-daily", "globex", 2.0, 200)
    await spend(api.client, "acme-monthly", "acme", 0.5, 5000)
    await spend(api.client, "per-run", runs["acme"], 0.25, 50)
    await spend(api.client, "per-run", runs["globex"], 0.75, 70)
    await spend(api.client, "per-run", "01NOSUCHRUN0000000000000000", 0.1, 1)
    await spend(api.client, "agent-daily", "echo", 3.0, 300)
    return runs


def keyed(body: dict[str, Any]) -> set[tuple[str, str]]:
    return {(line["budget"], line["key"]) for line in body["lines"]}


async def test_an_admin_without_a_tenant_sees_what_kernos_budgets_prints(budgeted: Api) -> None:
    await spent_everywhere(budgeted)
    r = await budgeted.http.get("/v1/budgets", headers=budgeted.auth("admin", None))
    assert r.status_code == 200, r.text
    body = r.json()
    expected = await budget_report(budgeted.client.store, BUDGETS, now=body["at"])
    assert body["lines"] == [asdict(line) for line in expected]
    assert len(body["lines"]) == 7
    daily = next(x for x in body["lines"] if x["key"] == "globex")
    assert (daily["spent_usd"], daily["left_usd"], daily["limit_tokens"]) == (2.0, 3.0, None)


async def test_a_tenant_key_sees_its_tenant_and_its_runs_only(budgeted: Api) -> None:
    """Per-agent budgets add up every tenant's calls: a tenant key is not shown them."""
    runs = await spent_everywhere(budgeted)
    for role in ("viewer", "operator", "approver", "admin"):
        acme = await budgeted.http.get("/v1/budgets", headers=budgeted.auth(role, "acme"))
        assert acme.status_code == 200, acme.text
        assert keyed(acme.json()) == {
            ("tenant-daily", "acme"),
            ("acme-monthly", "acme"),
            ("per-run", runs["acme"]),
        }
    globex = await budgeted.http.get("/v1/budgets", headers=budgeted.auth("viewer", "globex"))
    assert keyed(globex.json()) == {("tenant-daily", "globex"), ("per-run", runs["globex"])}


async def test_no_budgets_no_lines(api: Api) -> None:
    r = await api.http.get("/v1/budgets", headers=api.auth("viewer"))
    assert (r.status_code, r.json()["lines"]) == (200, [])


async def test_budgets_need_a_key(budgeted: Api) -> None:
    r = await budgeted.http.get("/v1/budgets")
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    r = await budgeted.http.post("/v1/budgets", headers=budgeted.auth("admin", None))
    assert r.status_code == 405
