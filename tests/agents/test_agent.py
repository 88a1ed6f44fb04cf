"""The declarative Agent on a real store, a real worker and the simulated provider over HTTP."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
from _gateway_support import OA
from pydantic import BaseModel

import kernos
from kernos.agents import Agent, memory_tools
from kernos.kernel import Client, Registry, Worker, output_of
from kernos.sim import Reply, SimServer
from kernos.sim import ToolCall as Call
from kernos.store import RunState
from kernos.testing import wait_until

AgentWorker = Callable[..., AbstractAsyncContextManager[Worker]]


def requests(sim: SimServer) -> list[list[dict[str, Any]]]:
    """The messages of each request the model got, in order."""
    return [e.request["messages"] for e in sim.log("oa") if e.status == 200]


def tool_texts(messages: list[dict[str, Any]]) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "tool"]


async def finish(client: Client, run_id: str, timeout: float = 20) -> kernos.Run:
    return await client.wait(run_id, timeout=timeout)


class Orders:
    """Tools with observable effects, counting their calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.keys: list[str] = []

    def tools(self) -> list[kernos.Tool]:
        orders = self

        @kernos.tool
        def lookup_order(order_id: str) -> dict[str, Any]:
            """Find an order.

            Args:
                order_id: The order's id, like A-17.
            """
            orders.calls.append(("lookup_order", {"order_id": order_id}))
            return {"id": order_id, "status": "shipped", "total": 42.5}

        @kernos.tool
        async def issue_refund(order_id: str, amount: float) -> str:
            """Refund part or all of an order."""
            orders.calls.append(("issue_refund", {"order_id": order_id, "amount": amount}))
            orders.keys.append(kernos.idempotency_key())
            if order_id.strip().upper() == "BROKEN":
                raise RuntimeError("the payment service rejected the refund: account frozen")
            return f"refunded {amount} on {order_id}"

        return [lookup_order, issue_refund]


class Held:
    """A tool that starts, then waits until the test releases it: a window in which the test
    does something to the run (send it a message, take it over) while a turn is in flight."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()

        @kernos.tool
        async def slow() -> str:
            """Takes a while."""
            self.started.set()
            await self.release.wait()
            return "done"

        self.tool = slow

    async def running(self) -> None:
        await asyncio.wait_for(self.started.wait(), 15)


async def kernos_cli(db_url: str, *args: str) -> str:
    """``python -m kernos ARGS --database URL`` as a user runs it; its stdout."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kernos", *args, "--database", db_url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_the_agent_calls_a_tool_and_answers_with_its_result(
    client: Client, registry: Registry, sim: SimServer, agent_worker: AgentWorker
) -> None:
    orders = Orders()
    Agent(
        "support",
        model=OA,
        instructions="You help ACME's customers.",
        tools=orders.tools(),
        registry=registry,
    )
    sim.script(
        "oa",
        Reply(tool_calls=(Call(name="lookup_order", arguments={"order_id": "A-17"}),)),
        Reply(text="Order A-17 has shipped."),
    )
    async with agent_worker():
        run = await client.start("support", "Where is my order A-17?")
        done = await finish(client, run.id)
    assert done.state == RunState.COMPLETED, done.error
    assert output_of(done) == "Order A-17 has shipped."
    assert orders.calls == [("lookup_order", {"order_id": "A-17"})]
    first, second = requests(sim)
    assert first[0] == {"role": "system", "content": "You help ACME's customers."}
    assert first[1] == {"role": "user", "content": "Where is my order A-17?"}
    assert json.loads(tool_texts(second)[0]) == {"id": "A-17", "status": "shipped", "total": 42.5}
    types = [e.type for e in await client.journal(run.id)]
    assert types.count("llm_completed") == 2 and types.count("tool_completed") == 1
    completed = next(e for e in await client.journal(run.id) if e.type == "tool_completed")
    assert completed.name == "lookup_order"
    assert completed.payload["arguments"] == {"order_id": "A-17"}


