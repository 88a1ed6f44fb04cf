"""One tool call as a durable call: validated, bounded, retried only when safe, journaled.

Events at the call's position (kind ``tool``): ``tool_attempt`` for each failed attempt that is
retried, then ``tool_completed`` (the arguments and the whole result) or ``tool_failed`` (the
arguments, the error worded for the model, and the traceback). Replay returns the recorded
result or raises the recorded failure without calling the tool again (guarantee 1); a worker
killed mid-call runs it again under the same ``kernos.idempotency_key()`` (guarantee 2).

Only a tool marked idempotent is retried, and only after a transient error (a timeout, a lost
connection, an error that says it is retryable): running a payment twice because the first
attempt timed out is the bug this rule prevents. Every other failure goes back to the model.
"""

from __future__ import annotations

import asyncio
import random
import time
import traceback
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import httpx
from pydantic_core import to_jsonable_python

from kernos.agents._loops import LoopGuard
from kernos.errors import ToolCallFailed, ToolRefused
from kernos.kernel import DurableCall

if TYPE_CHECKING:
    from kernos.agents._tools import Tool

#: where a run's loop guard lives in the call's scratch space (one per run per replay)
GUARD_KEY = "kernos.agents.loop_guard"
#: attempts of an idempotent tool (the first included)
MAX_ATTEMPTS = 3
BACKOFF_BASE = 0.5
BACKOFF_CAP = 8.0
#: traceback text kept in the journal
TRACEBACK_MAX = 8 * 1024
#: error text the model reads
FOR_MODEL_MAX = 1000


def guard_of(call: DurableCall, guard: LoopGuard | None) -> LoopGuard:
    """The run's loop guard: the agent's own, or one shared by all ``ctx.tool`` calls."""
    if guard is not None:
        return guard
    existing = call.scratch.get(GUARD_KEY)
    if existing is None:
        existing = call.scratch[GUARD_KEY] = LoopGuard()
    return existing


async def serve_tool(
    tool: Tool,
    call: DurableCall,
    arguments: dict[str, Any],
    *,
    guard: LoopGuard | None = None,
    call_id: str | None = None,
) -> Any:
    """Serve ``ctx.tool(tool, arguments)`` at ``call``'s position. ``call_id`` (the model's
    id for this tool call, when a model asked for it) is journaled with the call, for traces."""
    loop_guard = guard_of(call, guard)
    ident: dict[str, Any] = {"call_id": call_id} if call_id else {}
    if call.completed is not None:
        loop_guard.record(tool.name, arguments, ok=True)
        return call.completed.get("result")
    if call.failed is not None:
        error = recorded_failure(tool.name, call.failed)
        if not isinstance(error, ToolRefused):
            loop_guard.record(tool.name, arguments, ok=False)
        raise error
    refusal = loop_guard.check(tool.name, arguments)
    if refusal is not None:
        await call.fail(
            {
                "arguments": arguments,
                **ident,
                "kind": "refused",
                "reason": refusal.reason,
                "for_model": refusal.message,
            },
            n=0,
        )
        raise ToolRefused(tool.name, refusal.reason, refusal.message)
    attempt = len(call.attempts)
    while True:
        attempt += 1
        started = time.monotonic()
        try:
            value = await tool.invoke(arguments)
        except Exception as exc:
            duration = time.monotonic() - started
            kind, for_model = describe(tool, exc)
            payload: dict[str, Any] = {
                "arguments": arguments,
                **ident,
                "kind": kind,
                "for_model": for_model,
                "error": {
                    "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
                    "message": _clip(str(exc), FOR_MODEL_MAX),
                    "traceback": _clip("".join(traceback.format_exception(exc)), TRACEBACK_MAX),
                },
            }
            if tool.idempotent and attempt < MAX_ATTEMPTS and transient(exc):
                delay = backoff(attempt, exc)
                payload["retry_in"] = delay
                await call.attempt(payload, duration=duration, n=attempt)
                await asyncio.sleep(delay)
                continue
            await call.fail({**payload, "attempts": attempt}, n=attempt)
            loop_guard.record(tool.name, arguments, ok=False)
            raise ToolCallFailed(
                tool.name, kind, for_model, error_type=payload["error"]["type"], attempts=attempt
            ) from exc
        result = call.scrub(to_jsonable_python(value, fallback=repr))
        await call.complete(
            {"arguments": arguments, **ident, "result": result},
            duration=time.monotonic() - started,
            n=attempt,
        )
        loop_guard.record(tool.name, arguments, ok=True)
        return result


def recorded_failure(name: str, failed: Mapping[str, Any]) -> ToolCallFailed:
    """The error a recorded ``tool_failed`` event stands for (raised again on replay)."""
    for_model = str(failed.get("for_model", ""))
    if failed.get("kind") == "refused":
        return ToolRefused(name, str(failed.get("reason", "")), for_model)
    error = failed.get("error") or {}
    return ToolCallFailed(
        name,
        str(failed.get("kind", "error")),
        for_model,
        error_type=str(error.get("type", "")),
        attempts=int(failed.get("attempts", 1) or 1),
    )


def describe(tool: Tool, exc: BaseException) -> tuple[str, str]:
    """The failure's kind and the short text the model reads about it."""
    from kernos.agents._tools import ToolArgumentsInvalid

    if isinstance(exc, ToolArgumentsInvalid):
        return "invalid_arguments", f"{exc}. Call {tool.name} again with corrected arguments."
    if isinstance(exc, TimeoutError):
        limit = f" after {tool.timeout:g} s" if tool.timeout else ""
        return "timeout", f"{tool.name} timed out{limit}"
    text = str(exc).strip() or "(no message)"
    return "error", _clip(f"{tool.name} failed: {type(exc).__name__}: {text}", FOR_MODEL_MAX)


def transient(exc: BaseException) -> bool:
    """Whether the same call may succeed if made again (for idempotent tools only)."""
    if isinstance(exc, TimeoutError | ConnectionError | httpx.TransportError):
        return True
    return bool(getattr(exc, "retryable", False))


def backoff(attempt: int, exc: BaseException) -> float:
    """Full-jitter exponential backoff, or the wait the error asked for (``retry_after``)."""
    asked = getattr(exc, "retry_after", None)
    if isinstance(asked, int | float) and asked > 0:
        return float(min(asked, BACKOFF_CAP))
    return random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1)))


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]} ... [{len(text) - limit} characters cut] ... {text[-half:]}"
