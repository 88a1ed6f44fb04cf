"""An agent's conversation near its model's window: compacted by a summary that a journal
event records, pinned and recent messages kept verbatim, and a clear error (not a provider's
400) when it cannot fit at all."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
from _gateway_support import OA

import kernos
from kernos.agents import Agent
from kernos.kernel import Client, Registry, Worker, output_of
from kernos.sim import Reply, SimServer
from kernos.sim import ToolCall as Call
from kernos.store import RunState

AgentWorker = Callable[..., AbstractAsyncContextManager[Worker]]


def inventory(part: int) -> str:
    """About 1,600 tokens of distinct words."""
    return " ".join(f"part{part}-item{i}" for i in range(400))


@kernos.tool
def list_stock(part: int) -> str:
    """The stock of one warehouse part.

    Args:
        part: Which part, 1 to 9.
    """
    return inventory(part)


def requests(sim: SimServer) -> list[list[dict[str, Any]]]:
    return [e.request["messages"] for e in sim.log("oa") if e.status == 200]


@pytest.fixture
async def compacting(
    client: Client, registry: Registry, sim: SimServer, agent_worker: AgentWorker
) -> AsyncIterator[str]:
    Agent(
        "stock",
        model=OA,
        instructions="You count stock.",
        tools=[list_stock],
        context_window=6_000,
        keep_last=2,
        params={"max_tokens": 500},
        registry=registry,
    )
    sim.script(
        "oa",
        *(Reply(tool_calls=(Call(name="list_stock", arguments={"part": p}),)) for p in (1, 2, 3)),
        Reply(text="Parts 1 and 2 hold items 0-399 each."),  # the summary
        Reply(text="All three parts are stocked."),
    )
    async with agent_worker():
        run = await client.start("stock", "Count the stock of parts 1, 2 and 3.")
        yield run.id


async def test_a_long_conversation_is_compacted_and_the_compaction_journaled(
    client: Client, sim: SimServer, compacting: str
) -> None:
    done = await client.wait(compacting, timeout=30)
    assert done.state == RunState.COMPLETED, done.error
    assert output_of(done) == "All three parts are stocked."
    sent = requests(sim)
    assert len(sent) == 5
    summarising = sent[3]
    assert "summar" in summarising[0]["content"].lower()
    assert "part1-item399" in summarising[1]["content"]  # the replaced turns, as a transcript
    final = sent[4]
    texts = [m.get("content") or "" for m in final]
    assert final[0] == {"role": "system", "content": "You count stock."}
    assert texts[1].startswith("[Summary of 4 earlier message(s)")
    assert texts[1].endswith("Parts 1 and 2 hold items 0-399 each.")
    assert texts[2] == "Count the stock of parts 1, 2 and 3."  # the task is pinned
    assert inventory(3) in texts  # the last turn is kept verbatim ...
    assert inventory(1) not in texts and inventory(2) not in texts  # ... older ones summarised
    events = await client.journal(compacting)
    note = next(e for e in events if e.type == "note" and e.name == "context_compacted")
    replaced = note.payload["messages"]
    assert [m.get("content") for m in replaced if m["role"] == "tool"] == [
        inventory(1),
        inventory(2),
    ]
    assert note.payload["summary"] == "Parts 1 and 2 hold items 0-399 each."
    assert note.payload["tokens_after"] < note.payload["tokens_before"]


async def test_a_conversation_that_cannot_fit_fails_before_asking_the_provider(
    client: Client, registry: Registry, sim: SimServer, agent_worker: AgentWorker
) -> None:
    @kernos.tool
    def huge() -> str:
        """Everything."""
        return " ".join(f"w{i}" for i in range(20_000))

    Agent(
        "tiny",
        model=OA,
        tools=[huge],
        context_window=6_000,
        max_tool_output=1_000_000,
        params={"max_tokens": 500},
        registry=registry,
    )
    sim.script("oa", Reply(tool_calls=(Call(name="huge", arguments={}),)))
    async with agent_worker():
        done = await client.wait((await client.start("tiny", "dump it")).id, timeout=30)
    assert done.state == RunState.FAILED
    assert done.error is not None and "ContextOverflow" in done.error
    assert "cannot fit the model's context" in done.error and "5500" in done.error
    assert len(requests(sim)) == 1  # the oversize request was never sent
