"""The simulator speaks both wire formats as the official SDKs expect: plain and streamed
replies, tool calls, scripted replies, usage, max_tokens, and request validation."""

from __future__ import annotations

import asyncio
import json
import math
from typing import cast

import anthropic
import httpx
import openai
import pytest
from anthropic.types import MessageParam
from openai.types.chat import ChatCompletionMessageFunctionToolCall, ChatCompletionMessageParam

from kernos.sim import Fault, Reply, SimServer, ToolCall, Usage

PROMPT = "what is the weather in Paris"
OAI: list[ChatCompletionMessageParam] = [{"role": "user", "content": PROMPT}]
ANT: list[MessageParam] = [{"role": "user", "content": PROMPT}]
DEFAULT = f"sim reply to: {PROMPT}"
WEATHER = ToolCall(name="get_weather", arguments={"city": "Paris", "unit": "celsius"})


def tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


# -- OpenAI ------------------------------------------------------------------------------------


def test_openai_plain_reply_is_deterministic_with_usage_from_text_length(
    oai: openai.OpenAI,
) -> None:
    reply = oai.chat.completions.create(model="gpt-sim", messages=OAI)
    choice = reply.choices[0]
    assert choice.message.content == DEFAULT
    assert choice.finish_reason == "stop"
    assert reply.model == "gpt-sim"
    assert reply.id.startswith("chatcmpl-")
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == tokens(PROMPT)
    assert reply.usage.completion_tokens == tokens(DEFAULT)
    assert reply.usage.total_tokens == tokens(PROMPT) + tokens(DEFAULT)


