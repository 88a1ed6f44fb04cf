"""The declarative ``Agent``: a tool-calling loop that is durable without trying.

The loop is ordinary agent code over ``RunContext``: each model call is ``ctx.llm`` and each
tool call ``ctx.tool``, so the conversation is rebuilt by replay after any crash (the recorded
answers and results come back; no completed tool call runs again) and the whole loop is in the
run's journal. What the loop adds is the policy a production agent needs:

- tool calls of one turn run concurrently, each its own journaled call;
- messages a person (or another run) sends on topic ``user`` join the conversation at the
  next turn (``kernos send RUN user "..."``);
- the loop breaker: a call that keeps failing is refused, the model is told why, and a model
  that persists is escalated (to a person, or the run fails with a clear error);
- tool output too large for the model is cut for the model, and kept whole in the journal;
- a structured answer is validated against a pydantic model, with bounded repair turns;
- another agent can be a tool: its call is a child run with its own journal.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal, NoReturn

from pydantic import BaseModel, ValidationError

from kernos.agents._keeper import ContextKeeper
from kernos.agents._loops import LoopGuard
from kernos.agents._mcp import McpServer, McpToolError
from kernos.agents._tools import Tool, as_tool
from kernos.errors import (
    AgentFailed,
    ChildRunFailed,
    ToolCallFailed,
    ToolRefused,
    ToolRejected,
    UsageError,
)
from kernos.gateway import Message, ToolCall, ToolSpec
from kernos.kernel import (
    DEFAULT_RETRY,
    REGISTRY,
    AgentSpec,
    Registry,
    RetryPolicy,
    RunContext,
)
from kernos.store import PinStatus, ToolDefinition

log = logging.getLogger("kernos.agents")

#: the topic on which people and other runs add messages to a conversation
USER_TOPIC = "user"
#: the topic on which a person takes over: their reply stands in for the model's next one
TAKEOVER_TOPIC = "takeover"

Escalation = Literal["fail", "person"]


class AgentTool:
    """Another agent offered to the model as a tool: calling it starts a child run."""

    def __init__(self, agent: Agent, description: str | None = None) -> None:
        self.agent = agent
        self.name = agent.name
        self.description = description or agent.description

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(
            name=self.name,
            description=self.description,
            parameters={
                "type": "object",
                "properties": {
                    "input": {"type": "string", "description": f"What to ask {self.name}."}
                },
                "required": ["input"],
                "additionalProperties": False,
            },
        )


class MemoryTool:
    """One of the two tools ``memory_tools`` gives an agent: ``remember`` or ``recall``.

    Served by the loop itself through ``ctx.memory`` (so each is a journaled memory read or
    write, with the query and the hits in the trace), not by a function.
    """

    def __init__(self, op: Literal["remember", "recall"], namespace: str, k: int) -> None:
        self.op = op
        self.name = op
        self.namespace = namespace
        self.k = k

    @property
    def spec(self) -> ToolSpec:
        if self.op == "remember":
            return ToolSpec(
                name="remember",
                description=(
                    "Save a fact worth knowing in later conversations (a preference, a "
                    "decision, an id). One fact per call, in a full sentence."
                ),
                parameters=_string_parameter("text", "The fact to remember."),
            )
        return ToolSpec(
            name="recall",
            description="Search what was remembered in earlier conversations.",
            parameters=_string_parameter("query", "Words to search for."),
        )

    async def call(self, ctx: RunContext, arguments: Mapping[str, Any]) -> str:
        key = "text" if self.op == "remember" else "query"
        value = arguments.get(key)
        if not isinstance(value, str) or not value.strip():
            return f"Error: {self.op} needs a non-empty string '{key}'."
        if self.op == "remember":
            await ctx.memory.put(self.namespace, value)
            return "Remembered."
        hits = await ctx.memory.search(self.namespace, value, self.k)
        if not hits:
            return "Nothing remembered matches."
        return "\n".join(f"- {h.memory.text}" for h in hits)


def memory_tools(namespace: str, *, k: int = 5) -> list[MemoryTool]:
    """Tools that let an agent remember facts in ``namespace`` and recall them later.

    Memories are kept per tenant (the run's); ``k`` is how many a recall returns.
    """
    if not isinstance(namespace, str) or not namespace.strip():
        raise UsageError("memory_tools needs a namespace, like 'acme-support'")
    return [MemoryTool("remember", namespace, k), MemoryTool("recall", namespace, k)]


def _string_parameter(name: str, description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {name: {"type": "string", "description": description}},
        "required": [name],
        "additionalProperties": False,
    }


ToolLike = Tool | AgentTool | MemoryTool | McpServer | Callable[..., Any]
AnyTool = Tool | AgentTool | MemoryTool


class Agent:
    """A tool-calling agent, registered under ``name`` when it is created.

    Define it at module level in the app module; ``kernos run NAME --input '"..."'`` starts
    it (a string input is the user's first message; ``{"messages": [...]}`` gives a whole
    conversation). The run's output is the final answer's text, or, with ``output=`` a pydantic
    model, the validated object as JSON.
    """

    def __init__(
        self,
        name: str,
        model: str,
        instructions: str = "",
        *,
        tools: Sequence[ToolLike | Agent] = (),
        max_turns: int = 30,
        output: type[BaseModel] | None = None,
        max_repairs: int = 2,
        tool_budget: int | None = None,
        max_same_failures: int = 3,
        escalate: Escalation = "fail",
        max_tool_output: int = 16_000,
        context_window: int | None = None,
        keep_last: int = 6,
        compact_at: float = 0.8,
        summary_model: str | None = None,
        pin_task: bool = True,
        params: Mapping[str, Any] | None = None,
        description: str = "",
        version: str = "1",
        max_concurrency: int | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        registry: Registry | None = None,
    ) -> None:
        if not name or not isinstance(name, str):
            raise UsageError("an Agent needs a name (the name runs are started with)")
        if not model or not isinstance(model, str):
            raise UsageError(f"agent {name!r} needs a model: a route name or 'provider:model'")
        if max_turns < 1:
            raise UsageError(f"agent {name!r}: max_turns must be at least 1, not {max_turns}")
        if max_repairs < 0 or max_tool_output < 200:
            raise UsageError(
                f"agent {name!r}: max_repairs must be >= 0 and max_tool_output >= 200 characters"
            )
        if escalate not in ("fail", "person"):
            raise UsageError(f"agent {name!r}: escalate must be 'fail' or 'person'")
        self.name = name
        self.model = model
        self.instructions = instructions
        self.description = description or (instructions.strip().splitlines() or [name])[0]
        self.max_turns = max_turns
        self.output = output
        self.max_repairs = max_repairs
        self.tool_budget = tool_budget
        self.max_same_failures = max_same_failures
        self.escalate = escalate
        self.max_tool_output = max_tool_output
        self.params = dict(params or {})
        self.pin_task = pin_task
        try:
            self.context = ContextKeeper(
                name,
                model,
                window=context_window,
                max_tokens=self.params.get("max_tokens"),
                keep_last=keep_last,
                compact_at=compact_at,
                summary_route=summary_model or model,
            )
        except ValueError as exc:
            raise UsageError(f"agent {name!r}: {exc}") from None
        self.version = version
        self.servers = [t for t in tools if isinstance(t, McpServer)]
        self.tools = _resolve(name, tools)
        (registry or REGISTRY).add(AgentSpec(name, version, self.run, None, max_concurrency, retry))

    def as_tool(self, description: str | None = None) -> AgentTool:
        """This agent as a tool of another agent (each call is a child run)."""
        return AgentTool(self, description)

    def __repr__(self) -> str:
        servers = "".join(f", mcp={s.name!r}" for s in self.servers)
        return f"Agent({self.name!r}, model={self.model!r}, tools={sorted(self.tools)}{servers})"

    # -- the loop ---------------------------------------------------------------------------

    async def run(self, ctx: RunContext, input: Any) -> Any:
        """The agent's code: what a worker runs (and replays) for each of its runs."""
        guard = LoopGuard(max_same_failures=self.max_same_failures, budget=self.tool_budget)
        first = _first_messages(input)
        messages = [*self._system(), *first]
        pinned = [m for m in first if m.role == "user"][:1] if self.pin_task else []
        tools, specs = await self._tools(ctx)
        repairs = 0
        refused_turns = 0
        for _turn in range(self.max_turns):
            messages.extend(await _arrived(ctx))
            taken, reply = await ctx.receive(TAKEOVER_TOPIC)
            if taken:  # a person answers in the model's place: their reply is the answer
                text = _text_of(reply)
                messages.append(Message(role="assistant", content=text))
                done, value, problem = self._final(text)
                if done:
                    return value
                raise AgentFailed(
                    self.name,
                    "invalid_output",
                    f"the reply a person gave in the model's place does not match "
                    f"{self._output_name()}: {problem}",
                )
            budget_spent = guard.budget is not None and guard.calls >= guard.budget
            offered = specs if not budget_spent else []
            messages = await self.context.fit(ctx, messages, offered, pinned)
            response = await ctx.llm(self.model, messages, tools=offered or None, **self.params)
            messages.append(response.message())
            if not response.tool_calls:
                done, value, problem = self._final(response.text)
                if done:
                    return value
                repairs += 1
                if repairs > self.max_repairs:
                    raise AgentFailed(
                        self.name,
                        "invalid_output",
                        f"the final answer did not match {self._output_name()} after "
                        f"{self.max_repairs} repair turn(s): {problem}",
                    )
                messages.append(Message(role="user", content=_repair_request(problem)))
                continue
            results, refusals = await self._call_tools(ctx, guard, tools, response.tool_calls)
            messages.extend(results)
            refused_turns = refused_turns + 1 if refusals else 0
            if refused_turns >= 2:
                messages.extend(await self._escalate(ctx, refusals))
                refused_turns = 0
        raise AgentFailed(
            self.name,
            "max_turns",
            f"no final answer after {self.max_turns} turns (max_turns); the conversation is in "
            f"the run's journal: kernos trace RUN",
        )

    def _system(self) -> list[Message]:
        text = self.instructions.strip()
        if self.output is not None:
            schema = json.dumps(self.output.model_json_schema(), separators=(",", ":"))
            text += (
                f"\n\nGive your final answer as one JSON object matching this JSON schema, "
                f"and nothing else: {schema}"
            )
        return [Message(role="system", content=text.strip())] if text.strip() else []

    def _output_name(self) -> str:
        return self.output.__name__ if self.output is not None else "text"

    def _final(self, text: str) -> tuple[bool, Any, str]:
        """(done, the run's output, what is wrong with it)."""
        if self.output is None:
            return True, text, ""
        try:
            value = self.output.model_validate_json(_unfenced(text))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'the answer'}: {e['msg']}"
                for e in exc.errors()[:8]
            )
            return False, None, problems
        return True, value.model_dump(mode="json"), ""

    async def _tools(self, ctx: RunContext) -> tuple[dict[str, AnyTool], list[ToolSpec]]:
        """This agent's tools by name, with those its MCP servers list now, and the specs the
        model is offered.

        Each server's list is cached (and refreshed when the server says it changed) and
        checked against the tool pins (``ctx.pin_tools``): a tool whose definition changed
        since it was pinned is not offered until an admin accepts the change, and a call of it
        is answered with an error instead of reaching the server. It stays in the table by
        name so that replay is deterministic whichever way its pin went while the run waited:
        a call made while it was trusted returns its recorded result, a withheld one its
        recorded error.
        """
        if not self.servers:
            return self.tools, [t.spec for t in self.tools.values()]
        tools = dict(self.tools)
        withheld: set[str] = set()
        for server in self.servers:
            listed = await server.tools()
            pins = await ctx.pin_tools(server.name, [_definition(t) for t in listed])
            for tool in listed:
                if tool.name in tools:
                    log.warning(
                        "agent %s: MCP server %s offers a tool named %r, which the agent "
                        "already has; the agent's own is kept",
                        self.name,
                        server.name,
                        tool.name,
                    )
                    continue
                if pins.get(tool.name) != PinStatus.CHANGED:
                    tools[tool.name] = tool
                    continue
                log.warning(
                    "agent %s: tool %r of MCP server %s changed since it was pinned and is not "
                    "offered to the model until an admin accepts the change: "
                    "kernos tools diff %s",
                    self.name,
                    tool.name,
                    server.name,
                    server.name,
                )
                tools[tool.name] = _withheld(server.name, tool)
                withheld.add(tool.name)
        return tools, [t.spec for name, t in tools.items() if name not in withheld]

    async def _call_tools(
        self,
        ctx: RunContext,
        guard: LoopGuard,
        tools: Mapping[str, AnyTool],
        calls: Sequence[ToolCall],
    ) -> tuple[list[Message], list[ToolRefused]]:
        """Answer every tool call of one turn, in the model's order.

        Tools run concurrently (each is its own journaled call, positions taken in order);
        agent tools start their child runs after them, then their results are awaited: a
        wait suspends the run, which must not happen while sibling calls are in flight.
        """
        refusals: list[ToolRefused] = []

        async def one(call: ToolCall, tool: Tool | MemoryTool) -> str:
            if isinstance(tool, MemoryTool):
                return await tool.call(ctx, call.arguments)
            try:
                result = await ctx.tool(
                    tool, call.arguments, guard=guard, approved=True, call_id=call.id
                )
            except ToolRefused as exc:
                refusals.append(exc)
                return f"Refused: {exc.for_model}"
            except ToolCallFailed as exc:
                return f"Error: {exc.for_model}"
            return self._for_model(result)

        answers: dict[int, str] = {}
        plain: list[tuple[int, ToolCall, Tool | MemoryTool]] = []
        children: list[tuple[int, ToolCall, AgentTool]] = []
        for i, call in enumerate(calls):
            target = tools.get(call.name)
            if call.raw_arguments is not None:
                answers[i] = (
                    f"Error: the arguments of {call.name} are not a JSON object "
                    f"({call.raw_arguments[:200]!r}); call it again with valid JSON arguments."
                )
            elif target is None:
                answers[i] = (
                    f"Error: there is no tool named {call.name!r}; the tools are: "
                    f"{', '.join(sorted(tools)) or 'none'}."
                )
            elif isinstance(target, AgentTool):
                children.append((i, call, target))
            else:
                plain.append((i, call, target))
        # Approvals first, one after another: asking suspends the run, which must not
        # happen while sibling calls are in flight. A rejected call is answered as such.
        approved: list[tuple[int, ToolCall, Tool | MemoryTool]] = []
        for i, call, tool in plain:
            if isinstance(tool, Tool) and tool.approval_question(call.arguments):
                try:
                    edited = await ctx.approve_tool(tool, call.arguments)
                except ToolRejected as exc:
                    answers[i] = f"Rejected: {exc.for_model}"
                    continue
                call = call.model_copy(update={"arguments": edited})
            approved.append((i, call, tool))
        plain = approved
        done = await asyncio.gather(*(one(call, tool) for _, call, tool in plain))
        answers.update({i: text for (i, _, _), text in zip(plain, done, strict=True)})
        handles = [
            (i, await ctx.spawn(target.agent.name, _child_input(call)))
            for i, call, target in children
        ]
        for i, handle in handles:
            try:
                answers[i] = self._for_model(await handle.result())
            except ChildRunFailed as exc:
                answers[i] = f"Error: {handle.agent} failed: {exc.error or exc.state}"
        messages = [
            Message(role="tool", tool_call_id=call.id, name=call.name, content=answers[i])
            for i, call in enumerate(calls)
        ]
        return messages, refusals

    def _for_model(self, result: Any) -> str:
        """A tool's result as the model reads it: cut when larger than ``max_tool_output``
        (the journal keeps it whole)."""
        text = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)
        if len(text) <= self.max_tool_output:
            return text
        keep = self.max_tool_output - 160
        return (
            f"{text[:keep]}\n[output truncated: the first {keep} of {len(text)} characters are "
            f"shown; the whole output is kept in the run's journal]"
        )

    async def _escalate(self, ctx: RunContext, refusals: Sequence[ToolRefused]) -> list[Message]:
        """The model was told a call is refused and asked for it again: stop the loop."""
        why = "; ".join(f"{r.tool}: {r.for_model}" for r in refusals)
        if self.escalate == "fail":
            raise AgentFailed(
                self.name,
                "loop",
                f"the model kept asking for refused tool calls after being told why ({why}); "
                f"set escalate='person' to have a person step in instead",
            )
        ctx.note("escalated", lambda: {"to": "person", "why": why})
        reply = await ctx.wait_for_message(USER_TOPIC)
        return [Message(role="user", content=_text_of(reply))]


