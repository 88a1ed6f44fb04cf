"""The LLM provider simulator: chaos testing for agents, over real HTTP.

One server speaks OpenAI Chat Completions and Anthropic Messages for any number of named
providers (``/<provider>/v1/chat/completions``, ``/<provider>/v1/messages``), plain and
streamed, with tool calls and scripted replies, and injects the failures real providers have:
429 with ``retry-after``, 500, 503, 529, hangs, slow answers, malformed bodies, streams cut
before their end, dropped connections, outage windows, and a fault rate. Tests and the
``kernos sim`` command steer it in process or through its ``/_sim/`` control endpoint.

    with kernos.sim.serve(seed=1) as sim:
        sim.add_fault("openai", Fault(kind="rate_limit", count=1, retry_after=2))
        sim.script("openai", Reply(tool_calls=(ToolCall(name="lookup", arguments={"id": 7}),)))
        client = openai.OpenAI(base_url=sim.openai_base_url("openai"), api_key="sim")

Many concurrent tool-calling conversations need no script: a model named ``loop-N``
(``loop_model(N)``) answers N-1 calls of the first tool the request offers, then a final text,
deciding from the request alone (see ``_loop``). Answers come at once: the simulator adds no
latency unless a ``slow`` or ``hang`` fault says so.

The simulator shares no code with the gateway it tests: it depends on nothing in kernos but
``kernos.errors``.
"""

from kernos.sim._faults import (
    FAULT_KINDS,
    MIXED_DEFAULT,
    Fault,
    FaultKind,
    parse_provider_fault,
)
from kernos.sim._loop import PLAN_MARKER, PLAN_MODEL, loop_model
from kernos.sim._script import FinishReason, Reply, ToolCall, Usage
from kernos.sim._server import SimServer, serve
from kernos.sim._simulator import ALL_PROVIDERS, LogEntry, Simulator

__all__ = [
    "ALL_PROVIDERS",
    "FAULT_KINDS",
    "MIXED_DEFAULT",
    "PLAN_MARKER",
    "PLAN_MODEL",
    "Fault",
    "FaultKind",
    "FinishReason",
    "LogEntry",
    "Reply",
    "SimServer",
    "Simulator",
    "ToolCall",
    "Usage",
    "loop_model",
    "parse_provider_fault",
    "serve",
]
