"""The gateway engine over real HTTP: classification, retry-after, breaker, fallback, limits.

The simulator injects each fault the way the provider family really sends it; the gateway sees
only what the official SDKs make of the bytes.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

import pytest
from _gateway_support import AN, OA, ConfigFactory

from kernos.errors import LLMCallFailed, ProviderUnavailable
from kernos.gateway import Attempt, ErrorClass, Gateway, LLMResponse, StreamDelta
from kernos.gateway._gateway import RouteDown, build_request
from kernos.sim import Fault, Reply, SimServer, ToolCall
from kernos.testing import wait_until

HELLO = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]

# fault kind (as the simulator sends it) -> the class the gateway must see, plain and streamed
CLASSES: list[tuple[str, dict[str, Any], ErrorClass, ErrorClass]] = [
    ("rate_limit", {"retry_after": 0.01}, ErrorClass.RATE_LIMITED, ErrorClass.RATE_LIMITED),
    ("overloaded", {}, ErrorClass.OVERLOADED, ErrorClass.OVERLOADED),
    ("server_error", {}, ErrorClass.SERVER_ERROR, ErrorClass.SERVER_ERROR),
    ("unavailable", {}, ErrorClass.SERVER_ERROR, ErrorClass.SERVER_ERROR),
    ("hang", {"delay": 3}, ErrorClass.TIMEOUT, ErrorClass.TIMEOUT),
    ("connection", {}, ErrorClass.CONNECTION, ErrorClass.CONNECTION),
    ("malformed", {}, ErrorClass.MALFORMED_RESPONSE, ErrorClass.MALFORMED_RESPONSE),
    # a plain body cut in half is not JSON; a stream cut before its end is truncated
    ("truncate", {}, ErrorClass.MALFORMED_RESPONSE, ErrorClass.TRUNCATED_RESPONSE),
    ("context_too_long", {}, ErrorClass.CONTEXT_TOO_LONG, ErrorClass.CONTEXT_TOO_LONG),
    ("content_filter", {}, ErrorClass.CONTENT_FILTERED, ErrorClass.CONTENT_FILTERED),
    ("auth", {}, ErrorClass.AUTH, ErrorClass.AUTH),
    ("bad_request", {}, ErrorClass.BAD_REQUEST, ErrorClass.BAD_REQUEST),
    ("not_found", {}, ErrorClass.NOT_FOUND, ErrorClass.NOT_FOUND),
]


async def _one_attempt_class(gateway: Gateway, route: str, stream: bool) -> Attempt:
    """Make one attempt on ``route`` and return its journaled record."""
    seen: list[Attempt] = []

    async def record(a: Attempt) -> None:
        seen.append(a)

    with pytest.raises((RouteDown, LLMCallFailed)):
        await gateway.attempt_call(
            route, build_request(HELLO, None, {}), stream=stream, on_attempt=record
        )
    assert len(seen) == 1, seen
    return seen[0]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("route", [OA, AN], ids=["openai", "anthropic"])
@pytest.mark.parametrize(
    ("kind", "options", "plain", "streamed"), CLASSES, ids=[c[0] for c in CLASSES]
)
async def test_every_error_class_through_both_families(
    sim: SimServer,
    make_config: ConfigFactory,
    route: str,
    stream: bool,
    kind: str,
    options: dict[str, Any],
    plain: ErrorClass,
    streamed: ErrorClass,
) -> None:
    provider = route.split(":")[0]
    sim.add_fault(provider, Fault(kind=kind, **options))  # type: ignore[arg-type]
    gateway = Gateway(make_config(max_attempts=1, timeout=0.5))
    try:
        attempt = await _one_attempt_class(gateway, route, stream)
    finally:
        await gateway.aclose()
    expected = streamed if stream else plain
    assert attempt.error_class == expected.value, attempt
    assert attempt.provider == provider
    assert attempt.then in {"fallback", "fail"}


@pytest.mark.parametrize("route", [OA, AN], ids=["openai", "anthropic"])
@pytest.mark.parametrize(
    ("kind", "expected"),
    [("overloaded", ErrorClass.OVERLOADED), ("rate_limit", ErrorClass.RATE_LIMITED)],
)
async def test_an_error_event_in_the_middle_of_a_stream_is_classified(
    sim: SimServer, make_config: ConfigFactory, route: str, kind: str, expected: ErrorClass
) -> None:
    sim.add_fault(route.split(":")[0], Fault(kind=kind, after=2, stream=True))  # type: ignore[arg-type]
    gateway = Gateway(make_config(max_attempts=1))
    try:
        attempt = await _one_attempt_class(gateway, route, True)
    finally:
        await gateway.aclose()
    assert attempt.error_class == expected.value


async def test_retries_honour_retry_after_from_the_simulators_log(
    sim: SimServer, gateway: Gateway
) -> None:
    sim.add_fault("oa", Fault(kind="rate_limit", count=2, retry_after=0.4))
    answer = await gateway.complete(OA, HELLO)
    assert answer.attempts == 3 and answer.text
    arrivals = [e.arrived_monotonic for e in sim.log("oa")]
    assert len(arrivals) == 3
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert all(gap >= 0.4 for gap in gaps), gaps  # never sooner than the provider asked


async def test_retry_after_ms_is_honoured_too(sim: SimServer, gateway: Gateway) -> None:
    sim.add_fault("an", Fault(kind="overloaded", count=1, retry_after_ms=250))
    await gateway.complete(AN, HELLO)
    first, second = (e.arrived_monotonic for e in sim.log("an"))
    assert second - first >= 0.25


async def test_a_retry_after_longer_than_we_wait_falls_back_instead(
    sim: SimServer, gateway: Gateway
) -> None:
    sim.add_fault("oa", Fault(kind="rate_limit", retry_after=600))
    started = time.monotonic()
    answer = await gateway.complete("both", HELLO)
    assert answer.provider == "an"
    assert time.monotonic() - started < 5


async def test_fallback_translates_the_conversation_to_the_other_family(
    sim: SimServer, gateway: Gateway
) -> None:
    sim.add_fault("oa", Fault(kind="outage", duration=60))
    conversation: list[dict[str, Any]] = [
        *HELLO,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x":1}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]
    answer = await gateway.complete("both", conversation, stream=True)
    assert answer.provider == "an" and answer.model.startswith("claude")
    assert [e.status for e in sim.log("oa")] == [503, 503, 503]  # max_attempts, then fallback
    sent = sim.log("an")[-1].request
    assert sent["system"] == "be brief"
    assert sent["messages"][1]["content"][0] == {
        "type": "tool_use",
        "id": "c1",
        "name": "f",
        "input": {"x": 1},
    }
    assert sent["messages"][2]["content"][0]["type"] == "tool_result"


async def test_auth_and_bad_request_do_not_fall_back(sim: SimServer, gateway: Gateway) -> None:
    for kind in ("auth", "bad_request"):
        sim.reset(seed=1)
        sim.add_fault("oa", Fault(kind=kind))
        with pytest.raises(LLMCallFailed) as failed:
            await gateway.complete("both", HELLO)
        assert failed.value.error_class == kind
        assert sim.log("an") == []  # the other family was never asked
        assert len(sim.log("oa")) == 1  # and nothing retried


async def test_context_too_long_falls_back_to_the_next_model(
    sim: SimServer, gateway: Gateway
) -> None:
    sim.add_fault("oa", Fault(kind="context_too_long"))
    answer = await gateway.complete("both", HELLO)
    assert answer.provider == "an"
    assert len(sim.log("oa")) == 1


async def test_a_truncated_stream_never_reaches_the_agent(sim: SimServer, gateway: Gateway) -> None:
    full = "the whole answer, every word of it, to the end"
    sim.script("an", Reply(text=full))
    sim.add_fault("an", Fault(kind="truncate", count=1, stream=True))
    deltas: list[StreamDelta] = []
    answer = await gateway.complete(AN, HELLO, stream=True, on_delta=deltas.append)
    assert answer.text == full and answer.attempts == 2
    first = "".join(d.text for d in deltas if d.attempt == 1)
    second = "".join(d.text for d in deltas if d.attempt == 2)
    assert first and first != full  # the cut attempt streamed part of it...
    assert second == full  # ...and the consumer can tell which attempt to show


async def test_invalid_tool_arguments_go_back_to_the_model_to_fix(
    sim: SimServer, gateway: Gateway
) -> None:
    sim.script(
        "oa",
        Reply(tool_calls=(ToolCall(name="lookup", arguments='{"id": 7'),)),
        Reply(tool_calls=(ToolCall(name="lookup", arguments={"id": 7}),)),
    )
    tools = [{"name": "lookup", "parameters": {"type": "object"}}]
    answer = await gateway.complete(OA, [{"role": "user", "content": "find 7"}], tools)
    assert answer.tool_calls[0].arguments == {"id": 7}
    assert answer.tool_calls[0].raw_arguments is None
    second = sim.log("oa")[1].request["messages"]
    assert second[-1]["role"] == "tool" and "not a valid JSON object" in second[-1]["content"]


async def test_the_repairs_are_bounded(sim: SimServer, make_config: ConfigFactory) -> None:
    bad = Reply(tool_calls=(ToolCall(name="lookup", arguments="{nope"),))
    sim.script("oa", bad, bad, bad, bad)
    gateway = Gateway(make_config(tool_argument_repairs=2))
    try:
        answer = await gateway.complete(
            OA, [{"role": "user", "content": "x"}], [{"name": "lookup"}]
        )
    finally:
        await gateway.aclose()
    assert len(sim.log("oa")) == 3  # the answer, then two repairs: the last one is returned
    assert answer.tool_calls[0].raw_arguments == "{nope"


async def test_breaker_opens_half_opens_with_one_probe_and_closes(
    sim: SimServer, make_config: ConfigFactory
) -> None:
    gateway = Gateway(
        make_config(breaker_threshold=2, breaker_cooldown=0.5, max_attempts=2, deadline=30)
    )
    try:
        sim.add_fault("oa", Fault(kind="server_error", count=2))
        with pytest.raises(RouteDown):
            await gateway.attempt_call(OA, build_request(HELLO, None, {}))
        state = gateway.breaker_states()[OA]
        assert state.state == "open"
        # while open, no request reaches the provider
        with pytest.raises(RouteDown) as down:
            await gateway.attempt_call(OA, build_request(HELLO, None, {}))
        assert len(sim.log("oa")) == 2
        assert down.value.retry_at > time.time()
        await asyncio.sleep(0.6)
        # half-open: many callers, one probe; the probe succeeds and closes the breaker
        results = await asyncio.gather(
            *(gateway.attempt_call(OA, build_request(HELLO, None, {})) for _ in range(5)),
            return_exceptions=True,
        )
        answered = [r for r in results if isinstance(r, LLMResponse)]
        assert len(answered) >= 1
        assert len(sim.log("oa")) - 2 >= 1
        assert gateway.breaker_states()[OA].state == "closed"
        assert isinstance(await gateway.complete(OA, HELLO), LLMResponse)
    finally:
        await gateway.aclose()


async def test_breaker_open_everywhere_is_a_route_down_with_the_probe_time(
    sim: SimServer, make_config: ConfigFactory
) -> None:
    gateway = Gateway(make_config(breaker_threshold=1, breaker_cooldown=2.0, max_attempts=1))
    try:
        sim.add_fault("oa", Fault(kind="overloaded"))
        sim.add_fault("an", Fault(kind="overloaded"))
        with pytest.raises(RouteDown) as first:
            await gateway.attempt_call("both", build_request(HELLO, None, {}))
        assert first.value.last is not None and first.value.last.error_class == "overloaded"
        with pytest.raises(RouteDown) as second:
            await gateway.attempt_call("both", build_request(HELLO, None, {}))
        assert 0.5 < second.value.retry_at - time.time() <= 2.1
    finally:
        await gateway.aclose()


async def test_a_direct_call_waits_out_an_outage_then_gives_up_at_its_deadline(
    sim: SimServer, make_config: ConfigFactory
) -> None:
    gateway = Gateway(make_config(breaker_threshold=1, breaker_cooldown=0.3, max_attempts=1))
    try:
        sim.add_fault("oa", Fault(kind="outage", duration=1.0))
        answer = await gateway.complete(OA, HELLO, deadline=10)
        assert answer.provider == "oa"
        sim.add_fault("oa", Fault(kind="outage", duration=60))
        with pytest.raises(ProviderUnavailable) as gave_up:
            await gateway.complete(OA, HELLO, deadline=1.0)
        assert gave_up.value.error_class == "server_error"
        assert "deadline" in str(gave_up.value)
    finally:
        await gateway.aclose()


async def test_client_side_rate_limit_queues_requests_instead_of_sending_them(
    sim: SimServer, make_config: ConfigFactory
) -> None:
    gateway = Gateway(make_config(rpm=120))  # 2 requests per second after the first minute's
    try:
        limiter = gateway._limiter("oa")
        for _ in range(120):  # this minute's allowance is spent already
            await limiter.acquire(0)
        await asyncio.gather(*(gateway.complete(OA, HELLO, max_tokens=16) for _ in range(3)))
    finally:
        await gateway.aclose()
    arrivals = [e.arrived_monotonic for e in sim.log("oa")]
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert len(arrivals) == 3 and all(g >= 0.4 for g in gaps), gaps  # ~0.5 s apart
    assert all(e.status == 200 for e in sim.log("oa"))


async def test_a_429_pauses_the_whole_process_not_just_the_call(
    sim: SimServer, gateway: Gateway
) -> None:
    sim.add_fault("oa", Fault(kind="rate_limit", count=1, retry_after=0.5))
    first = asyncio.create_task(gateway.complete(OA, HELLO))
    await wait_until(lambda: sim.log("oa"), what="the first request")
    await asyncio.sleep(0.05)  # the 429 is in: the provider asked this process to hold off
    others = await asyncio.gather(*(gateway.complete(OA, HELLO) for _ in range(3)))
    await first
    log = sim.log("oa")
    limited = [e for e in log if e.status == 429]
    assert len(limited) == 1 and len(others) == 3
    later = [e.arrived_monotonic - limited[0].arrived_monotonic for e in log[1:]]
    # calls that started after the 429 waited for its retry-after too, instead of sending
    # more requests into it
    assert len(later) == 4 and min(later) >= 0.45, later


async def test_cost_comes_from_real_usage_and_the_price_table(
    sim: SimServer, gateway: Gateway
) -> None:
    answer = await gateway.complete(OA, HELLO)
    u = answer.usage
    assert u.input_tokens > 0 and u.output_tokens > 0
    assert answer.cost == pytest.approx((u.input_tokens * 0.40 + u.output_tokens * 1.60) / 1e6)
    again = await gateway.complete(AN, HELLO)
    assert again.cost == pytest.approx(
        (again.usage.input_tokens * 1 + again.usage.output_tokens * 5) / 1e6
    )


async def test_every_request_carries_the_idempotency_key_and_attempt(
    sim: SimServer, gateway: Gateway
) -> None:
    sim.add_fault("oa", Fault(kind="server_error", count=1))
    await gateway.complete(OA, HELLO, idempotency_key="run-1:3")
    keys = [
        (e.headers.get("idempotency-key"), e.headers.get("x-kernos-attempt")) for e in sim.log("oa")
    ]
    assert keys == [("run-1:3", "1"), ("run-1:3", "2")]


async def test_the_journaled_attempts_are_plain_json(sim: SimServer, gateway: Gateway) -> None:
    sim.add_fault("an", Fault(kind="overloaded", count=1))
    seen: list[Attempt] = []

    async def record(a: Attempt) -> None:
        seen.append(a)

    await gateway.attempt_call(AN, build_request(HELLO, None, {}), on_attempt=record)
    payload = json.loads(json.dumps(seen[0].payload()))
    assert payload["error_class"] == "overloaded" and payload["status"] == 529
    assert payload["then"] == "retry" and payload["delay"] is not None
    assert Attempt.model_validate(payload) == seen[0]


async def test_a_down_route_is_retried_when_its_soonest_model_may_answer(
    sim: SimServer, make_config: ConfigFactory
) -> None:
    """The primary's breaker is open for 4 s; the fallback just ran out of attempts but may be
    tried again after a short backoff: the route is retried then, not when the breaker
    half-opens (and a deadline shorter than the breaker's cooldown is no reason to give up)."""
    gateway = Gateway(make_config(max_attempts=2, breaker_threshold=3, breaker_cooldown=4.0))
    try:
        primary = gateway._breakers.get(OA)
        for _ in range(3):  # three failures in a row: the primary's breaker opens for 4 s
            permit = primary.acquire()
            assert permit is not None
            permit.failure()
        sim.add_fault("an", Fault(kind="server_error", count=2))  # its two attempts fail
        started = time.monotonic()
        answer = await gateway.complete("both", HELLO, deadline=3.0)
        assert answer.provider == "an"
        assert time.monotonic() - started < 2.0
        assert sim.log("oa") == []  # its breaker kept the dead primary out of it
    finally:
        await gateway.aclose()


async def test_an_attempt_that_opens_the_breaker_is_journaled_as_a_fallback(
    sim: SimServer, make_config: ConfigFactory
) -> None:
    """The journal says what the gateway did next: not "retry" when the breaker just shut the
    model out."""
    gateway = Gateway(make_config(max_attempts=3, breaker_threshold=2, breaker_cooldown=5.0))
    seen: list[Attempt] = []

    async def record(a: Attempt) -> None:
        seen.append(a)

    try:
        sim.add_fault("oa", Fault(kind="server_error"))
        with pytest.raises(RouteDown) as down:
            await gateway.attempt_call(OA, build_request(HELLO, None, {}), on_attempt=record)
    finally:
        await gateway.aclose()
    assert [a.then for a in seen] == ["retry", "fallback"]
    assert seen[1].delay is None
    assert down.value.retry_at - time.time() > 4  # the breaker's probe time