def test_openai_stream_carries_the_same_text_then_finish_usage_and_done(
    oai: openai.OpenAI,
) -> None:
    chunks = list(
        oai.chat.completions.create(
            model="gpt-sim", messages=OAI, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == DEFAULT
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == tokens(DEFAULT)


def test_openai_stream_bytes_are_data_frames_ending_in_done(http: httpx.Client) -> None:
    body = {"model": "m", "messages": OAI, "stream": True}
    raw = http.post("/oai/v1/chat/completions", json=body)
    assert raw.headers["content-type"].startswith("text/event-stream")
    frames = raw.text.split("\n\n")
    assert frames[-2:] == ["data: [DONE]", ""]
    for frame in frames[:-2]:
        assert frame.startswith("data: ")
        assert json.loads(frame.removeprefix("data: "))["object"] == "chat.completion.chunk"


def test_openai_tool_call_plain(sim: SimServer, oai: openai.OpenAI) -> None:
    sim.script("oai", Reply(tool_calls=(WEATHER,)))
    choice = oai.chat.completions.create(model="gpt-sim", messages=OAI).choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1
    call = calls[0]
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "unit": "celsius"}


def test_openai_tool_call_streamed_in_fragments(sim: SimServer, oai: openai.OpenAI) -> None:
    sim.script("oai", Reply(text="Checking.", tool_calls=(WEATHER, ToolCall(name="noop"))))
    calls: dict[int, dict[str, str]] = {}
    finish = None
    fragments = 0
    for chunk in oai.chat.completions.create(model="gpt-sim", messages=OAI, stream=True):
        delta = chunk.choices[0].delta
        finish = chunk.choices[0].finish_reason or finish
        for part in delta.tool_calls or []:
            fragments += 1
            call = calls.setdefault(part.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += part.id or ""
            if part.function is not None:
                call["name"] += part.function.name or ""
                call["arguments"] += part.function.arguments or ""
    assert finish == "tool_calls"
    assert fragments > 3
    assert [c["name"] for c in calls.values()] == ["get_weather", "noop"]
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris", "unit": "celsius"}
    assert json.loads(calls[1]["arguments"]) == {}
    assert all(c["id"] for c in calls.values())


def test_openai_invalid_tool_arguments_arrive_verbatim(sim: SimServer, oai: openai.OpenAI) -> None:
    sim.script("oai", Reply(tool_calls=(ToolCall(name="f", arguments='{"city": "Par'),)))
    calls = oai.chat.completions.create(model="gpt-sim", messages=OAI).choices[0].message.tool_calls
    assert calls is not None
    assert isinstance(calls[0], ChatCompletionMessageFunctionToolCall)
    assert calls[0].function.arguments == '{"city": "Par'


def test_openai_max_tokens_clips_the_reply(sim: SimServer, oai: openai.OpenAI) -> None:
    sim.script("oai", "word " * 100)
    reply = oai.chat.completions.create(model="gpt-sim", messages=OAI, max_tokens=10)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 10
    assert len(reply.choices[0].message.content or "") == 40


# -- Anthropic ---------------------------------------------------------------------------------


def test_anthropic_plain_reply_with_usage(ant: anthropic.Anthropic) -> None:
    message = ant.messages.create(model="claude-sim", max_tokens=200, messages=ANT)
    assert message.id.startswith("msg_")
    assert message.model == "claude-sim"
    assert message.stop_reason == "end_turn"
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].type == "text" and message.content[0].text == DEFAULT
    assert message.usage.input_tokens == tokens(PROMPT)
    assert message.usage.output_tokens == tokens(DEFAULT)


def test_anthropic_stream_events_in_order(ant: anthropic.Anthropic) -> None:
    events = list(ant.messages.create(model="c", max_tokens=200, messages=ANT, stream=True))
    kinds = [e.type for e in events]
    deltas = kinds.count("content_block_delta")
    assert kinds == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * deltas,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert deltas == len(DEFAULT.split())
    delta = events[-2]
    assert delta.type == "message_delta"
    assert delta.delta.stop_reason == "end_turn"
    assert delta.usage.output_tokens == tokens(DEFAULT)


def test_anthropic_stream_helper_assembles_text_and_tool_use(
    sim: SimServer, ant: anthropic.Anthropic
) -> None:
    sim.script("ant", Reply(text="Let me check.", tool_calls=(WEATHER,)))
    with ant.messages.stream(model="c", max_tokens=200, messages=ANT) as stream:
        message = stream.get_final_message()
    assert message.stop_reason == "tool_use"
    text, tool = message.content
    assert text.type == "text" and text.text == "Let me check."
    assert tool.type == "tool_use" and tool.name == "get_weather"
    assert tool.input == {"city": "Paris", "unit": "celsius"}
    assert tool.id.startswith("toolu_")


def test_anthropic_tool_use_plain(sim: SimServer, ant: anthropic.Anthropic) -> None:
    sim.script("ant", Reply(tool_calls=(WEATHER,)))
    message = ant.messages.create(model="c", max_tokens=200, messages=ANT)
    assert message.stop_reason == "tool_use"
    assert [b.type for b in message.content] == ["tool_use"]
    block = message.content[0]
    assert block.type == "tool_use" and block.input == {"city": "Paris", "unit": "celsius"}


def test_anthropic_invalid_tool_arguments(sim: SimServer, ant: anthropic.Anthropic) -> None:
    """Streamed, the partial_json fragments join to the invalid text (the SDK's helper fails to
    parse it); plain, the raw text stands where the input object belongs."""
    bad = '{"city": "Paris",, }'
    sim.script("ant", Reply(tool_calls=(ToolCall(name="f", arguments=bad),)))
    sim.script("ant", Reply(tool_calls=(ToolCall(name="f", arguments=bad),)))
    joined = ""
    for event in ant.messages.create(model="c", max_tokens=200, messages=ANT, stream=True):
        if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
            joined += event.delta.partial_json
    assert joined == bad
    block = ant.messages.create(model="c", max_tokens=200, messages=ANT).content[0]
    assert block.type == "tool_use" and cast(object, block.input) == bad
    sim.script("ant", Reply(tool_calls=(ToolCall(name="f", arguments=bad),)))
    with (
        pytest.raises(ValueError, match="tool parameter JSON"),
        ant.messages.stream(model="c", max_tokens=200, messages=ANT) as stream,
    ):
        stream.get_final_message()


def test_anthropic_max_tokens_clips_the_reply(sim: SimServer, ant: anthropic.Anthropic) -> None:
    sim.script("ant", "word " * 100)
    message = ant.messages.create(model="c", max_tokens=5, messages=ANT)
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 5


# -- scripts, validation, models, isolation -----------------------------------------------------


def test_script_is_a_queue_matched_by_model_then_the_default(
    sim: SimServer, oai: openai.OpenAI
) -> None:
    sim.script(
        "oai",
        Reply(text="for the big model", model="gpt-big*"),
        "first",
        Reply(text="second", usage=Usage(input_tokens=1000, output_tokens=7)),
    )

    def ask(model: str) -> openai.types.chat.ChatCompletion:
        return oai.chat.completions.create(model=model, messages=OAI)

    assert ask("gpt-small").choices[0].message.content == "first"
    second = ask("gpt-small")
    assert second.choices[0].message.content == "second"
    assert second.usage is not None
    assert (second.usage.prompt_tokens, second.usage.completion_tokens) == (1000, 7)
    assert ask("gpt-small").choices[0].message.content == DEFAULT
    assert ask("gpt-big-2").choices[0].message.content == "for the big model"
    assert sim.simulator.scripted("oai") == []


def test_finish_reasons_translate_between_families(sim: SimServer, oai: openai.OpenAI) -> None:
    sim.script("oai", Reply(text="x", finish_reason="end_turn"), Reply(finish_reason="refusal"))
    assert oai.chat.completions.create(model="m", messages=OAI).choices[0].finish_reason == "stop"
    filtered = oai.chat.completions.create(model="m", messages=OAI).choices[0]
    assert filtered.finish_reason == "content_filter"


def test_invalid_requests_get_400_in_the_family_format(sim: SimServer, http: httpx.Client) -> None:
    no_messages = http.post("/oai/v1/chat/completions", json={"model": "m"})
    assert no_messages.status_code == 400
    error = no_messages.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] is None
    assert "messages" in error["message"]
    no_max = http.post("/ant/v1/messages", json={"model": "c", "messages": ANT})
    assert no_max.status_code == 400
    assert no_max.json()["type"] == "error"
    assert no_max.json()["error"]["type"] == "invalid_request_error"
    not_json = http.post("/oai/v1/chat/completions", content=b"{nope")
    assert not_json.status_code == 400
    assert [(e.provider, e.status, e.fault) for e in sim.log()] == [
        ("oai", 400, None),
        ("ant", 400, None),
        ("oai", 400, None),
    ]


