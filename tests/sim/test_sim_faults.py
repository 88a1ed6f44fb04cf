"""Every fault kind reaches the official SDKs as the real provider's failure would, and the rule
semantics (count, rate with a seed, windows, filters, mixed, every-provider rules) hold."""

from __future__ import annotations

import asyncio
import importlib
import json
import time

import anthropic
import httpx
import openai
import pytest
from anthropic.types import Message, MessageParam, RawMessageStreamEvent
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessageParam

from kernos.sim import MIXED_DEFAULT, Fault, FaultKind, Reply, SimServer
from kernos.testing import wait_until

OAI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]
ANT: list[MessageParam] = [{"role": "user", "content": "hello"}]


def _transport_errors() -> tuple[type[BaseException], ...]:
    """What a broken connection raises while an SDK iterates a stream.

    The openai SDK wraps it in APIConnectionError; the anthropic SDK lets its HTTP library's
    error through (httpx, or httpx2 in the SDKs that use it). A gateway must catch both.
    """
    found: list[type[BaseException]] = [anthropic.APIConnectionError, httpx.TransportError]
    try:
        found.append(importlib.import_module("httpx2").TransportError)
    except ImportError:
        pass
    return tuple(found)


def ask_openai(client: openai.OpenAI) -> ChatCompletion:
    return client.chat.completions.create(model="gpt-sim", messages=OAI)


def stream_openai(client: openai.OpenAI) -> openai.Stream[ChatCompletionChunk]:
    return client.chat.completions.create(model="gpt-sim", messages=OAI, stream=True)


def ask_anthropic(client: anthropic.Anthropic) -> Message:
    return client.messages.create(model="claude-sim", max_tokens=100, messages=ANT)


def stream_anthropic(client: anthropic.Anthropic) -> anthropic.Stream[RawMessageStreamEvent]:
    return client.messages.create(model="claude-sim", max_tokens=100, messages=ANT, stream=True)


# -- HTTP error kinds ---------------------------------------------------------------------------

OPENAI_ERRORS: list[tuple[FaultKind, type[openai.APIStatusError], int, str, str | None]] = [
    ("rate_limit", openai.RateLimitError, 429, "requests", "rate_limit_exceeded"),
    ("server_error", openai.InternalServerError, 500, "server_error", None),
    ("unavailable", openai.InternalServerError, 503, "server_error", None),
    ("overloaded", openai.InternalServerError, 503, "server_error", None),
    ("outage", openai.InternalServerError, 503, "server_error", None),
    (
        "context_too_long",
        openai.BadRequestError,
        400,
        "invalid_request_error",
        "context_length_exceeded",
    ),
    ("auth", openai.AuthenticationError, 401, "invalid_request_error", "invalid_api_key"),
    ("bad_request", openai.BadRequestError, 400, "invalid_request_error", None),
    ("not_found", openai.NotFoundError, 404, "invalid_request_error", "model_not_found"),
]

ANTHROPIC_ERRORS: list[tuple[FaultKind, type[anthropic.APIStatusError], int, str]] = [
    ("rate_limit", anthropic.RateLimitError, 429, "rate_limit_error"),
    ("server_error", anthropic.InternalServerError, 500, "api_error"),
    ("unavailable", anthropic.InternalServerError, 503, "api_error"),
    ("overloaded", anthropic.InternalServerError, 529, "overloaded_error"),
    ("outage", anthropic.InternalServerError, 503, "api_error"),
    ("context_too_long", anthropic.BadRequestError, 400, "invalid_request_error"),
    ("auth", anthropic.AuthenticationError, 401, "authentication_error"),
    ("bad_request", anthropic.BadRequestError, 400, "invalid_request_error"),
    ("not_found", anthropic.NotFoundError, 404, "not_found_error"),
]