async def test_parallel_tool_calls_run_concurrently_each_its_own_step(
    client: Client, registry: Registry, sim: SimServer, agent_worker: AgentWorker
) -> None:
    @kernos.tool
    async def slow_lookup(order_id: str) -> str:
        """Slow."""
        await asyncio.sleep(0.4)
        return f"{order_id}: ok"

    Agent("par", model=OA, tools=[slow_lookup], registry=registry)
    sim.script(
        "oa",
        Reply(
            tool_calls=tuple(
                Call(name="slow_lookup", arguments={"order_id": f"A-{i}"}, id=f"call_{i}")
                for i in range(3)
            )
        ),
        Reply(text="all three are fine"),
    )
    async with agent_worker():
        run = await client.start("par", "check A-0, A-1, A-2")
        done = await finish(client, run.id)
    assert done.state == RunState.COMPLETED, done.error
    events = await client.journal(run.id)
    tools = [e for e in events if e.type == "tool_completed"]
    assert [e.payload["result"] for e in tools] == ["A-0: ok", "A-1: ok", "A-2: ok"]
    assert len({e.step for e in tools}) == 3
    # concurrently: three 0.4 s calls took well under 1.2 s of wall time
    first_start = min(e.created_at - (e.duration or 0) for e in tools)
    assert max(e.created_at for e in tools) - first_start < 1.0
    answered = requests(sim)[1]
    assert [(m["tool_call_id"], m["content"]) for m in answered if m["role"] == "tool"] == [
        ("call_0", "A-0: ok"),
        ("call_1", "A-1: ok"),
        ("call_2", "A-2: ok"),
    ]


async def test_malformed_arguments_go_back_to_the_model_which_fixes_them(
    client: Client, registry: Registry, sim: SimServer, agent_worker: AgentWorker
) -> None:
    orders = Orders()
    Agent("fixer", model=OA, tools=orders.tools(), registry=registry)
    sim.script(
        "oa",
        Reply(tool_calls=(Call(name="issue_refund", arguments={"order": "A-17"}),)),
        Reply(tool_calls=(Call(name="issue_refund", arguments="{not json"),)),
        Reply(tool_calls=(Call(name="no_such_tool", arguments={}),)),
        Reply(tool_calls=(Call(name="issue_refund", arguments={"order_id": "A-17", "amount": 5}),)),
        Reply(text="Refunded."),
    )
    async with agent_worker():
        run = await client.start("fixer", "refund 5 on A-17")
        done = await finish(client, run.id)
    assert done.state == RunState.COMPLETED, done.error
    assert orders.calls == [("issue_refund", {"order_id": "A-17", "amount": 5.0})]
    said = [tool_texts(r) for r in requests(sim)[1:]]
    invalid = said[0][0]
    assert invalid.startswith("Error: invalid arguments for issue_refund")
    assert "'order_id' is required" in invalid and "'order' is not a parameter" in invalid
    assert "not a JSON object" in said[1][-1] or "JSON" in said[1][-1]
    assert "no tool named 'no_such_tool'" in said[2][-1] and "issue_refund" in said[2][-1]
    failed = [e for e in await client.journal(run.id) if e.type == "tool_failed"]
    assert [e.payload["kind"] for e in failed] == ["invalid_arguments"]


async def test_the_same_failing_call_is_refused_then_the_run_fails_clearly(
    client: Client, registry: Registry, sim: SimServer, agent_worker: AgentWorker
) -> None:
    orders = Orders()
    Agent("looper", model=OA, tools=orders.tools(), registry=registry)
    rephrased: list[dict[str, Any]] = [
        {"order_id": "BROKEN", "amount": 5},
        {"order_id": " broken", "amount": 5.0},
        {"order_id": "Broken ", "amount": "5"},
        {"order_id": "BROKEN", "amount": 5},
        {"order_id": "broken", "amount": 5},
    ]
    sim.script(
        "oa", *(Reply(tool_calls=(Call(name="issue_refund", arguments=a),)) for a in rephrased)
    )
    async with agent_worker():
        run = await client.start("looper", "refund it")
        done = await finish(client, run.id)
    assert done.state == RunState.FAILED
    assert done.error is not None and "AgentFailed" in done.error and "loop" in done.error
    assert len(orders.calls) == 3  # the fourth and fifth were refused, not made
    said = [tool_texts(r)[-1] for r in requests(sim)[1:]]
    assert said[0].startswith("Error: issue_refund failed: RuntimeError: the payment service")
    assert said[3].startswith("Refused: issue_refund was called with these arguments")
    events = await client.journal(run.id)
    failed = [e.payload for e in events if e.type == "tool_failed"]
    assert [p["kind"] for p in failed] == ["error", "error", "error", "refused", "refused"]
    assert "Traceback" in failed[0]["error"]["traceback"]  # kept for people, not the model
    assert "Traceback" not in said[0]


