"""The tool-loop responder: a model named ``loop-N`` answers N-1 calls of the first tool the
request offers, then a final text, deciding from the request alone, so that many conversations
can run at once (which one script queue per provider cannot serve)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import anthropic
import openai
import pytest
from anthropic.types import MessageParam, ToolParam
from openai.types.chat import (
    ChatCompletionMessageFunctionToolCall,
    ChatCompletionMessageParam,
    ChatCompletionToolParam,
)

from kernos.sim import Fault, Reply, SimServer, loop_model
from kernos.sim._loop import loop_turns, schema_arguments

LOOKUP: dict[str, Any] = {
    "type": "object",
    "properties": {
        "order_id": {"type": "string"},
        "amount": {"type": "number"},
        "note": {"type": "string"},
    },
    "required": ["order_id", "amount"],
}
OAI_TOOLS: list[ChatCompletionToolParam] = [
    {"type": "function", "function": {"name": "lookup", "parameters": LOOKUP}},
    {"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}},
]
ANT_TOOLS: list[ToolParam] = [
    {"name": "lookup", "input_schema": LOOKUP},
    {"name": "other", "input_schema": {"type": "object"}},
]


def test_loop_models_and_arguments_from_a_schema() -> None:
    assert loop_model(10) == "loop-10" and loop_turns("loop-10") == 10
    assert [loop_turns(m) for m in ("loop-0", "loop-x", "gpt-loop-3", "loop-3a")] == [None] * 4
    with pytest.raises(ValueError, match="at least 1"):
        loop_model(0)
    schema = {
        "type": "object",
        "properties": {
            "s": {"type": "string"},
            "i": {"type": "integer"},
            "b": {"type": "boolean"},
            "e": {"enum": ["low", "high"]},
            "o": {"anyOf": [{"type": "null"}, {"type": "number"}]},
            "n": {
                "type": "object",
                "properties": {"a": {"type": ["null", "array"]}, "z": {}},
                "required": ["a"],
            },
            "optional": {"type": "string"},
        },
        "required": ["s", "i", "b", "e", "o", "n"],
    }
    assert schema_arguments(schema) == {
        "s": "x",
        "i": 1,
        "b": True,
        "e": "low",
        "o": 1,
        "n": {"a": []},
    }
    assert schema_arguments(None) == {} and schema_arguments({"type": "object"}) == {}


async def _openai_conversation(
    client: openai.AsyncOpenAI, model: str, *, stream: bool, tag: str
) -> tuple[list[dict[str, Any]], str]:
    """Plays the loop against ``model``: the tool calls it was asked for, and the answer."""
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": f"help {tag}"}]
    calls: list[dict[str, Any]] = []
    for turn in range(50):
        if stream:
            text, call = await _openai_streamed(client, model, messages)
        else:
            r = await client.chat.completions.create(
                model=model, messages=messages, tools=OAI_TOOLS
            )
            message = r.choices[0].message
            text = message.content or ""
            tool_calls = message.tool_calls or []
            assert r.choices[0].finish_reason == ("tool_calls" if tool_calls else "stop")
            call = None
            if tool_calls:
                assert len(tool_calls) == 1
                assert isinstance(tool_calls[0], ChatCompletionMessageFunctionToolCall)
                fn = tool_calls[0]
                call = (fn.id, fn.function.name, fn.function.arguments)
        if call is None:
            return calls, text
        call_id, name, arguments = call
        calls.append({"name": name, "arguments": json.loads(arguments)})
        messages.append(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": name, "arguments": arguments},
                    }
                ],
            }
        )
        messages.append(
            {"role": "tool", "tool_call_id": call_id, "content": f"{tag} result {turn}"}
        )
    raise AssertionError("the loop never ended")


async def _openai_streamed(
    client: openai.AsyncOpenAI, model: str, messages: list[ChatCompletionMessageParam]
) -> tuple[str, tuple[str, str, str] | None]:
    text, call_id, name, arguments, finish = "", "", "", "", None
    stream = await client.chat.completions.create(
        model=model, messages=messages, tools=OAI_TOOLS, stream=True
    )
    async for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        text += delta.content or ""
        for part in delta.tool_calls or []:
            call_id = part.id or call_id
            if part.function is not None:
                name = part.function.name or name
                arguments += part.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == ("tool_calls" if name else "stop")
    return text, ((call_id, name, arguments) if name else None)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_openai_loop_of_n_turns(aoai: openai.AsyncOpenAI, stream: bool) -> None:
    calls, text = await _openai_conversation(aoai, "loop-4", stream=stream, tag="A")
    assert calls == [{"name": "lookup", "arguments": {"order_id": "x", "amount": 1}}] * 3
    assert text == "sim loop done after 3 tool results: A result 2"


async def test_anthropic_loop_of_n_turns(aant: anthropic.AsyncAnthropic) -> None:
    messages: list[MessageParam] = [{"role": "user", "content": "help"}]
    inputs: list[object] = []
    for turn in range(10):
        message: anthropic.types.Message
        if turn % 2:  # alternate plain and streamed requests in one conversation
            async with aant.messages.stream(
                model="loop-3", max_tokens=256, messages=messages, tools=ANT_TOOLS
            ) as stream:
                message = await stream.get_final_message()
        else:
            message = await aant.messages.create(
                model="loop-3", max_tokens=256, messages=messages, tools=ANT_TOOLS
            )
        uses = [b for b in message.content if b.type == "tool_use"]
        if not uses:
            assert message.stop_reason == "end_turn"
            texts = [b.text for b in message.content if b.type == "text"]
            assert texts == ["sim loop done after 2 tool results: result 1"]
            break
        assert message.stop_reason == "tool_use" and len(uses) == 1 and uses[0].name == "lookup"
        inputs.append(uses[0].input)
        messages.append({"role": "assistant", "content": [uses[0]]})
        messages.append(
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": uses[0].id, "content": f"result {turn}"}
                ],
            }
        )
    assert inputs == [{"order_id": "x", "amount": 1}] * 2


async def test_many_conversations_at_once_each_get_their_n_turns(
    sim: SimServer, aoai: openai.AsyncOpenAI
) -> None:
    """One script queue would hand conversation A's replies to B; the loop decides per request."""
    results = await asyncio.gather(
        *(_openai_conversation(aoai, "loop-5", stream=i % 2 == 1, tag=f"c{i}") for i in range(40))
    )
    for i, (calls, text) in enumerate(results):
        assert len(calls) == 4
        assert text == f"sim loop done after 4 tool results: c{i} result 3"
    assert len(sim.log("oai")) == 40 * 5