@pytest.mark.parametrize(("kind", "exc", "status", "type_", "code"), OPENAI_ERRORS)
@pytest.mark.parametrize("stream", [False, True])
def test_openai_error_kinds(
    sim: SimServer,
    oai: openai.OpenAI,
    kind: FaultKind,
    exc: type[openai.APIStatusError],
    status: int,
    type_: str,
    code: str | None,
    stream: bool,
) -> None:
    sim.add_fault("oai", Fault(kind=kind, count=1))
    with pytest.raises(exc) as info:
        stream_openai(oai) if stream else ask_openai(oai)
    assert info.value.status_code == status
    assert isinstance(info.value.body, dict)
    assert set(info.value.body) == {"message", "type", "param", "code"}
    assert (info.value.body["type"], info.value.code) == (type_, code)
    assert info.value.response.headers["x-request-id"].startswith("req_")
    if kind == "overloaded":
        assert "overloaded" in info.value.body["message"]
    assert ask_openai(oai).choices, "a count=1 rule fires once"


@pytest.mark.parametrize(("kind", "exc", "status", "type_"), ANTHROPIC_ERRORS)
def test_anthropic_error_kinds(
    sim: SimServer,
    ant: anthropic.Anthropic,
    kind: FaultKind,
    exc: type[anthropic.APIStatusError],
    status: int,
    type_: str,
) -> None:
    sim.add_fault("ant", Fault(kind=kind, count=1))
    with pytest.raises(exc) as info:
        ask_anthropic(ant)
    assert info.value.status_code == status
    body = info.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == type_ and body["error"]["message"]
    assert info.value.response.headers["request-id"] == body["request_id"]


def test_rate_limit_carries_retry_after_headers(
    sim: SimServer, oai: openai.OpenAI, ant: anthropic.Anthropic
) -> None:
    sim.add_fault("oai", Fault(kind="rate_limit", retry_after=2, retry_after_ms=1500))
    sim.add_fault("ant", Fault(kind="rate_limit", retry_after=0.5))
    with pytest.raises(openai.RateLimitError) as oe:
        ask_openai(oai)
    assert oe.value.response.headers["retry-after"] == "2"
    assert oe.value.response.headers["retry-after-ms"] == "1500"
    with pytest.raises(anthropic.RateLimitError) as ae:
        ask_anthropic(ant)
    assert ae.value.response.headers["retry-after"] == "0.5"
    assert "retry-after-ms" not in ae.value.response.headers


def test_overloaded_is_anthropics_529(sim: SimServer, ant: anthropic.Anthropic) -> None:
    sim.add_fault("ant", Fault(kind="overloaded", message="Overloaded right now"))
    with pytest.raises(anthropic.InternalServerError) as info:
        stream_anthropic(ant)
    assert info.value.status_code == 529
    assert info.value.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded right now"},
        "request_id": info.value.response.headers["request-id"],
    }


def test_error_mid_stream(sim: SimServer, oai: openai.OpenAI, ant: anthropic.Anthropic) -> None:
    """With ``after``, a streamed request gets 200, some deltas, then the provider's error event."""
    sim.add_fault("oai", Fault(kind="server_error", after=2))
    sim.add_fault("ant", Fault(kind="overloaded", after=2))
    received = []
    with pytest.raises(openai.APIError) as oe:
        for chunk in stream_openai(oai):
            received.append(chunk)
    assert len(received) == 3  # the role chunk and two deltas
    assert isinstance(oe.value.body, dict) and oe.value.body["type"] == "server_error"
    events = []
    with pytest.raises(anthropic.APIStatusError) as ae:
        for event in stream_anthropic(ant):
            events.append(event.type)
    assert events == ["message_start", "content_block_start", "content_block_delta"]
    assert ae.value.type == "overloaded_error"


# -- content filter ----------------------------------------------------------------------------


