"""The planned conversation: a request for the model ``plan`` plays the plan its conversation
carries, turn by turn, in both families, so many different conversations run at once and a
retried request gets the same turn."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import openai

from kernos.sim import PLAN_MARKER, PLAN_MODEL

PLAN = [
    {"tool": "lookup_order", "arguments": {"order_id": "C-9"}},
    {"tool": "issue_refund", "arguments": {"order_id": "C-9", "amount": 310.0}},
    {"text": "Refunded 310.00 EUR."},
]
ASK = f"My espresso machine broke.\n\n{PLAN_MARKER} {json.dumps(PLAN)}"
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
    for n in ("lookup_order", "issue_refund")
]


def test_openai_plays_the_plan_turn_by_turn(oai: openai.OpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": ASK}]
    played = []
    for _ in range(5):
        r = oai.chat.completions.create(model=PLAN_MODEL, messages=messages, tools=TOOLS)
        again = oai.chat.completions.create(model=PLAN_MODEL, messages=messages, tools=TOOLS)
        message = r.choices[0].message
        calls = [c for c in message.tool_calls or [] if c.type == "function"]
        repeated = [c for c in again.choices[0].message.tool_calls or [] if c.type == "function"]
        # the same request, the same turn: a retry or a replay gets what the first got
        assert [c.function.arguments for c in repeated] == [c.function.arguments for c in calls]
        if not calls:
            played.append({"text": message.content})
            break
        call = calls[0]
        played.append(
            {"tool": call.function.name, "arguments": json.loads(call.function.arguments)}
        )
        messages += [
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "ok"},
        ]
    assert played == PLAN


def test_anthropic_finds_the_plan_in_content_blocks(ant: anthropic.Anthropic) -> None:
    messages: list[Any] = [{"role": "user", "content": [{"type": "text", "text": ASK}]}]
    tools: list[Any] = [
        {"name": n, "input_schema": {"type": "object"}} for n in ("lookup_order", "issue_refund")
    ]
    names = []
    for _ in range(5):
        r = ant.messages.create(model=PLAN_MODEL, max_tokens=100, messages=messages, tools=tools)
        uses = [b for b in r.content if b.type == "tool_use"]
        if not uses:
            text = "".join(b.text for b in r.content if b.type == "text")
            assert text == "Refunded 310.00 EUR."
            break
        names.append(uses[0].name)
        messages += [
            {"role": "assistant", "content": [b.model_dump() for b in r.content]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "ok"}],
            },
        ]
    assert names == ["lookup_order", "issue_refund"]


def test_without_a_plan_or_past_its_end_the_answer_is_final(oai: openai.OpenAI) -> None:
    r = oai.chat.completions.create(
        model=PLAN_MODEL, messages=[{"role": "user", "content": "hello"}], tools=TOOLS
    )
    assert r.choices[0].message.tool_calls is None
    assert r.choices[0].message.content == "sim plan done after 0 tool results"
    broken = f"{PLAN_MARKER} [{{not json"
    r = oai.chat.completions.create(
        model=PLAN_MODEL, messages=[{"role": "user", "content": broken}], tools=TOOLS
    )
    assert r.choices[0].message.content == "sim plan done after 0 tool results"