_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


def _unfenced(text: str) -> str:
    """Models often wrap JSON in a Markdown code fence; the object inside is the answer."""
    match = _FENCE.match(text)
    return match.group(1) if match else text.strip()


def _repair_request(problem: str) -> str:
    return (
        f"Your final answer is not valid: {problem}. Answer again with only the corrected JSON "
        f"object."
    )


def _definition(tool: Tool) -> ToolDefinition:
    """What a model is told about an MCP tool: what its pin covers."""
    return ToolDefinition(tool.name, tool.description, tool.parameters)


def _withheld(server: str, tool: Tool) -> Tool:
    """A stand-in for an MCP tool whose definition changed since it was pinned: same name,
    never offered, and a call of it fails (journaled like any failure, so that the loop
    breaker stops a model that insists) without reaching the server."""
    why = (
        f"{tool.name} is withheld: its definition on MCP server {server!r} changed since it "
        f"was approved, and an admin must review the change before it can be used"
    )

    async def refuse(**_: Any) -> NoReturn:
        raise McpToolError(why)

    return replace(tool, fn=refuse, check=None, idempotent=False)


def _resolve(agent: str, tools: Sequence[ToolLike | Agent]) -> dict[str, AnyTool]:
    resolved: dict[str, AnyTool] = {}
    for item in tools:
        tool: AnyTool
        if isinstance(item, Agent):
            tool = item.as_tool()
        elif isinstance(item, Tool | AgentTool | MemoryTool):
            tool = item
        elif isinstance(item, McpServer):
            continue  # listed at run time
        else:
            tool = as_tool(item)
        if tool.name in resolved:
            raise UsageError(f"agent {agent!r} has two tools named {tool.name!r}")
        resolved[tool.name] = tool
    return resolved


def _first_messages(input: Any) -> list[Message]:
    """The conversation a run starts with: a string is the user's first message."""
    if isinstance(input, str):
        return [Message(role="user", content=input)]
    if isinstance(input, Mapping) and "messages" in input:
        return [Message.model_validate(m) for m in input["messages"]]
    if isinstance(input, Mapping) and isinstance(input.get("message"), str):
        return [Message(role="user", content=input["message"])]
    if input is None:
        return []
    return [Message(role="user", content=json.dumps(input, ensure_ascii=False))]


async def _arrived(ctx: RunContext) -> list[Message]:
    """Messages sent to the run on topic ``user`` since the last turn."""
    arrived: list[Message] = []
    while True:
        got, value = await ctx.receive(USER_TOPIC)
        if not got:
            return arrived
        arrived.append(Message(role="user", content=_text_of(value)))


def _text_of(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("text"), str):
        return str(value["text"])
    return json.dumps(value, ensure_ascii=False)


def _child_input(call: ToolCall) -> Any:
    value = call.arguments.get("input")
    return value if value is not None else call.arguments
