"""(k) the support workload of (i) on the OpenAI Agents SDK and on LangGraph's prebuilt ReAct
agent; runs with ``.bench-venv``'s python (``make bench-peers``). Also the workload itself and
the floor, which ``agents.py`` imports: kernos is not imported here.

The workload: a support agent (``INSTRUCTIONS``) asked ``QUESTION``, with one tool,
``lookup_order(order_id)``, a trivial ``async def``; the model is the simulator's tool-loop
model ``loop-10``, which asks for ``lookup_order`` nine times and then answers (ten model
turns). A conversation is right when its answer is exactly ``EXPECTED`` and the tool ran nine
times.

The floor: the same ten model calls made with the official ``openai.AsyncOpenAI`` client
(``max_retries=0``) through its documented low-level ``post()`` with a plain JSON body, the
answer read as JSON (exactly how kernos' gateway calls it), the conversation kept as a list of
dicts, and ``lookup_order`` awaited directly: what any agent loop has to do, with nothing
recorded anywhere. ``typed`` makes the same calls through ``chat.completions.create()`` (the
SDK's request transform and response models), which is how the peers call the model; it is
printed for information.

``agents.py`` (kernos' venv) starts the simulator and runs this script with the job on standard
input as JSON: the simulator's OpenAI base URL, the rounds, the warm-up, a directory for the
SQLite checkpoint files, and ``out``, the file the results go to as JSON (seconds per
conversation per system, the versions, any error). In each round every system runs one
conversation, the order rotating from round to round, so that drift in the machine's speed
falls on all alike. The systems:

* ``floor``: as above, measured here in the peers' own process, like (e)'s floors;
* ``openai-agents``: ``Runner.run(agent, QUESTION)``, the agent's model an
  ``OpenAIChatCompletionsModel`` over an ``AsyncOpenAI(base_url=<simulator>, max_retries=0)``,
  the tool a ``function_tool``, tracing disabled (``set_tracing_disabled(True)``). The SDK keeps
  the conversation in memory only: a crash loses it;
* ``langgraph (sqlite, sync)``: ``langgraph.prebuilt.create_react_agent`` over
  ``langchain_openai.ChatOpenAI(base_url=<simulator>, max_retries=0)`` with
  ``langgraph-checkpoint-sqlite``'s ``AsyncSqliteSaver`` (aiosqlite; the file on the repo's disk
  in WAL mode with synchronous=FULL, kernos' settings), ``ainvoke(..., durability="sync")``:
  each step's checkpoint is committed before the next step starts, the guarantee kernos gives;
* ``langgraph (sqlite, async)``: the same with LangGraph's default ``durability="async"`` (the
  checkpoint is written while the next step already runs), for information;
* ``langgraph (no checkpointer)``: the graph alone, for information.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import traceback
import uuid
import warnings
from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import Any

#: ten model turns: nine tool calls and the answer (kernos.sim.loop_model(TURNS))
TURNS = 10
MODEL = f"loop-{TURNS}"
INSTRUCTIONS = "You are ACME's support agent. Look an order up before you answer about it."
QUESTION = "Where is my order A-17?"
#: the simulator's loop model fills ``order_id`` with "x"; its answer quotes the last result
EXPECTED = f"sim loop done after {TURNS - 1} tool results: order x: shipped"

CALLS = [0]  # lookup_order's calls, to check that every conversation made its nine


async def lookup_order(order_id: str) -> str:
    """Find an order by its id.

    Args:
        order_id: The order's id, like A-17.
    """
    CALLS[0] += 1
    return f"order {order_id}: shipped"


FLOOR_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "lookup_order",
            "description": "Find an order by its id.",
            "parameters": {
                "type": "object",
                "properties": {
                    "order_id": {"type": "string", "description": "The order's id, like A-17."}
                },
                "required": ["order_id"],
                "additionalProperties": False,
            },
        },
    }
]


async def floor_conversation(client: Any, *, typed: bool = False) -> str:
    """The workload's ten model calls and nine tool calls, with nothing but the SDK client
    (``openai.AsyncOpenAI``: typed as Any so that this file needs no kernos venv to import)."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": INSTRUCTIONS},
        {"role": "user", "content": QUESTION},
    ]
    for _ in range(TURNS + 1):
        body = {"model": MODEL, "messages": messages, "tools": FLOOR_TOOLS}
        if typed:
            response = await client.chat.completions.create(**body)
            message = response.choices[0].message.model_dump(exclude_none=True)
        else:
            data = await client.post("/chat/completions", cast_to=dict[str, Any], body=body)
            message = data["choices"][0]["message"]
        messages.append(message)
        calls = message.get("tool_calls")
        if not calls:
            return str(message.get("content"))
        for call in calls:
            result = await lookup_order(**json.loads(call["function"]["arguments"]))
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})
    raise RuntimeError(f"the floor conversation did not end in {TURNS + 1} turns")


# -- the peers --------------------------------------------------------------------------------

Conversation = Callable[[], Awaitable[str]]


