"""The control endpoint steers a running simulator, and the request log says what happened
and when, precisely enough to check that a client waited out a ``retry-after``."""

from __future__ import annotations

import time

import anthropic
import httpx
import openai
from anthropic.types import MessageParam
from openai.types.chat import ChatCompletionMessageParam

from kernos.sim import Fault, SimServer

OAI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]
ANT: list[MessageParam] = [{"role": "user", "content": "hello"}]


def test_faults_round_trip(sim: SimServer, http: httpx.Client, oai: openai.OpenAI) -> None:
    put = http.put(
        "/_sim/providers/oai/faults",
        json={"faults": [{"kind": "rate_limit", "count": 1, "retry_after": 3}]},
    )
    assert put.status_code == 200
    assert put.json() == {
        "provider": "oai",
        "faults": [{"kind": "rate_limit", "rate": 1.0, "count": 1, "retry_after": 3.0}],
    }
    added = http.post("/_sim/providers/oai/faults", json={"kind": "slow", "delay": 0.01})
    assert [f["kind"] for f in added.json()["faults"]] == ["rate_limit", "slow"]
    assert sim.faults("oai") == [
        Fault(kind="rate_limit", count=1, retry_after=3),
        Fault(kind="slow", delay=0.01),
    ]
    try:
        oai.chat.completions.create(model="m", messages=OAI)
        raise AssertionError("the 429 rule did not fire")
    except openai.RateLimitError as exc:
        assert exc.response.headers["retry-after"] == "3"
    listed = http.get("/_sim/providers/oai/faults").json()["faults"]
    assert listed == [{"kind": "slow", "rate": 1.0, "delay": 0.01}]
    assert http.delete("/_sim/providers/oai/faults").json()["faults"] == []
    assert http.get("/_sim/providers").json() == {"providers": ["oai"]}


def test_bad_control_requests_get_one_line_and_change_nothing(
    sim: SimServer, http: httpx.Client
) -> None:
    sim.add_fault("oai", Fault(kind="auth"))
    cases = [
        http.put("/_sim/providers/oai/faults", json={"faults": [{"kind": "nope"}]}),
        http.post("/_sim/providers/oai/faults", json={"kind": "slow", "rate": 3}),
        http.post("/_sim/providers/oai/faults", content=b"{not json"),
        http.post("/_sim/providers/_x/faults", json={"kind": "slow"}),
        http.post("/_sim/providers/oai/script", json={"replies": [{"txt": "typo"}]}),
        http.get("/_sim/log?since=yesterday"),
    ]
    for response in cases:
        assert response.status_code == 400, response.text
        message = response.json()["error"]
        assert message and "\n" not in message
    assert sim.faults("oai") == [Fault(kind="auth")]
    assert sim.simulator.scripted("oai") == []


def test_script_through_the_endpoint(
    sim: SimServer, http: httpx.Client, ant: anthropic.Anthropic
) -> None:
    http.post(
        "/_sim/providers/ant/script",
        json={
            "replies": [
                {"text": "one"},
                {"tool_calls": [{"name": "lookup", "arguments": {"id": 7}}]},
            ]
        },
    )
    assert len(http.get("/_sim/providers/ant/script").json()["replies"]) == 2
    first = ant.messages.create(model="c", max_tokens=50, messages=ANT).content[0]
    assert first.type == "text" and first.text == "one"
    second = ant.messages.create(model="c", max_tokens=50, messages=ANT).content[0]
    assert second.type == "tool_use" and second.input == {"id": 7}
    http.post("/_sim/providers/ant/script", json={"replies": [{"text": "dropped"}]})
    assert http.delete("/_sim/providers/ant/script").json()["replies"] == []


def test_log_records_arrival_model_fault_status_and_kernos_headers(
    sim: SimServer, http: httpx.Client, oai: openai.OpenAI
) -> None:
    sim.add_fault("oai", Fault(kind="server_error", count=1))
    before_wall, before = time.time(), time.monotonic()
    headers = {"Idempotency-Key": "run1:3", "X-Kernos-Run": "run1", "X-Other": "no"}
    for _ in range(2):
        try:
            oai.chat.completions.create(
                model="gpt-sim", messages=OAI, stream=True, extra_headers=headers
            ).close()
        except openai.InternalServerError:
            pass
    entries = http.get("/_sim/log", params={"provider": "oai"}).json()["entries"]
    assert [(e["seq"], e["fault"], e["status"]) for e in entries] == [
        (1, "server_error", 500),
        (2, None, 200),
    ]
    first = entries[0]
    assert first["family"] == "openai" and first["model"] == "gpt-sim" and first["stream"]
    assert first["headers"] == {"idempotency-key": "run1:3", "x-kernos-run": "run1"}
    assert first["request"]["messages"] == OAI
    assert before <= first["arrived_monotonic"] <= entries[1]["arrived_monotonic"]
    assert before_wall - 1 <= first["arrived_wall"] <= time.time()
    since = http.get("/_sim/log", params={"since": 1}).json()["entries"]
    assert [e["seq"] for e in since] == [2]


def test_log_shows_the_sdk_waited_out_retry_after(sim: SimServer) -> None:
    """The official SDKs honour retry-after when they retry; the log's arrival times show it."""
    sim.add_fault("oai", Fault(kind="rate_limit", count=1, retry_after_ms=300))
    sim.add_fault("ant", Fault(kind="overloaded", count=1, retry_after=0.3))
    with openai.OpenAI(
        base_url=sim.openai_base_url("oai"), api_key="k", max_retries=1, timeout=5
    ) as client:
        assert client.chat.completions.create(model="m", messages=OAI).choices
    with anthropic.Anthropic(
        base_url=sim.anthropic_base_url("ant"), api_key="k", max_retries=1, timeout=5
    ) as aclient:
        assert aclient.messages.create(model="c", max_tokens=20, messages=ANT).content
    for provider in ("oai", "ant"):
        failed, retried = sim.log(provider)
        assert failed.status in (429, 529) and retried.status == 200
        assert retried.arrived_monotonic - failed.arrived_monotonic >= 0.3


def test_reset_forgets_everything(sim: SimServer, http: httpx.Client, oai: openai.OpenAI) -> None:
    sim.add_fault("oai", Fault(kind="auth"))
    sim.script("oai", "x")
    http.post("/oai/v1/chat/completions", json={"model": "m", "messages": OAI})
    assert http.post("/_sim/reset", json={"seed": 5}).json() == {"ok": True}
    assert sim.faults("oai") == [] and sim.log() == [] and sim.simulator.scripted("oai") == []
    assert http.get("/_sim/health").json() == {"ok": True}