def test_content_filter(sim: SimServer, oai: openai.OpenAI, ant: anthropic.Anthropic) -> None:
    sim.add_fault("oai", Fault(kind="content_filter"))
    sim.add_fault("ant", Fault(kind="content_filter"))
    assert ask_openai(oai).choices[0].finish_reason == "content_filter"
    finishes = [c.choices[0].finish_reason for c in stream_openai(oai) if c.choices]
    assert finishes[-1] == "content_filter"
    assert ask_anthropic(ant).stop_reason == "refusal"
    with ant.messages.stream(model="c", max_tokens=100, messages=ANT) as stream:
        assert stream.get_final_message().stop_reason == "refusal"


# -- time: hang and slow -----------------------------------------------------------------------


def test_hang_times_the_client_out(
    sim: SimServer, oai: openai.OpenAI, ant: anthropic.Anthropic
) -> None:
    sim.add_fault("oai", Fault(kind="hang"))
    sim.add_fault("ant", Fault(kind="hang"))
    with pytest.raises(openai.APITimeoutError):
        ask_openai(oai.with_options(timeout=0.5))
    with pytest.raises(anthropic.APITimeoutError):
        ask_anthropic(ant.with_options(timeout=0.5))
    assert [(e.fault, e.status) for e in sim.log()] == [("hang", None), ("hang", None)]


def test_hang_mid_stream_stalls_after_some_deltas(
    sim: SimServer, oai: openai.OpenAI, ant: anthropic.Anthropic
) -> None:
    sim.add_fault("oai", Fault(kind="hang", after=1))
    sim.add_fault("ant", Fault(kind="hang", after=1))
    chunks = []
    with pytest.raises(openai.APITimeoutError):
        for chunk in stream_openai(oai.with_options(timeout=0.3)):
            chunks.append(chunk)
    assert len(chunks) == 2
    events = []
    with pytest.raises(_transport_errors()):
        for event in stream_anthropic(ant.with_options(timeout=0.3)):
            events.append(event.type)
    assert events == ["message_start", "content_block_start"]


async def test_a_hung_request_does_not_hold_up_others(
    sim: SimServer, aoai: openai.AsyncOpenAI
) -> None:
    sim.add_fault("oai", Fault(kind="hang", count=1, delay=30))
    hung = asyncio.create_task(
        aoai.with_options(timeout=3).chat.completions.create(model="m", messages=OAI)
    )
    await wait_until(lambda: sim.log("oai"), timeout=5, what="the hung request to arrive")
    answered = await aoai.chat.completions.create(model="m", messages=OAI)
    assert answered.choices and not hung.done()
    hung.cancel()
    with pytest.raises(asyncio.CancelledError):
        await hung


def test_slow_answers_late_but_in_full(sim: SimServer, oai: openai.OpenAI) -> None:
    sim.add_fault("oai", Fault(kind="slow", delay=0.3, count=1))
    sim.script("oai", "scripted")
    started = time.monotonic()
    reply = ask_openai(oai)
    assert time.monotonic() - started >= 0.3
    assert reply.choices[0].message.content == "scripted"
    sim.add_fault("oai", Fault(kind="slow", delay=5, count=1))
    with pytest.raises(openai.APITimeoutError):
        ask_openai(oai.with_options(timeout=0.3))


# -- broken bodies and connections -------------------------------------------------------------


def test_malformed_bodies_do_not_parse(
    sim: SimServer, oai: openai.OpenAI, ant: anthropic.Anthropic
) -> None:
    sim.add_fault("oai", Fault(kind="malformed"))
    sim.add_fault("ant", Fault(kind="malformed"))
    with pytest.raises(json.JSONDecodeError):
        ask_openai(oai)
    with pytest.raises(json.JSONDecodeError):
        list(stream_openai(oai))
    with pytest.raises(json.JSONDecodeError):
        ask_anthropic(ant)
    with pytest.raises(json.JSONDecodeError):
        list(stream_anthropic(ant))
    assert {(e.fault, e.status) for e in sim.log()} == {("malformed", 200)}