async def test_escalating_to_a_person_waits_for_their_message(
    client: Client, registry: Registry, sim: SimServer, agent_worker: AgentWorker
) -> None:
    orders = Orders()
    Agent("asks", model=OA, tools=orders.tools(), escalate="person", registry=registry)
    broken = Reply(
        tool_calls=(Call(name="issue_refund", arguments={"order_id": "BROKEN", "amount": 1}),)
    )
    sim.script("oa", *([broken] * 5), Reply(text="I will wait for the account to be unfrozen."))
    async with agent_worker():
        run = await client.start("asks", "refund it")
        await wait_until(lambda: _state(client, run.id, RunState.WAITING), timeout=20)
        waiting = await client.get(run.id)
        assert waiting.waiting_for == "message:user"
        await client.send(run.id, "user", "The account is frozen; tell the customer to wait.")
        done = await finish(client, run.id)
    assert done.state == RunState.COMPLETED, done.error
    assert output_of(done) == "I will wait for the account to be unfrozen."
    assert len(orders.calls) == 3  # replayed after the wait: no call made twice
    last = requests(sim)[-1]
    assert last[-1] == {
        "role": "user",
        "content": "The account is frozen; tell the customer to wait.",
    }
    notes = [e for e in await client.journal(run.id) if e.type == "note"]
    assert notes[0].name == "escalated" and notes[0].payload["to"] == "person"


class Verdict(BaseModel):
    order_id: str
    refund: bool


async def test_structured_output_is_validated_and_repaired(
    client: Client, registry: Registry, sim: SimServer, agent_worker: AgentWorker
) -> None:
    Agent("judge", model=OA, output=Verdict, registry=registry)
    Agent("stubborn", model=OA, output=Verdict, max_repairs=1, registry=registry)
    sim.script(
        "oa",
        Reply(text='{"order_id": "A-17"}'),
        Reply(text='```json\n{"order_id": "A-17", "refund": true}\n```'),
    )
    async with agent_worker():
        run = await client.start("judge", "should A-17 be refunded?")
        done = await finish(client, run.id)
        assert done.state == RunState.COMPLETED, done.error
        assert output_of(done) == {"order_id": "A-17", "refund": True}
        repair = requests(sim)[1][-1]
        assert repair["role"] == "user" and "refund: Field required" in repair["content"]
        assert '"refund"' in requests(sim)[0][0]["content"]  # the schema is in the instructions
        sim.script("oa", Reply(text="yes"), Reply(text="I said yes"))
        bad = await finish(client, (await client.start("stubborn", "and B-2?")).id)
    assert bad.state == RunState.FAILED
    assert bad.error is not None and "invalid_output" in bad.error and "Verdict" in bad.error


async def test_a_message_sent_mid_run_is_seen_at_the_next_turn(
    client: Client, registry: Registry, sim: SimServer, agent_worker: AgentWorker
) -> None:
    held = Held()
    Agent("chat", model=OA, tools=[held.tool], registry=registry)
    sim.script("oa", Reply(tool_calls=(Call(name="slow", arguments={}),)), Reply(text="noted"))
    async with agent_worker():
        run = await client.start("chat", "start")
        await held.running()
        await client.send(run.id, "user", "Also: the customer is a VIP.", sender="alice")
        held.release.set()
        done = await finish(client, run.id)
    assert done.state == RunState.COMPLETED, done.error
    second = requests(sim)[1]
    assert second[-2]["role"] == "tool"
    assert second[-1] == {"role": "user", "content": "Also: the customer is a VIP."}
    taken = [e for e in await client.journal(run.id) if e.type == "message_taken"]
    assert taken[0].payload["sender"] == "alice"


async def test_large_tool_output_is_cut_for_the_model_and_kept_whole(
    client: Client, registry: Registry, sim: SimServer, agent_worker: AgentWorker
) -> None:
    @kernos.tool
    def dump() -> str:
        """A big log."""
        return "x" * 30_000

    Agent("reader", model=OA, tools=[dump], max_tool_output=1_000, registry=registry)
    sim.script("oa", Reply(tool_calls=(Call(name="dump", arguments={}),)), Reply(text="ok"))
    async with agent_worker():
        done = await finish(client, (await client.start("reader", "read")).id)
    assert done.state == RunState.COMPLETED, done.error
    seen = tool_texts(requests(sim)[1])[0]
    assert len(seen) <= 1_000 and seen.startswith("xxx")
    assert "of 30000 characters are shown" in seen
    kept = next(e for e in await client.journal(done.id) if e.type == "tool_completed")
    assert kept.payload["result"] == "x" * 30_000


