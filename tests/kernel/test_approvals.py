"""Human approvals end to end: a run waits (holding nothing) for a person, who approves with an
answer, rejects, or edits a tool's arguments, from the CLI; a timeout decides for them; the
wait survives the worker; a second decision is refused."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from _cli_support import kernos_async
from _gateway_support import OA, config_for
from pydantic import BaseModel

import kernos
from kernos.agents import Agent
from kernos.gateway import default_services
from kernos.kernel import Client, Registry, output_of
from kernos.sim import Reply, SimServer
from kernos.sim import ToolCall as Call
from kernos.store import ApprovalState, RunState
from kernos.testing import FAST, running_worker, wait_until

ROOT = Path(__file__).resolve().parents[2]


class Refund(BaseModel):
    amount: float
    note: str = ""


def register(registry: Registry) -> None:
    @kernos.agent("asks", registry=registry)
    async def asks(ctx: kernos.RunContext, job: dict[str, Any]) -> dict[str, Any]:
        decision = await ctx.ask_human(
            f"Refund order {job['order']}? How much?",
            Refund,
            timeout=job.get("timeout"),
            on_timeout="reject",
        )
        answer = decision.answer
        return {
            "approved": decision.approved,
            "amount": answer.amount if isinstance(answer, Refund) else None,
            "by": decision.by,
            "reason": decision.reason,
            "expired": decision.expired,
        }


async def cli(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return await kernos_async(db_url, *args)


async def waiting_approval(client: Client, run_id: str) -> str:
    async def pending() -> str | None:
        found = await client.store.list_approvals(run_id=run_id)
        run = await client.get(run_id)
        if found and run.state == RunState.WAITING:
            return found[0].id
        return None

    return str(await wait_until(pending, timeout=20))


async def test_a_person_answers_and_the_run_continues_after_a_worker_restart(
    client: Client, registry: Registry, db_url: str
) -> None:
    register(registry)
    async with running_worker(client, registry, FAST, services={}):
        run = await client.start("asks", {"order": "A-17"})
        approval_id = await waiting_approval(client, run.id)
    # no worker at all now: the run is rows in the store
    waiting = await client.get(run.id)
    assert waiting.state == RunState.WAITING and waiting.waiting_for == f"approval:{approval_id}"
    listed = await cli(db_url, "approvals", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [a["question"] for a in json.loads(listed.stdout)] == ["Refund order A-17? How much?"]
    bad = await cli(db_url, "approvals", "approve", approval_id, "--answer", '{"amount": "lots"}')
    assert bad.returncode == 2 and "does not fit what the run asked for" in bad.stderr
    assert (await client.store.get_approval(approval_id)).state == ApprovalState.PENDING
    ok = await cli(
        db_url, "approvals", "approve", approval_id, "--answer", '{"amount": 42}', "--by", "alice"
    )
    assert ok.returncode == 0, ok.stderr
    again = await cli(db_url, "approvals", "reject", approval_id, "--by", "bob")
    assert again.returncode == 2 and "already approved by alice" in again.stderr
    async with running_worker(client, registry, FAST, services={}):
        done = await client.wait(run.id, timeout=20)
    assert done.state == RunState.COMPLETED, done.error
    assert output_of(done) == {
        "approved": True,
        "amount": 42.0,
        "by": "alice",
        "reason": None,
        "expired": False,
    }
    types = [e.type for e in await client.journal(run.id)]
    assert types.count("approval_requested") == 1 and types.count("approval_decided") == 1
    audit = [(e.actor, e.action) for e in await client.store.list_audit()]
    assert ("alice", "approval.approved") in audit


async def test_no_decision_before_the_timeout_takes_the_declared_default(
    client: Client, registry: Registry
) -> None:
    register(registry)
    async with running_worker(client, registry, FAST, services={}):
        run = await client.start("asks", {"order": "B-2", "timeout": 1.5})
        done = await client.wait(run.id, timeout=30)
    assert done.state == RunState.COMPLETED, done.error
    out = output_of(done)
    assert out["approved"] is False and out["expired"] is True and out["by"] == "kernos:timeout"
    found = await client.store.list_approvals(state=None, run_id=run.id)
    assert found[0].state == ApprovalState.EXPIRED


@pytest.fixture
def ledger() -> list[dict[str, Any]]:
    return []


async def test_a_tool_over_a_limit_needs_approval_and_a_person_edits_it(
    client: Client,
    registry: Registry,
    kernos_sim: SimServer,
    db_url: str,
    ledger: list[dict[str, Any]],
) -> None:
    @kernos.tool(requires_approval=lambda a: a["amount"] > 100)
    def issue_refund(order_id: str, amount: float) -> str:
        """Refund."""
        ledger.append({"order_id": order_id, "amount": amount})
        return f"refunded {amount} on {order_id}"

    Agent("refunder", model=OA, tools=[issue_refund], registry=registry)
    kernos_sim.script(
        "oa",
        Reply(
            tool_calls=(
                Call(name="issue_refund", arguments={"order_id": "A-17", "amount": 420}),
                Call(name="issue_refund", arguments={"order_id": "B-2", "amount": 12}),
            )
        ),
        Reply(
            tool_calls=(Call(name="issue_refund", arguments={"order_id": "C-9", "amount": 310}),)
        ),
        Reply(text="Done."),
    )
    services = default_services(config_for(kernos_sim))
    async with running_worker(client, registry, FAST, services=services):
        run = await client.start("refunder", "refund A-17, B-2 and C-9")
        first = await waiting_approval(client, run.id)
        assert ledger == []  # nothing ran while the run waited for the person
        edited = await cli(
            db_url, "approvals", "edit", first, '{"order_id": "A-17", "amount": 42}',
            "--reason", "420 was a typo", "--by", "alice",
        )  # fmt: skip
        assert edited.returncode == 0, edited.stderr
        second = await waiting_approval(client, run.id)
        assert second != first
        rejected = await cli(
            db_url, "approvals", "reject", second, "--reason", "C-9 is not ours", "--by", "bob"
        )
        assert rejected.returncode == 0, rejected.stderr
        done = await client.wait(run.id, timeout=30)
    assert done.state == RunState.COMPLETED, done.error
    assert ledger == [
        {"order_id": "A-17", "amount": 42.0},
        {"order_id": "B-2", "amount": 12.0},
    ]
    last = kernos_sim.log("oa")[-1].request["messages"]
    told = [m["content"] for m in last if m["role"] == "tool"]
    assert told[-1].startswith("Rejected: a person (bob) rejected this call of issue_refund")
    assert "C-9 is not ours" in told[-1]


async def test_a_decision_racing_the_runs_suspension_always_wakes_it(
    client: Client, registry: Registry
) -> None:
    """Decisions made the instant each approval appears, often before its run has finished
    suspending: every run is woken (the decision and the suspension lock the run first)."""
    register(registry)
    async with running_worker(client, registry, FAST, services={}):
        runs = [await client.start("asks", {"order": f"R-{i}"}) for i in range(40)]
        decided: set[str] = set()

        async def decide_all() -> bool:
            for approval in await client.store.list_approvals(limit=100):
                if approval.id not in decided:
                    decided.add(approval.id)
                    await client.store.decide_approval(approval.id, approve=False, by="fast")
            return len(decided) == len(runs)

        await wait_until(decide_all, timeout=60, interval=0.001, what="40 approvals")
        done = [await client.wait(r.id, timeout=30) for r in runs]
    assert all(d.state == RunState.COMPLETED for d in done)
