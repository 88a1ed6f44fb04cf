"""``RunContext``: what agent code sees. Every call on it is a journaled, replayable step."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel

from kernos.errors import InfrastructureError, ToolRejected, UsageError
from kernos.kernel._calls import DurableTool
from kernos.kernel._execution import Execution, StoreDown
from kernos.kernel._memory import RunMemory
from kernos.store import PinStatus, ToolDefinition


def _decision(payload: Mapping[str, Any], model: type[BaseModel] | None) -> HumanDecision:
    answer = payload.get("answer")
    if model is not None and answer is not None:
        answer = model.model_validate(answer)
    return HumanDecision(
        approved=bool(payload.get("approved")),
        answer=answer,
        by=payload.get("by"),
        reason=payload.get("reason"),
        expired=payload.get("state") == "expired",
        approval_id=str(payload.get("id")),
    )


def _seconds(value: float | timedelta) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds < 0:
        raise UsageError(f"a duration cannot be negative ({seconds} s)")
    return seconds


class ChildHandle:
    """A child run started with ``ctx.spawn``; ``await handle.result()`` waits durably."""

    def __init__(self, execution: Execution, run_id: str, agent: str) -> None:
        self._execution = execution
        self.run_id = run_id
        self.agent = agent

    async def result(self) -> Any:
        """The child's output; raises ``ChildRunFailed`` if it failed or was cancelled.

        While the child runs, the parent holds nothing in any worker (guarantee 4).
        """
        return await self._execution.child_result(self.run_id)


@dataclass(frozen=True, slots=True)
class HumanDecision:
    """What a person decided (``ctx.ask_human``), or what the timeout decided for them."""

    approved: bool
    #: the person's answer (validated against the schema asked with), edited tool arguments,
    #: or the declared default after a timeout
    answer: Any
    by: str | None
    reason: str | None
    expired: bool
    approval_id: str


class RunContext:
    """The durable context of one run.

    Agent code must be deterministic given the results of these calls: take time, randomness
    and ids from ``now()``, ``uuid()`` and ``random()``, and do I/O inside ``step``. Replay then
    takes the same path, and a divergence is reported as ``DeterminismError`` (guarantee 8).
    """

    def __init__(self, execution: Execution) -> None:
        self._x = execution
        #: long-term memory of the run's tenant: ``await ctx.memory.put(namespace, text)``,
        #: ``await ctx.memory.search(namespace, query, k)``; each call is journaled
        self.memory = RunMemory(execution)

    @property
    def run_id(self) -> str:
        return self._x.run_id

    @property
    def agent(self) -> str:
        return self._x.run.agent

    @property
    def agent_version(self) -> str:
        return self._x.run.agent_version

    @property
    def parent_id(self) -> str | None:
        return self._x.run.parent_id

    async def step(self, name: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` once and journal its result (guarantees 1 and 2).

        On replay the recorded result is returned and ``fn`` is not called. A failing attempt
        is journaled and retried per the function's ``@kernos.retry`` policy (or the agent's);
        when attempts run out, ``StepFailed`` is raised here. ``fn`` may be sync (it runs on a
        thread) or async. Its result must be JSON (or a pydantic model): what is returned is
        what replay will return. Inside ``fn``, ``kernos.idempotency_key()`` is stable.
        """
        if not isinstance(name, str) or not name:
            raise UsageError("ctx.step needs a non-empty step name as its first argument")
        return await self._x.step(name, fn, args, kwargs)

    async def llm(
        self,
        route: str,
        messages: Sequence[Any],
        tools: Sequence[Any] | None = None,
        **params: Any,
    ) -> Any:
        """Ask a model of ``route`` (a route name from kernos.toml, or ``provider:model``).

        A journaled call: returns a ``kernos.LLMResponse`` (``.text``, ``.tool_calls``,
        ``.finish_reason``, ``.usage``, ``.cost``, ``.model``, ``.provider``), and replay returns
        the recorded one. Failed attempts are retried with backoff or fall back along the
        route, each journaled; when every model is down the run waits (waiting for: provider)
        and resumes by itself. ``messages`` and ``tools`` are ``kernos.Message``/``ToolSpec``
        or plain dicts in the OpenAI shape. Options: ``stream=True`` (and ``on_delta=`` to see
        the text as it comes), ``deadline=`` seconds, and any model parameter (``max_tokens``,
        ``temperature``, ...). Raises ``LLMCallFailed`` when no model can answer.
        """
        if not isinstance(route, str) or not route:
            raise UsageError("ctx.llm needs a route name or 'provider:model' as first argument")
        return await self._x.service_call("llm", route, (route, messages, tools), params)

    async def tool(
        self, tool: DurableTool, arguments: Mapping[str, Any] | None = None, /, **options: Any
    ) -> Any:
        """Call ``tool`` (a ``@kernos.tool`` function or an MCP server's tool) with ``arguments``.

        A journaled call: the arguments are validated first, the tool runs once (retried on a
        transient error only if it is marked idempotent), and replay returns the recorded result
        without calling it again. Inside the tool, ``kernos.idempotency_key()`` is stable. A
        failure raises ``ToolCallFailed`` (its ``for_model`` text is what a model should read).
        The same call failing again and again in this run is refused (``ToolRefused``) rather
        than made again: see ``kernos.agents.LoopGuard``.
        """
        serve = getattr(tool, "serve", None)
        name = getattr(tool, "name", None)
        if serve is None or not isinstance(name, str):
            raise UsageError(
                f"ctx.tool needs a kernos tool, not {tool!r}: decorate the function with "
                f"@kernos.tool (or wrap it: kernos.as_tool(fn))"
            )
        if arguments is not None and not isinstance(arguments, Mapping):
            raise UsageError(f"the arguments of tool {name!r} must be a dict, not {arguments!r}")
        args = dict(arguments or {})
        if not options.pop("approved", False):
            args = await self.approve_tool(tool, args)
        return await self._x.call("tool", name, serve, (args,), options)

    async def send(self, run_id: str, topic: str, value: Any = None) -> None:
        """Send ``value`` (JSON) to run ``run_id`` on ``topic``; it wakes the run if it waits.

        Sent exactly once: the message and this run's journal entry commit together, so a
        replay (or a crash just after) never sends it again. A message to a finished run
        raises ``InvalidState``.
        """
        if not isinstance(run_id, str) or not run_id:
            raise UsageError("ctx.send needs the id of the run to send to")
        await self._x.send(run_id, topic, value)

    async def ask_human(
        self,
        question: str,
        schema: type[BaseModel] | Mapping[str, Any] | None = None,
        *,
        timeout: float | timedelta | None = None,
        on_timeout: Literal["reject", "approve", "escalate"] = "reject",
        default: Any = None,
        details: Mapping[str, Any] | None = None,
        escalation_timeout: float | timedelta | None = None,
    ) -> HumanDecision:
        """Ask a person and wait, durably, for their decision.

        The run waits (waiting for: approval) and holds nothing until someone approves or
        rejects (``kernos approvals approve|reject ID``, or the API). An approval may carry an
        answer, checked against ``schema`` (a pydantic model, or a JSON schema) before it is
        recorded; with a pydantic model, ``answer`` is an instance of it. After ``timeout``
        the decision is ``on_timeout`` (with ``default`` as the answer). ``"escalate"``: at
        ``timeout`` the approval is escalated instead (marked so in ``kernos approvals list``,
        audited, and announced again: ``approval.escalated`` to the webhook's escalation URL)
        and keeps waiting for a person; after ``escalation_timeout`` more (if given) it is
        rejected with ``default``. Decided once: replay returns the recorded decision.
        """
        if not isinstance(question, str) or not question.strip():
            raise UsageError("ctx.ask_human needs a question for the person")
        model = schema if isinstance(schema, type) and issubclass(schema, BaseModel) else None
        json_schema: dict[str, Any] | None = (
            model.model_json_schema()
            if model is not None
            else (dict(schema) if isinstance(schema, Mapping) else None)
        )
        if on_timeout not in ("reject", "approve", "escalate"):
            raise UsageError(
                f"ctx.ask_human: on_timeout must be 'reject', 'approve' or 'escalate', "
                f"not {on_timeout!r}"
            )
        seconds = None if timeout is None else _seconds(timeout)
        payload = await self._x.ask_human(
            "question",
            question,
            {**dict(details or {}), **({"schema": json_schema} if json_schema else {})},
            seconds,
            _on_timeout(on_timeout, default, escalation_timeout),
        )
        return _decision(payload, model)

    async def approve_tool(self, tool: DurableTool, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """The arguments to call ``tool`` with, after a person's approval if it requires one
        (a person may edit them); ``ToolRejected`` if they reject it."""
        ask = getattr(tool, "approval_question", None)
        question = ask(arguments) if callable(ask) else None
        if not question:
            return dict(arguments)
        payload = await self._x.ask_human(
            f"tool:{tool.name}",
            str(question),
            {"tool": tool.name, "arguments": dict(arguments)},
            getattr(tool, "approval_timeout", None),
            _on_timeout(
                getattr(tool, "on_approval_timeout", "reject"),
                None,
                getattr(tool, "escalation_timeout", None),
            ),
        )
        decision = _decision(payload, None)
        if not decision.approved:
            raise ToolRejected(tool.name, decision.by, decision.reason)
        if isinstance(decision.answer, Mapping):  # the person edited the arguments
            return dict(decision.answer)
        return dict(arguments)

    async def receive(self, topic: str) -> tuple[bool, Any]:
        """Take the next message sent to this run on ``topic``, if there is one; never waits.

        Returns ``(True, value)`` or ``(False, None)``. Journaled like every call, so replay
        sees the same answer. To wait for a message, use ``wait_for_message``.
        """
        return await self._x.receive(topic)

    def note(self, name: str, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Journal a decision the agent made (``make()``'s JSON payload) at this position.

        On replay the recorded payload is returned and ``make`` is not called: a decision made
        once (what a context compaction replaced, say) stays made, and the trace shows it.
        """
        return self._x.note(name, make)

    async def sleep(self, duration: float | timedelta) -> None:
        """Wait durably: the run is parked in the store and woken when the timer is due."""
        await self._x.sleep(_seconds(duration))

    async def wait_for_message(
        self, topic: str, timeout: float | timedelta | None = None, default: Any = None
    ) -> Any:
        """The next message sent to this run on ``topic`` (``kernos send RUN TOPIC JSON``).

        Returns ``default`` if ``timeout`` passes first. Messages sent before the call wait in
        the run's mailbox; each is delivered once.
        """
        seconds = None if timeout is None else _seconds(timeout)
        return await self._x.wait_for_message(topic, seconds, default)

    def now(self) -> datetime:
        """The current time (UTC), recorded so that replay sees the same value."""
        return self._x.now()

    def uuid(self) -> uuid.UUID:
        """A random UUID, recorded for replay."""
        return self._x.uuid()

    def random(self) -> float:
        """A uniform random float in [0, 1), recorded for replay."""
        return self._x.random()

    async def spawn(
        self, agent: str, input: Any = None, *, version: str | None = None
    ) -> ChildHandle:
        """Start a child run of ``agent``; linked to this run, with its own journal."""
        child_id = await self._x.spawn(agent, input, version)
        return ChildHandle(self._x, child_id, agent)

    async def pin_tools(
        self, server: str, definitions: Sequence[ToolDefinition]
    ) -> dict[str, PinStatus]:
        """Check what MCP server ``server`` lists now against its pins: each tool's status.

        A tool seen for the first time is pinned (``"new"``); one whose definition (name,
        description, input schema) differs from the pinned one is ``"changed"`` and must not
        be offered to a model until an admin accepts it (``kernos tools accept``). The first
        pin and the first sighting of a change are audited, attributed to this run.

        Not a journaled step, like the tool listing it checks: it is asked again at every
        replay, so a change accepted (or seen) while the run waited takes effect when it
        resumes; code that offers tools by it must keep replay deterministic itself (the
        ``Agent`` does: a withheld tool stays callable by name, and a call it made while it was
        trusted replays from the journal). A store failure is the store's (the run is replayed
        once it answers), not the agent's.
        """
        try:
            return await self._x.store.observe_tools(
                server, definitions, actor=f"run:{self._x.run_id}"
            )
        except InfrastructureError as exc:
            raise StoreDown(exc) from exc


def _on_timeout(
    on_timeout: str, default: Any, escalation_timeout: float | timedelta | None
) -> dict[str, Any]:
    """What the deadline of an approval does, as the execution reads it."""
    if on_timeout != "escalate":
        return {"approved": on_timeout == "approve", "answer": default}
    after = None if escalation_timeout is None else _seconds(escalation_timeout)
    return {"approved": False, "answer": default, "escalate": True, "escalation_timeout": after}
