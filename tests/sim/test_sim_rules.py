"""Fault rules as data (parsing, validation, the spec round trip), the seeded decisions of a
``Simulator`` without HTTP, and the life cycle of a served simulator."""

from __future__ import annotations

import threading
import time

import hypothesis.strategies as st
import openai
import pytest
from hypothesis import given

from kernos.errors import InvalidInput
from kernos.sim import (
    FAULT_KINDS,
    Fault,
    Reply,
    Simulator,
    parse_provider_fault,
    serve,
)

_numbers = st.none() | st.floats(min_value=0, max_value=1e6, allow_nan=False)
_names = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789-.*"), min_size=1)
_faults = st.builds(
    Fault,
    kind=st.sampled_from([k for k in FAULT_KINDS if k != "mixed"]),
    rate=st.floats(min_value=0, max_value=1),
    count=st.none() | st.integers(min_value=1, max_value=1000),
    models=st.none() | st.lists(_names, min_size=1, max_size=3).map(tuple),
    stream=st.none() | st.booleans(),
    retry_after=_numbers,
    retry_after_ms=_numbers,
    delay=_numbers,
    after=st.none() | st.integers(min_value=0, max_value=100),
    start=_numbers,
    duration=st.none() | st.floats(min_value=0.001, max_value=1e6),
)


@given(_faults)
def test_a_rule_reads_back_from_its_spec(fault: Fault) -> None:
    assert Fault.parse(fault.describe()) == fault


def test_specs() -> None:
    assert Fault.parse("rate_limit") == Fault(kind="rate_limit")
    assert Fault.parse(" mixed:rate=0.2, mix=rate_limit|overloaded ") == Fault(
        kind="mixed", rate=0.2, mix=("rate_limit", "overloaded")
    )
    assert parse_provider_fault("*:outage:start=5,duration=10") == (
        "*",
        Fault(kind="outage", start=5, duration=10),
    )


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("", "kind"),
        ("rate_limit:retry_after", "key=value"),
        ("rate_limit:rate=1.5", "rate"),
        ("rate_limit:count=0", "count"),
        ("rate_limit:colour=red", "colour"),
        ("slow:mix=rate_limit", "mix applies only"),
        ("mixed:mix=mixed", "other than 'mixed'"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec: str, says: str) -> None:
    with pytest.raises(InvalidInput, match=says) as info:
        Fault.parse(spec)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("spec", ["rate_limit", "openai:", ":rate_limit"])
def test_provider_specs_need_both_parts(spec: str) -> None:
    with pytest.raises(InvalidInput, match="PROVIDER:KIND"):
        parse_provider_fault(spec)


def test_provider_names_are_checked() -> None:
    sim = Simulator()
    for bad in ("", "_sim", "a/b", "x" * 65):
        with pytest.raises(InvalidInput, match="provider name"):
            sim.add_fault(bad, Fault(kind="auth"))
    sim.add_fault("*", Fault(kind="auth"))
    sim.script("Open.AI_2-x", "hello")


def test_decisions_repeat_with_the_seed() -> None:
    def run(seed: int) -> list[str | None]:
        sim = Simulator(seed=seed)
        sim.add_fault("p", Fault(kind="mixed", rate=0.3))
        sim.add_fault("p", Fault(kind="slow", rate=0.5))
        return [sim.decide("p", "m", stream=False).kind for _ in range(200)]

    first = run(7)
    assert run(7) == first
    assert run(8) != first
    assert {"slow", None} <= set(first)


def test_script_is_taken_only_by_answered_requests() -> None:
    sim = Simulator()
    sim.script("p", "one")
    sim.add_fault("p", Fault(kind="connection", count=1))
    failed = sim.decide("p", "m", stream=False)
    assert (failed.kind, failed.reply) == ("connection", Reply(text="one"))
    assert sim.scripted("p") == [Reply(text="one")]
    answered = sim.decide("p", "m", stream=False)
    assert (answered.kind, answered.reply) == (None, Reply(text="one"))
    assert sim.scripted("p") == []


def test_log_is_bounded() -> None:
    sim = Simulator(log_limit=3)
    with serve(simulator=sim) as server:
        with openai.OpenAI(
            base_url=server.openai_base_url("p"), api_key="k", max_retries=0, timeout=5
        ) as client:
            for _ in range(5):
                client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "x"}]
                )
        assert [e.seq for e in server.log("p")] == [3, 4, 5]


def test_serve_picks_a_free_port_and_stops_promptly_with_a_request_held() -> None:
    """A hung request is released when the server stops: the client sees the connection drop."""
    outcome: list[BaseException] = []
    with serve() as server:
        assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}"
        server.add_fault("p", Fault(kind="hang"))

        def call() -> None:
            with openai.OpenAI(
                base_url=server.openai_base_url("p"), api_key="k", max_retries=0, timeout=30
            ) as client:
                try:
                    client.chat.completions.create(
                        model="m", messages=[{"role": "user", "content": "x"}]
                    )
                except openai.APIError as exc:
                    outcome.append(exc)

        caller = threading.Thread(target=call)
        caller.start()
        deadline = time.monotonic() + 10
        while not server.log("p"):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 2
    caller.join(timeout=10)
    assert len(outcome) == 1 and isinstance(outcome[0], openai.APIConnectionError)


def test_a_port_in_use_fails_in_the_caller() -> None:
    with serve() as server, pytest.raises(OSError), serve(port=server.port):
        pass