async def test_an_agent_calls_another_agent_as_a_child_run(
    client: Client, registry: Registry, sim: SimServer, agent_worker: AgentWorker
) -> None:
    billing = Agent("billing", model=OA, instructions="You know invoices.", registry=registry)
    Agent("front", model=OA, tools=[billing], registry=registry)
    sim.script(
        "oa",
        Reply(tool_calls=(Call(name="billing", arguments={"input": "invoice of A-17?"}),)),
        Reply(text="Invoice 991 for A-17."),
        Reply(text="Your invoice is 991."),
    )
    async with agent_worker():
        run = await client.start("front", "what is my invoice?")
        done = await finish(client, run.id)
    assert done.state == RunState.COMPLETED, done.error
    assert output_of(done) == "Your invoice is 991."
    spawned = next(e for e in await client.journal(run.id) if e.type == "child_spawned")
    child = await client.get(spawned.payload["child_id"])
    assert child.agent == "billing" and child.parent_id == run.id
    assert output_of(child) == "Invoice 991 for A-17."
    assert requests(sim)[1][-1]["content"] == "invoice of A-17?"
    assert tool_texts(requests(sim)[2]) == ["Invoice 991 for A-17."]


async def test_an_idempotent_tool_is_retried_after_a_transient_error_and_others_are_not(
    client: Client, registry: Registry, sim: SimServer, agent_worker: AgentWorker
) -> None:
    attempts: dict[str, int] = {"read": 0, "write": 0}

    @kernos.tool(idempotent=True)
    def read_status() -> str:
        """Reads."""
        attempts["read"] += 1
        if attempts["read"] == 1:
            raise ConnectionError("connection reset by peer")
        return "green"

    @kernos.tool
    def charge() -> str:
        """Charges a card."""
        attempts["write"] += 1
        raise ConnectionError("connection reset by peer")

    Agent("retrier", model=OA, tools=[read_status, charge], registry=registry)
    sim.script(
        "oa",
        Reply(
            tool_calls=(Call(name="read_status", arguments={}), Call(name="charge", arguments={}))
        ),
        Reply(text="done"),
    )
    async with agent_worker():
        done = await finish(client, (await client.start("retrier", "go")).id)
    assert done.state == RunState.COMPLETED, done.error
    assert attempts == {"read": 2, "write": 1}
    events = await client.journal(done.id)
    assert [e.type for e in events if e.name == "read_status"] == ["tool_attempt", "tool_completed"]
    assert [e.type for e in events if e.name == "charge"] == ["tool_failed"]
    assert tool_texts(requests(sim)[1])[1] == (
        "Error: charge failed: ConnectionError: connection reset by peer"
    )


async def test_a_tool_that_overruns_its_timeout_is_stopped(
    client: Client, registry: Registry, sim: SimServer, agent_worker: AgentWorker
) -> None:
    @kernos.tool(timeout=0.2)
    async def hang() -> str:
        """Never answers."""
        await asyncio.sleep(30)
        return "late"

    Agent("impatient", model=OA, tools=[hang], registry=registry)
    sim.script("oa", Reply(tool_calls=(Call(name="hang", arguments={}),)), Reply(text="gave up"))
    started = time.monotonic()
    async with agent_worker():
        done = await finish(client, (await client.start("impatient", "go")).id)
    assert time.monotonic() - started < 10
    assert done.state == RunState.COMPLETED, done.error
    assert tool_texts(requests(sim)[1]) == ["Error: hang timed out after 0.2 s"]


async def test_an_agent_out_of_turns_fails_saying_so(
    client: Client, registry: Registry, sim: SimServer, agent_worker: AgentWorker
) -> None:
    @kernos.tool
    def ping() -> str:
        """Pong."""
        return "pong"

    Agent("chatty", model=OA, tools=[ping], max_turns=3, registry=registry)
    sim.script("oa", *[Reply(tool_calls=(Call(name="ping", arguments={}),))] * 3)
    async with agent_worker():
        done = await finish(client, (await client.start("chatty", "go")).id)
    assert done.state == RunState.FAILED
    assert done.error is not None and "max_turns" in done.error and "3 turns" in done.error


