"""The tool-loop responder: any number of concurrent tool-calling conversations, unscripted.

A script is one queue per provider, so conversations running at once would take each other's
replies. A request for a model named ``loop-N`` (``N`` from 1) is answered from the request
itself instead, so that every conversation gets the same answers however many run at once:

- while the conversation holds fewer than ``N - 1`` tool results, a call of the *first* tool the
  request offers, with arguments built from that tool's JSON schema: each required property
  gets a value of its type (``"x"`` for a string, ``1`` for a number or integer, ``true``,
  ``[]``, an object built the same way, the first ``enum`` value);
- then the final text ``sim loop done after K tool results: <the last tool result>``.

A conversation on ``loop-10`` is therefore ten model turns: nine tool calls and the answer. A
request that offers no tool gets the final text at once. The reply depends on the request only,
so a retried request gets the same one; a scripted reply that matches the request still comes
first, and faults apply as to any request. Both families and streaming work as for any reply.

The switch is the model's name, not a request header or a scripted reply, because every client
lets its user name the model, agent frameworks that build their own requests included.

**Planned conversations.** A request for the model ``plan`` is answered from a plan that the
conversation itself carries: the first message holding ``[sim-plan]`` followed by a JSON list of
turns, each ``{"tool": NAME, "arguments": {...}}`` or ``{"text": "..."}``. The turn played is the
one at the index of how many tool results the conversation holds, so many different
conversations (a lookup here, a refund there) run at once, and a retried or replayed request
gets the same turn. The chaos scenarios drive the support agent this way. A conversation without
a plan (or past its last turn) gets the final text ``sim plan done after K tool results``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from kernos.sim._script import Reply, ToolCall

__all__ = [
    "PLAN_MARKER",
    "PLAN_MODEL",
    "loop_model",
    "loop_reply",
    "loop_turns",
    "plan_reply",
    "schema_arguments",
]

_LOOP = re.compile(r"loop-([1-9][0-9]{0,5})")
_CLIP = 60

#: the model whose replies follow the plan the conversation carries
PLAN_MODEL = "plan"
#: what precedes a conversation's plan (a JSON list of turns) in one of its messages
PLAN_MARKER = "[sim-plan]"


def loop_model(turns: int) -> str:
    """The model name whose conversations take ``turns`` model turns (``turns - 1`` tool
    calls, then the answer)."""
    if turns < 1:
        raise ValueError(f"a tool loop takes at least 1 turn, not {turns}")
    return f"loop-{turns}"


def loop_turns(model: str) -> int | None:
    """``N`` for a model named ``loop-N``; None for any other model."""
    if not model.startswith("loop-"):
        return None
    found = _LOOP.fullmatch(model)
    return int(found.group(1)) if found else None


def loop_reply(
    turns: int, tools: list[tuple[str, Any]], tool_results: int, last_result: str
) -> Reply:
    """The reply to one request of a ``loop-<turns>`` conversation.

    ``tools`` are the (name, JSON schema) pairs the request offers, in order; ``tool_results``
    how many tool results its conversation holds; ``last_result`` the text of the last one.
    """
    if tools and tool_results < turns - 1:
        name, schema = tools[0]
        return Reply(tool_calls=(ToolCall(name=name, arguments=schema_arguments(schema)),))
    said = last_result if len(last_result) <= _CLIP else last_result[:_CLIP] + "…"
    return Reply(text=f"sim loop done after {tool_results} tool results: {said}")


def plan_reply(messages: Any, tool_results: int) -> Reply:
    """The reply to one request of a planned conversation (see the module's docstring).

    ``messages`` is the request's message list in either family's shape: the plan is found in
    the first string under it that holds the marker, wherever the family puts text.
    """
    plan = _plan_of(messages)
    if plan is not None and tool_results < len(plan):
        turn = plan[tool_results]
        if isinstance(turn, dict) and isinstance(turn.get("tool"), str):
            arguments = turn.get("arguments")
            return Reply(
                tool_calls=(
                    ToolCall(
                        name=turn["tool"],
                        arguments=arguments if isinstance(arguments, dict) else {},
                    ),
                )
            )
        if isinstance(turn, dict) and isinstance(turn.get("text"), str):
            return Reply(text=turn["text"])
    return Reply(text=f"sim plan done after {tool_results} tool results")


def _plan_of(value: Any) -> list[Any] | None:
    """The first plan under ``value`` (a JSON value), or None; a malformed plan is none."""
    if isinstance(value, str):
        _, marker, tail = value.partition(PLAN_MARKER)
        if not marker:
            return None
        try:  # the plan may be followed by more text
            plan, _ = json.JSONDecoder().raw_decode(tail.lstrip())
        except ValueError:
            return None
        return plan if isinstance(plan, list) else None
    children = value.values() if isinstance(value, dict) else value
    if isinstance(value, (dict, list)):
        for child in children:
            if (found := _plan_of(child)) is not None:
                return found
    return None


def schema_arguments(schema: Any) -> dict[str, Any]:
    """Arguments that satisfy an object schema's required properties (and nothing else)."""
    if not isinstance(schema, dict):
        return {}
    properties = schema.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    required = schema.get("required")
    names = [n for n in required if isinstance(n, str)] if isinstance(required, list) else []
    return {name: _example(properties.get(name)) for name in names}


def _example(schema: Any) -> Any:
    """A value of the type ``schema`` describes (JSON values are arbitrary, hence Any)."""
    if not isinstance(schema, dict):
        return "x"
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list):
            typed = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            if typed:
                return _example(typed[0])
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind in ("number", "integer"):
        return 1
    if kind == "boolean":
        return True
    if kind == "array":
        return []
    if kind == "object":
        return schema_arguments(schema)
    if kind == "null":
        return None
    return "x"