def _drop_own_directory() -> None:
    """This file's directory holds kernos' ``agents.py``, which would shadow the OpenAI Agents
    SDK's ``agents`` package: it leaves the import path before the SDK is imported."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]


def _openai_agents(base_url: str) -> tuple[Conversation, Callable[[], Awaitable[None]]]:
    from agents import (
        Agent,
        OpenAIChatCompletionsModel,
        Runner,
        function_tool,
        set_tracing_disabled,
    )
    from openai import AsyncOpenAI

    set_tracing_disabled(True)
    client = AsyncOpenAI(base_url=base_url, api_key="sim", max_retries=0)
    agent = Agent(
        name="support",
        instructions=INSTRUCTIONS,
        model=OpenAIChatCompletionsModel(model=MODEL, openai_client=client),
        tools=[function_tool(lookup_order)],
    )

    async def conversation() -> str:
        result = await Runner.run(agent, QUESTION, max_turns=TURNS + 1)
        return str(result.final_output)

    return conversation, client.close


def _langgraph(
    base_url: str, checkpointer: Any, durability: str | None
) -> tuple[Conversation, Callable[[], Awaitable[None]]]:
    from langchain_openai import ChatOpenAI
    from langgraph.prebuilt import create_react_agent

    model = ChatOpenAI(model=MODEL, base_url=base_url, api_key="sim", max_retries=0)  # type: ignore[arg-type]
    with warnings.catch_warnings():  # create_react_agent is deprecated in LangGraph 1.x
        warnings.simplefilter("ignore")
        graph = create_react_agent(
            model, [lookup_order], prompt=INSTRUCTIONS, checkpointer=checkpointer
        )
    extra = {"durability": durability} if durability else {}

    async def conversation() -> str:
        config = {"configurable": {"thread_id": uuid.uuid4().hex}, "recursion_limit": 4 * TURNS}
        out = await graph.ainvoke({"messages": [("user", QUESTION)]}, config, **extra)
        return str(out["messages"][-1].content)

    async def close() -> None:
        return None

    return conversation, close


async def _sqlite_saver(path: str) -> tuple[Any, Callable[[], Awaitable[None]]]:
    import aiosqlite
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    conn = await aiosqlite.connect(path)
    await conn.execute("PRAGMA journal_mode=WAL")
    await conn.execute("PRAGMA synchronous=FULL")
    saver = AsyncSqliteSaver(conn)
    await saver.setup()
    return saver, conn.close


async def _timed(conversation: Conversation) -> float:
    calls = CALLS[0]
    start = time.perf_counter()
    answer = await conversation()
    seconds = time.perf_counter() - start
    if answer != EXPECTED or CALLS[0] - calls != TURNS - 1:
        raise RuntimeError(
            f"wrong conversation: answer {answer!r} (expected {EXPECTED!r}), "
            f"{CALLS[0] - calls} tool calls (expected {TURNS - 1})"
        )
    return seconds


async def _run(job: dict[str, Any]) -> dict[str, Any]:
    from openai import AsyncOpenAI

    base_url = job["openai_base"]
    floor_client = AsyncOpenAI(base_url=base_url, api_key="sim", max_retries=0)
    systems: dict[str, Conversation] = {
        "floor": lambda: floor_conversation(floor_client),
        "floor (create)": lambda: floor_conversation(floor_client, typed=True),
    }
    closers: list[Callable[[], Awaitable[None]]] = [floor_client.close]
    errors: dict[str, str] = {}

    def add(name: str, make: Callable[[], tuple[Conversation, Callable[[], Awaitable[None]]]]):
        try:
            conversation, close = make()
        except Exception:
            errors[name] = traceback.format_exc(limit=3)
            return
        systems[name] = conversation
        closers.append(close)

    add("openai-agents", lambda: _openai_agents(base_url))
    savers = []
    for durability in ("sync", "async"):
        path = os.path.join(job["tmp"], f"langgraph-{durability}.db")
        try:
            saver, close = await _sqlite_saver(path)
        except Exception:
            errors[f"langgraph (sqlite, {durability})"] = traceback.format_exc(limit=3)
            continue
        savers.append(close)
        add(
            f"langgraph (sqlite, {durability})",
            lambda s=saver, d=durability: _langgraph(base_url, s, d),
        )
    add("langgraph (no checkpointer)", lambda: _langgraph(base_url, None, None))

    seconds: dict[str, list[float]] = {name: [] for name in systems}
    try:
        for _ in range(job["warmup"]):
            for name, conversation in list(systems.items()):
                try:
                    await _timed(conversation)
                except Exception:
                    errors[name] = traceback.format_exc(limit=3)
                    del systems[name]
        names = list(systems)
        for r in range(job["rounds"]):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                if name in systems:
                    seconds[name].append(await _timed(systems[name]))
    finally:
        for close in closers + savers:
            await close()
    return {"seconds": {k: v for k, v in seconds.items() if v}, "errors": errors}


def _versions() -> dict[str, str]:
    out = {}
    for package in (
        "openai",
        "openai-agents",
        "langgraph",
        "langgraph-prebuilt",
        "langgraph-checkpoint-sqlite",
        "langchain-openai",
        "langchain-core",
    ):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "-"
    return out


def main() -> int:
    job = json.load(sys.stdin)
    _drop_own_directory()
    os.environ["LANGSMITH_TRACING"] = "false"
    os.environ["LANGCHAIN_TRACING_V2"] = "false"
    result = asyncio.run(_run(job))
    result["versions"] = _versions()
    result["python"] = sys.version.split()[0]
    with open(job["out"], "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