async def test_an_agent_remembers_across_conversations(
    client: Client, registry: Registry, sim: SimServer, agent_worker: AgentWorker
) -> None:
    Agent("memo", model=OA, tools=memory_tools("acme"), registry=registry)
    sim.script(
        "oa",
        Reply(tool_calls=(Call(name="remember", arguments={"text": "Ana prefers email."}),)),
        Reply(text="Noted."),
        Reply(tool_calls=(Call(name="recall", arguments={"query": "how does Ana like contact"}),)),
        Reply(text="By email."),
    )
    async with agent_worker():
        first = await finish(client, (await client.start("memo", "I'm Ana; email me.")).id)
        second = await finish(client, (await client.start("memo", "How do I reach Ana?")).id)
    assert first.state == second.state == RunState.COMPLETED, (first.error, second.error)
    assert tool_texts(requests(sim)[1]) == ["Remembered."]
    assert tool_texts(requests(sim)[3]) == ["- Ana prefers email."]
    search = next(e for e in await client.journal(second.id) if e.type == "memory_search")
    assert search.name == "acme" and search.payload["hits"][0]["text"] == "Ana prefers email."


async def test_a_run_over_its_tool_budget_is_refused_and_offered_no_more_tools(
    client: Client, registry: Registry, sim: SimServer, agent_worker: AgentWorker
) -> None:
    orders = Orders()
    Agent("frugal", model=OA, tools=orders.tools(), tool_budget=2, registry=registry)
    lookups = [
        Reply(tool_calls=(Call(name="lookup_order", arguments={"order_id": f"A-{i}"}),))
        for i in range(3)
    ]
    sim.script("oa", *lookups, Reply(text="Here is what I found."))
    async with agent_worker():
        done = await finish(client, (await client.start("frugal", "look up A-0..A-2")).id)
    assert done.state == RunState.COMPLETED, done.error
    assert len(orders.calls) == 2
    said = tool_texts(requests(sim)[3])
    assert said[-1].startswith("Refused: this run has made its 2 tool calls (its budget)")
    assert "tools" in sim.log("oa")[0].request
    assert "tools" not in sim.log("oa")[-1].request  # spent: the model must answer now


async def test_a_person_adds_a_message_with_the_kernos_command(
    client: Client, registry: Registry, sim: SimServer, agent_worker: AgentWorker, db_url: str
) -> None:
    held = Held()
    Agent("listening", model=OA, tools=[held.tool], registry=registry)
    sim.script("oa", Reply(tool_calls=(Call(name="slow", arguments={}),)), Reply(text="ok"))
    async with agent_worker():
        run = await client.start("listening", "go")
        await held.running()
        out = await kernos_cli(db_url, "send", run.id, "user", "Please also refund the shipping.")
        held.release.set()
        done = await finish(client, run.id)
    assert done.state == RunState.COMPLETED, done.error
    assert f"sent to run {run.id}" in out
    assert requests(sim)[1][-1] == {"role": "user", "content": "Please also refund the shipping."}


def test_agent_definitions_are_checked_when_written(registry: Registry) -> None:
    with pytest.raises(kernos.UsageError, match="needs a model"):
        Agent("x", model="", registry=registry)
    with pytest.raises(kernos.UsageError, match="two tools named"):

        def t() -> None:
            """T."""

        Agent("y", model=OA, tools=[t, t], registry=registry)
    with pytest.raises(kernos.UsageError, match="escalate"):
        Agent("z", model=OA, escalate="pray", registry=registry)  # type: ignore[arg-type]


async def _state(client: Client, run_id: str, state: RunState) -> bool:
    return (await client.get(run_id)).state == state


async def test_a_person_takes_over_and_their_reply_is_the_answer(
    client: Client, registry: Registry, sim: SimServer, agent_worker: AgentWorker, db_url: str
) -> None:
    held = Held()
    Agent("handover", model=OA, tools=[held.tool], registry=registry)
    sim.script("oa", Reply(tool_calls=(Call(name="slow", arguments={}),)), Reply(text="unused"))
    async with agent_worker():
        run = await client.start("handover", "help")
        await held.running()
        await kernos_cli(
            db_url,
            "takeover",
            run.id,
            "I'm Dana from support: I have refunded you myself.",
            "--sender",
            "dana",
        )
        held.release.set()
        done = await finish(client, run.id)
    assert done.state == RunState.COMPLETED, done.error
    assert output_of(done) == "I'm Dana from support: I have refunded you myself."
    assert len(requests(sim)) == 1  # the model was not asked again
    taken = [e for e in await client.journal(run.id) if e.type == "message_taken"]
    assert taken[-1].name == "takeover" and taken[-1].payload["sender"] == "dana"
    audit = [(e.actor, e.action) for e in await client.store.list_audit()]
    assert ("dana", "run.message") in audit