def test_models_list_in_each_family(oai: openai.OpenAI, ant: anthropic.Anthropic) -> None:
    oai.chat.completions.create(model="gpt-seen", messages=OAI)
    assert {m.id for m in oai.models.list()} == {"gpt-seen", "sim-1"}
    assert {m.id for m in ant.models.list()} == {"sim-1"}


def test_providers_are_isolated(sim: SimServer) -> None:
    sim.add_fault("a", Fault(kind="server_error"))
    with openai.OpenAI(
        base_url=sim.openai_base_url("b"), api_key="k", max_retries=0, timeout=5
    ) as client:
        assert client.chat.completions.create(model="m", messages=OAI).choices
    assert [e.provider for e in sim.log()] == ["b"]
    assert sim.faults("b") == [] and len(sim.faults("a")) == 1


# -- async clients -----------------------------------------------------------------------------


async def test_async_clients_in_parallel(
    aoai: openai.AsyncOpenAI, aant: anthropic.AsyncAnthropic
) -> None:
    """The server runs on its own thread, so an async test's loop is never blocked by it."""

    async def openai_stream() -> str:
        stream = await aoai.chat.completions.create(model="m", messages=OAI, stream=True)
        return "".join([c.choices[0].delta.content or "" async for c in stream])

    plain = [aoai.chat.completions.create(model="m", messages=OAI) for _ in range(10)]
    messages = [aant.messages.create(model="c", max_tokens=50, messages=ANT) for _ in range(10)]
    results = await asyncio.gather(*plain, *messages)
    assert len(results) == 20
    assert await openai_stream() == DEFAULT