def test_truncated_streams_end_cleanly_without_their_finish(
    sim: SimServer, oai: openai.OpenAI, ant: anthropic.Anthropic, http: httpx.Client
) -> None:
    """Only a client that checks for the finish chunk / message_stop notices the cut."""
    sim.add_fault("oai", Fault(kind="truncate"))
    sim.add_fault("ant", Fault(kind="truncate"))
    chunks = list(stream_openai(oai))
    assert chunks and all(c.choices[0].finish_reason is None for c in chunks)
    events = [e.type for e in stream_anthropic(ant)]
    assert events[0] == "message_start"
    assert "content_block_delta" in events
    assert not {"message_delta", "message_stop"} & set(events)
    raw = http.post(
        "/oai/v1/chat/completions", json={"model": "m", "messages": OAI, "stream": True}
    )
    assert raw.status_code == 200 and "[DONE]" not in raw.text


def test_truncate_after_places_the_cut(sim: SimServer, oai: openai.OpenAI) -> None:
    sim.add_fault("oai", Fault(kind="truncate", after=0, count=1))
    assert len(list(stream_openai(oai))) == 1


def test_truncated_plain_body_is_half_a_json_document(
    sim: SimServer, oai: openai.OpenAI, ant: anthropic.Anthropic
) -> None:
    sim.add_fault("oai", Fault(kind="truncate"))
    sim.add_fault("ant", Fault(kind="truncate"))
    with pytest.raises(json.JSONDecodeError):
        ask_openai(oai)
    with pytest.raises(json.JSONDecodeError):
        ask_anthropic(ant)


def test_connection_dropped_without_a_response(
    sim: SimServer, oai: openai.OpenAI, ant: anthropic.Anthropic
) -> None:
    sim.add_fault("oai", Fault(kind="connection"))
    sim.add_fault("ant", Fault(kind="connection"))
    with pytest.raises(openai.APIConnectionError) as oe:
        ask_openai(oai)
    assert not isinstance(oe.value, openai.APITimeoutError)
    with pytest.raises(anthropic.APIConnectionError):
        stream_anthropic(ant)
    assert [(e.fault, e.status) for e in sim.log()] == [("connection", None)] * 2


def test_connection_dropped_mid_stream(
    sim: SimServer, oai: openai.OpenAI, ant: anthropic.Anthropic
) -> None:
    sim.add_fault("oai", Fault(kind="connection", after=2))
    sim.add_fault("ant", Fault(kind="connection", after=2))
    chunks = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in stream_openai(oai):
            chunks.append(chunk)
    assert len(chunks) == 3
    with pytest.raises(_transport_errors()):
        list(stream_anthropic(ant))


# -- rule semantics ----------------------------------------------------------------------------


def _outcomes(client: openai.OpenAI, n: int) -> list[bool]:
    ok = []
    for _ in range(n):
        try:
            ask_openai(client)
            ok.append(True)
        except openai.APIStatusError:
            ok.append(False)
    return ok


def test_count_expires_the_rule(sim: SimServer, oai: openai.OpenAI) -> None:
    sim.add_fault("oai", Fault(kind="server_error", count=2))
    assert _outcomes(oai, 1) == [False]
    assert [f.count for f in sim.faults("oai")] == [1]
    assert _outcomes(oai, 2) == [False, True]
    assert sim.faults("oai") == []


def test_rate_is_seeded(sim: SimServer, oai: openai.OpenAI) -> None:
    sim.add_fault("oai", Fault(kind="server_error", rate=0.5))
    first = _outcomes(oai, 30)
    sim.reset()
    sim.add_fault("oai", Fault(kind="server_error", rate=0.5))
    assert _outcomes(oai, 30) == first
    assert 5 < first.count(False) < 25
    sim.reset(seed=2)
    sim.add_fault("oai", Fault(kind="server_error", rate=0.5))
    assert _outcomes(oai, 30) != first


