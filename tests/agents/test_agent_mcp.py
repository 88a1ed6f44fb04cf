"""An Agent whose tools come from a real MCP server process (stdio): listed at run time, each
call a journaled step like any other tool's, an MCP error going back to the model."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
from _gateway_support import OA

from kernos.agents import Agent, McpServer
from kernos.kernel import Client, Registry, Worker, output_of
from kernos.sim import Reply, SimServer
from kernos.sim import ToolCall as Call
from kernos.store import RunState

AgentWorker = Callable[..., AbstractAsyncContextManager[Worker]]
SERVER = Path(__file__).parent / "mcp_servers" / "tools_server.py"


@pytest.fixture
async def calc() -> AsyncIterator[McpServer]:
    server = McpServer.stdio("calc", sys.executable, [str(SERVER)], timeout=20)
    try:
        yield server
    finally:
        await server.aclose()


async def test_an_agent_calls_tools_of_an_mcp_server(
    client: Client,
    registry: Registry,
    sim: SimServer,
    agent_worker: AgentWorker,
    calc: McpServer,
) -> None:
    Agent("mathy", model=OA, tools=[calc], registry=registry)
    sim.script(
        "oa",
        Reply(
            tool_calls=(
                Call(name="add", arguments={"a": 2, "b": 3}),
                Call(name="fail", arguments={"message": "ledger locked"}),
                Call(name="add", arguments={"a": "two"}),
            )
        ),
        Reply(text="2 + 3 = 5"),
    )
    async with agent_worker():
        done = await client.wait((await client.start("mathy", "add 2 and 3")).id, timeout=60)
    assert done.state == RunState.COMPLETED, done.error
    assert output_of(done) == "2 + 3 = 5"
    offered = {t["function"]["name"] for t in sim.log("oa")[0].request["tools"]}
    assert {"add", "refund", "fail"} <= offered
    answers = [m["content"] for m in sim.log("oa")[-1].request["messages"] if m["role"] == "tool"]
    assert answers[0] == "5"
    assert answers[1].startswith("Error: fail failed") and "ledger locked" in answers[1]
    assert answers[2].startswith("Error: invalid arguments for add")
    events = await client.journal(done.id)
    tools = sorted((e for e in events if e.type.startswith("tool_")), key=lambda e: e.step or 0)
    assert [(e.type, e.name) for e in tools] == [
        ("tool_completed", "add"),
        ("tool_failed", "fail"),
        ("tool_failed", "add"),
    ]