def test_no_tools_means_the_answer_at_once_and_a_script_comes_first(
    sim: SimServer, oai: openai.OpenAI
) -> None:
    hello: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]
    r = oai.chat.completions.create(model="loop-10", messages=hello)
    assert r.choices[0].message.content == "sim loop done after 0 tool results: hello"
    sim.script("oai", Reply(text="scripted"))
    r = oai.chat.completions.create(model="loop-10", messages=hello, tools=OAI_TOOLS)
    assert r.choices[0].message.content == "scripted"
    r = oai.chat.completions.create(model="loop-10", messages=hello, tools=OAI_TOOLS)
    assert r.choices[0].finish_reason == "tool_calls"


def test_a_retried_request_gets_the_same_reply_after_a_fault(
    sim: SimServer, oai: openai.OpenAI
) -> None:
    sim.add_fault("oai", Fault(kind="server_error", count=1))
    hello: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]
    with pytest.raises(openai.InternalServerError):
        oai.chat.completions.create(model="loop-2", messages=hello, tools=OAI_TOOLS)
    r = oai.chat.completions.create(model="loop-2", messages=hello, tools=OAI_TOOLS)
    calls = r.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls if c.type == "function"] == ["lookup"]
    assert [e.fault for e in sim.log("oai")] == ["server_error", None]