def test_rate_zero_never_fires_and_rules_apply_in_order(sim: SimServer, oai: openai.OpenAI) -> None:
    sim.set_faults(
        "oai",
        [Fault(kind="auth", rate=0.0), Fault(kind="not_found", count=1), Fault(kind="auth")],
    )
    with pytest.raises(openai.NotFoundError):
        ask_openai(oai)
    with pytest.raises(openai.AuthenticationError):
        ask_openai(oai)


def test_filters_by_model_pattern_and_stream(sim: SimServer, oai: openai.OpenAI) -> None:
    sim.add_fault("oai", Fault(kind="server_error", models=("gpt-4*",)))
    sim.add_fault("oai", Fault(kind="bad_request", stream=True))
    assert oai.chat.completions.create(model="gpt-3.5", messages=OAI).choices
    with pytest.raises(openai.InternalServerError):
        oai.chat.completions.create(model="gpt-4o", messages=OAI)
    with pytest.raises(openai.BadRequestError):
        stream_openai(oai)


def test_outage_window(sim: SimServer, oai: openai.OpenAI) -> None:
    """Every request inside [start, start + duration) after the rule was added gets 503."""
    added = time.monotonic()
    sim.add_fault("oai", Fault(kind="outage", start=0.4, duration=0.4))
    seen: list[bool] = []
    deadline = added + 5
    while not (False in seen and seen[-1]) and time.monotonic() < deadline:
        seen.extend(_outcomes(oai, 1))
        time.sleep(0.02)
    assert seen[0] and False in seen and seen[-1]
    for entry in sim.log("oai"):
        elapsed = entry.arrived_monotonic - added
        if 0.5 < elapsed < 0.7:
            assert entry.fault == "outage" and entry.status == 503
        elif elapsed < 0.3 or elapsed > 0.9:
            assert entry.fault is None


def test_mixed_draws_retryable_faults_at_the_rate(sim: SimServer, http: httpx.Client) -> None:
    sim.add_fault("oai", Fault(kind="mixed", rate=0.5))
    body = {"model": "m", "messages": OAI}
    for _ in range(60):
        try:
            http.post("/oai/v1/chat/completions", json=body)
        except httpx.TransportError:
            pass
    kinds = [e.fault for e in sim.log("oai")]
    drawn = {k for k in kinds if k is not None}
    assert drawn <= set(MIXED_DEFAULT) and len(drawn) >= 3
    assert 15 < kinds.count(None) < 45


def test_mixed_with_a_chosen_mix(sim: SimServer, oai: openai.OpenAI) -> None:
    sim.add_fault("oai", Fault(kind="mixed", mix=("rate_limit", "overloaded"), count=10))
    _outcomes(oai, 10)
    assert {e.fault for e in sim.log("oai")} == {"rate_limit", "overloaded"}


def test_every_provider_rules_apply_after_a_providers_own(
    sim: SimServer, oai: openai.OpenAI, ant: anthropic.Anthropic
) -> None:
    sim.add_fault("*", Fault(kind="server_error"))
    sim.add_fault("oai", Fault(kind="not_found", count=1))
    with pytest.raises(openai.NotFoundError):
        ask_openai(oai)
    with pytest.raises(openai.InternalServerError):
        ask_openai(oai)
    with pytest.raises(anthropic.InternalServerError):
        ask_anthropic(ant)


def test_a_failed_request_leaves_the_script_for_the_retry(
    sim: SimServer, oai: openai.OpenAI
) -> None:
    sim.script("oai", Reply(text="the answer"))
    sim.add_fault("oai", Fault(kind="truncate", count=1))
    sim.add_fault("oai", Fault(kind="rate_limit", count=1))
    with pytest.raises(json.JSONDecodeError):
        ask_openai(oai)
    with pytest.raises(openai.RateLimitError):
        ask_openai(oai)
    assert ask_openai(oai).choices[0].message.content == "the answer"
    assert ask_openai(oai).choices[0].message.content == "sim reply to: hello"
