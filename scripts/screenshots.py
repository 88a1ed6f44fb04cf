"""`make screenshots`: the dashboard's pages as PNGs in docs/screenshots/, for the README.

Everything is real but the week of history: a fresh SQLite database under .kernos/, the
provider simulator (Anthropic overloaded, so the circuit breaker opens and calls fall back to
OpenAI, which rate-limits once), an in-process worker with budgets, and `kernos serve`'s app
on a loopback port, photographed by Debian's Chromium through Playwright. Runs are started
the way a client starts them and go where they go: three wait for a person (one of them is
then rejected by one), one completes, a pipeline sleeps, one waits for a message, one is
paused, one fails. So that the spend chart has more than today to show, LLM calls of the
past seven days are written straight into the journal first (runs of agents `triage` and
`support`, events dated in the past); nothing else is written around the kernel.

    .venv/bin/python scripts/screenshots.py [--out docs/screenshots]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import uvicorn
from playwright.async_api import Page, async_playwright

import kernos
from kernos.agents import Agent
from kernos.api import ApiConfig, create_app
from kernos.gateway import (
    Endpoint,
    GatewayConfig,
    GatewaySettings,
    ProviderConfig,
    default_services,
)
from kernos.governance import Budget, Governor
from kernos.kernel import Client, Registry, RetryPolicy, connect
from kernos.sim import Fault, Reply, SimServer, ToolCall, Usage, serve
from kernos.store import ApprovalState, Event, NewRun, RunState, Store, new_run_id
from kernos.testing import FAST, running_worker, wait_until

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".kernos" / "screenshots"
CHROMIUM = os.environ.get("KERNOS_CHROMIUM", "/usr/bin/chromium")
ROUTE = ("anthropic:claude-haiku-4-5", "openai:gpt-4.1-mini")
BUDGETS = [
    Budget(name="agent-daily", per="agent", period="day", usd=0.02),
    Budget(name="tenant-daily", per="tenant", period="day", usd=0.05),
]
USAGE = Usage(input_tokens=1800, output_tokens=240)


def agents(registry: Registry) -> None:
    @kernos.tool
    def lookup_order(order_id: str) -> dict[str, Any]:
        """Look an order up: its status and total."""
        return {"order_id": order_id, "status": "delivered", "total": 1280.0}

    @kernos.tool(requires_approval=lambda a: a["amount"] > 100)
    def issue_refund(order_id: str, amount: float) -> str:
        """Refund part or all of an order."""
        return f"refunded {amount:.2f} on {order_id}"

    Agent(
        "support",
        model="support",
        instructions="You answer customers of an online shop. Refunds over 100 need a person.",
        tools=[lookup_order, issue_refund],
        registry=registry,
    )

    def stage(name: str, order: str) -> dict[str, str]:
        return {"stage": name, "order": order, "key": kernos.idempotency_key()}

    @kernos.retry(RetryPolicy(max_attempts=2, initial_delay=0.05))
    def charge(order: str) -> None:
        raise RuntimeError(f"card declined for order {order} (insufficient funds)")

    @kernos.agent("pipeline", registry=registry)
    async def pipeline(ctx: kernos.RunContext, job: dict[str, Any]) -> dict[str, Any]:
        order = job["order"]
        await ctx.step("validate_order", stage, "validate_order", order)
        await ctx.memory.put("orders", f"order {order} validated", {"order": order})
        await ctx.step("reserve_stock", stage, "reserve_stock", order)
        if job.get("fail"):
            await ctx.step("charge_card", charge, order)
        if job.get("wait"):
            await ctx.wait_for_message("shipping-label", timeout=86_400)
        if job.get("sleep"):
            await ctx.sleep(3600)
        await ctx.step("create_shipment", stage, "create_shipment", order)
        return {"order": order, "shipped": True}


def gateway(sim: SimServer) -> GatewayConfig:
    return GatewayConfig(
        providers={
            "openai": ProviderConfig(
                name="openai", kind="openai", base_url=sim.openai_base_url("openai"), api_key_env=""
            ),
            "anthropic": ProviderConfig(
                name="anthropic",
                kind="anthropic",
                base_url=sim.anthropic_base_url("anthropic"),
                api_key_env="",
            ),
        },
        routes={"support": tuple(Endpoint.parse(e) for e in ROUTE)},
        gateway=GatewaySettings(backoff_base=0.05, backoff_cap=0.3, timeout=5.0),
        prices={},
    )


async def history(store: Store) -> None:
    """A week of LLM calls before today, written straight into the journal (see the top)."""
    rng = random.Random(8)
    today = time.time() // 86_400 * 86_400
    for agent, tenant, per_day in (("triage", "acme", 40), ("support", "globex", 25)):
        run_id = new_run_id()
        await store.create_run(
            NewRun(id=run_id, agent=agent, agent_version="1", input='"history"', tenant=tenant)
        )
        (claim,) = await store.claim(
            worker_id="history", agents=[(agent, "1")], limit=1, lease_ttl=60.0, agent_limits={}
        )
        events: list[Event] = []
        for day in range(7, 0, -1):
            for _ in range(int(per_day * rng.uniform(0.4, 1.6))):
                at = today - day * 86_400 + rng.uniform(0, 86_400)
                model = ROUTE[1].split(":") if rng.random() < 0.7 else ROUTE[0].split(":")
                usage = {
                    "input_tokens": rng.randint(800, 4000),
                    "output_tokens": rng.randint(50, 600),
                }
                cost = usage["input_tokens"] * 0.4e-6 + usage["output_tokens"] * 1.6e-6
                response = {"provider": model[0], "model": model[1], "usage": usage, "cost": cost,
                            "latency": rng.uniform(0.3, 2.0), "attempts": 1, "text": "..."}  # fmt: skip
                events.append(
                    Event(0, "llm_completed", None, "support", 1, {"response": response}, at)
                )
        events.sort(key=lambda e: e.created_at)
        numbered = [Event(i + 1, e.type, i + 1, e.name, e.attempt, e.payload, e.created_at, 0.5)
                    for i, e in enumerate(events)]  # fmt: skip
        await store.finish(
            run_id, claim.token, state=RunState.COMPLETED, events=numbered, output='"history"'
        )


async def until(client: Client, run_id: str, *states: RunState) -> None:
    async def reached() -> bool:
        return (await client.get(run_id)).state in states

    await wait_until(reached, timeout=30, what=f"run {run_id} in {states}")


async def pending(client: Client, run_id: str) -> str:
    async def found() -> str | None:
        waiting = await client.store.list_approvals(run_id=run_id, state=ApprovalState.PENDING)
        return waiting[0].id if waiting else None

    return str(await wait_until(found, timeout=30, what=f"an approval of run {run_id}"))


def support_script(sim: SimServer, order: str, amount: float) -> None:
    sim.script(
        "openai",
        Reply(tool_calls=(ToolCall(name="lookup_order", arguments={"order_id": order}),), usage=USAGE),
        Reply(tool_calls=(ToolCall(name="issue_refund", arguments={"order_id": order, "amount": amount}),),
              usage=USAGE),
        Reply(text=f"I have refunded {amount:.2f} on order {order}.", usage=USAGE),
    )  # fmt: skip


async def runs(client: Client, sim: SimServer) -> dict[str, str]:
    """The runs the pages show; returns the interesting ones by name."""
    shown: dict[str, str] = {}
    sim.add_fault("anthropic", Fault(kind="overloaded"))
    sim.add_fault("openai", Fault(kind="rate_limit", count=1, retry_after=0.5))
    for order, amount, tenant, key in (
        ("A-1077", 420.0, "acme", "approval"),
        ("A-1042", 35.0, "acme", "done"),
        ("G-310", 180.0, "globex", "globex"),
        ("A-1090", 960.0, "acme", "rejected"),
    ):
        support_script(sim, order, amount)
        run = await client.start(
            "support", f"Please refund {amount:.0f} on order {order}.", tenant=tenant
        )
        shown[key] = run.id
        if amount <= 100:
            await until(client, run.id, RunState.COMPLETED)
            continue
        await pending(client, run.id)
        sim.clear_script("openai")  # its answer comes after the person decides
    rejected = await pending(client, shown["rejected"])
    sim.script(
        "openai", Reply(text="A person declined the refund; I have told the customer.", usage=USAGE)
    )
    await client.decide(rejected, approve=False, by="alice@acme", reason="over the goodwill limit")
    await until(client, shown["rejected"], RunState.COMPLETED)
    jobs: list[tuple[str, dict[str, Any], str]] = [
        ("A-1101", {}, "acme"),
        ("A-1102", {"sleep": True}, "acme"),
        ("G-311", {"wait": True}, "globex"),
        ("A-1103", {"wait": True}, "acme"),
        ("A-1104", {"fail": True}, "acme"),
    ]
    for order, job, tenant in jobs:
        run = await client.start("pipeline", {"order": order, **job}, tenant=tenant)
        shown[order] = run.id
    await until(client, shown["A-1103"], RunState.WAITING)
    await client.pause(shown["A-1103"], reason="address check", by="bob@acme")
    await until(client, shown["A-1104"], RunState.FAILED)
    await until(client, shown["A-1102"], RunState.WAITING)
    return shown


async def photograph(
    page: Page, out: Path, name: str, path: str, wait: str, *, whole: bool = False
) -> None:
    await page.goto(path)
    await page.wait_for_selector(wait)
    await page.wait_for_timeout(300)  # the page's script puts local times in
    await page.screenshot(path=str(out / f"{name}.png"), full_page=whole)
    print(f"{out / f'{name}.png'}  ({(out / f'{name}.png').stat().st_size // 1024} KB)")


async def main(out: Path) -> None:
    url = f"sqlite:///{WORK / 'kernos.db'}"
    registry = Registry()
    agents(registry)
    with serve(seed=3) as sim:
        client = await connect(url, registry=registry)
        try:
            await history(client.store)
            services = default_services(gateway(sim))
            governor = Governor(client.store, budgets=BUDGETS, gateway=gateway(sim))
            async with running_worker(
                client, registry, FAST, services=services, gatekeeper=governor
            ):
                shown = await runs(client, sim)
                _, secret = await client.store.create_api_key(name="ada", tenant=None, role="admin")
                app = create_app(url, registry=registry, budgets=BUDGETS, config=ApiConfig())
                server = uvicorn.Server(
                    uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
                )
                serving = asyncio.create_task(server.serve())
                await wait_until(lambda: server.started, timeout=10, what="the server")
                base = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
                async with async_playwright() as p:
                    browser = await p.chromium.launch(executable_path=CHROMIUM)
                    context = await browser.new_context(
                        base_url=base, viewport={"width": 1360, "height": 860}
                    )
                    page = await context.new_page()
                    await photograph(page, out, "login", "/login", "#key")
                    await page.fill("#key", secret)
                    await page.click("button[type=submit]")
                    await photograph(page, out, "runs", "/", "#runs tbody tr")
                    await photograph(
                        page, out, "run", f"/runs/{shown['approval']}", "#timeline .row"
                    )
                    await photograph(page, out, "approvals", "/approvals", "article.approval")
                    await photograph(
                        page, out, "providers", "/providers", "table.providers tbody tr"
                    )
                    await photograph(
                        page, out, "costs", "/costs?window=7d", "figure.chart", whole=True
                    )
                    await browser.close()
                server.should_exit = True
                await serving
        finally:
            await client.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    out = parser.parse_args().out
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    out.mkdir(parents=True, exist_ok=True)
    asyncio.run(main(out))
