"""Budgets on every path a call can take: parked and resumed, approved by a person, a store
blip in the middle of a check, and an observer that fails.

The LLM service here is a small ``CallService`` of the test's own: what is under test is how
the kernel and the governor treat a call's budget, and a scripted service makes the park, the
usage and the cost exact (the gateway's own park is tested with the simulator elsewhere).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import kernos
from kernos.errors import StoreUnavailable
from kernos.governance import Budget, Governor
from kernos.governance._policy import load_policy
from kernos.kernel import CallCheck, Client, DurableCall, Registry, Verdict
from kernos.store import BudgetCharge, Event, Run, RunState
from kernos.testing import FAST, running_worker, wait_until


class ScriptedLLM:
    """Answers with ``tokens`` of usage; parks the first round when ``park`` is set."""

    def __init__(self, tokens: int, *, park: bool = False) -> None:
        self.tokens = tokens
        self.park = park
        self.calls = 0

    async def __call__(
        self, call: DurableCall, route: str, messages: Any, *_: Any, **__: Any
    ) -> Any:
        if call.completed is not None:
            return SimpleNamespace(**call.completed["r"], usage=SimpleNamespace(total_tokens=0))
        self.calls += 1
        if self.park and call.record.parks == 0:
            call.park("provider", time.time() + 0.5, {"why": "provider down"})
        await call.complete({"r": {"text": "ok", "cost": 0.0}}, duration=0.0, n=1)
        return SimpleNamespace(text="ok", cost=0.0, usage=SimpleNamespace(total_tokens=self.tokens))


def asker(registry: Registry) -> None:
    @kernos.agent("asker", registry=registry)
    async def ask(ctx: kernos.RunContext, _: Any) -> str:
        return str((await ctx.llm("x:y", [{"role": "user", "content": "hi"}])).text)


async def _usage(client: Client, name: str) -> Any:
    return next(u for u in await client.store.budget_usage() if u.budget == name)


async def test_a_call_resumed_after_a_park_is_checked_against_the_budget_again(
    client: Client, registry: Registry
) -> None:
    """While the call is parked, the budget is spent elsewhere: the call must not go ahead."""
    asker(registry)
    budget = Budget(name="day", per="tenant", period="day", tokens=2000)
    llm = ScriptedLLM(100, park=True)
    governor = Governor(client.store, budgets=[budget])
    async with running_worker(client, registry, FAST, services={"llm": llm}, gatekeeper=governor):
        run = await client.start("asker", None, tenant="acme")

        async def parked() -> bool:
            return "llm_parked" in [e.type for e in await client.journal(run.id)]

        await wait_until(parked, timeout=20, what="the park")
        start = budget.period_start(time.time())
        spent_elsewhere = BudgetCharge("day", "acme", start, None, 2000, 0.0, 0)
        await client.store.settle_budget([spent_elsewhere], usd=0.0, tokens=1900)

        async def waiting_for_budget() -> bool:
            found = await client.get(run.id)
            return found.state == RunState.WAITING and found.waiting_for == "budget"

        await wait_until(waiting_for_budget, timeout=20, what="the run to wait for budget")
    assert llm.calls == 1  # the resumed call was not made
    usage = await _usage(client, "day")
    assert (usage.tokens, usage.reserved_tokens) == (1900, 0)


async def test_an_llm_call_a_person_approved_counts_against_the_budget(
    client: Client, registry: Registry, tmp_path: Path
) -> None:
    asker(registry)
    policy = tmp_path / "policy.toml"
    policy.write_text(
        '[policy]\ndefault = "allow"\n[[policy.rules]]\nname = "llm-needs-person"\n'
        'priority = 10\nwhen = \'kind == "llm"\'\neffect = "require_approval"\n'
        'reason = "every model call is approved"\n'
    )
    budget = Budget(name="day", per="tenant", period="day", tokens=1_000_000)
    governor = Governor(client.store, policy=load_policy(policy), budgets=[budget])
    llm = ScriptedLLM(5000)
    async with running_worker(client, registry, FAST, services={"llm": llm}, gatekeeper=governor):
        run = await client.start("asker", None, tenant="acme")

        async def asked() -> Any:
            found = await client.store.list_approvals(run_id=run.id)
            return found[0] if found else None

        approval = await wait_until(asked, timeout=20, what="the approval")
        await client.store.decide_approval(approval.id, approve=True, by="alice")
        done = await client.wait(run.id, timeout=20)
    assert done.state == RunState.COMPLETED, done.error
    usage = await _usage(client, "day")
    assert (usage.tokens, usage.reserved_tokens) == (5000, 0)
    assert await client.store.held_budget(f"{run.id}:2") == []


class BlipOnce(Governor):
    """A governor whose first settle meets a database that is briefly unavailable."""

    blips = 0

    async def settle(self, call: CallCheck, verdict: Verdict, result: Any) -> None:
        if self.blips == 0:
            self.blips += 1
            raise StoreUnavailable("the PostgreSQL server is unavailable (a restart)")
        await super().settle(call, verdict, result)


async def test_a_store_blip_in_a_budget_check_replays_the_run_instead_of_failing_it(
    client: Client, registry: Registry
) -> None:
    asker(registry)
    governor = BlipOnce(
        client.store, budgets=[Budget(name="r", per="run", period="run", tokens=10**9)]
    )
    async with running_worker(
        client, registry, FAST, services={"llm": ScriptedLLM(10)}, gatekeeper=governor
    ):
        run = await client.start("asker", None)
        done = await client.wait(run.id, timeout=30)
    assert governor.blips == 1
    assert done.state == RunState.COMPLETED, done.error


class Faulty:
    def committed(self, run: Run, events: Sequence[Event]) -> None:
        raise ValueError("an exporter's bug")

    def claimed(self, run: Run, waited: float) -> None:
        raise ValueError("an exporter's bug")

    def leases(self, renewed: int, lost: int) -> None:
        raise ValueError("an exporter's bug")


async def test_an_observer_that_raises_never_fails_a_run(
    client: Client, registry: Registry
) -> None:
    @kernos.agent("stepper", registry=registry)
    async def stepper(ctx: kernos.RunContext, _: Any) -> int:
        return int(await ctx.step("one", lambda: 1))

    async with running_worker(client, registry, FAST, services={}, observer=Faulty()):
        run = await client.start("stepper", None)
        done = await client.wait(run.id, timeout=20)
    assert done.state == RunState.COMPLETED, done.error
