"""ctx.llm inside runs: journaled attempts, replay, parking on an outage, deadlines, and a worker
killed (SIGKILL, a real process) in the middle of a backoff."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from _gateway_support import AN, OA, ConfigFactory, config_for, write_config
from _kernel_support import until
from _procs import APPS, Workers

import kernos
from kernos.gateway import default_services
from kernos.kernel import Client, Registry, connect, load_app, output_of
from kernos.sim import Fault, SimServer
from kernos.store import RunState
from kernos.testing import FAST, running_worker

#: the agents the worker processes run (load_app imports tests/apps/llm_app.py)
ASK = load_app(str(APPS / "llm_app.py"))


def register_asker(registry: Registry) -> None:
    @kernos.agent("asker", registry=registry)
    async def asker(ctx: kernos.RunContext, q: dict[str, Any]) -> dict[str, Any]:
        kw = {"deadline": q["deadline"]} if "deadline" in q else {}
        answer = await ctx.llm(q["route"], [{"role": "user", "content": q["text"]}], **kw)
        if q.get("then_wait"):
            await ctx.wait_for_message("go")  # parks the run: waking it replays ctx.llm
        return {"text": answer.text, "provider": answer.provider, "cost": answer.cost}


async def journal_types(client: Client, run_id: str) -> list[str]:
    return [e.type for e in await client.journal(run_id)]


async def test_a_call_is_journaled_and_replay_does_not_ask_again(
    sim: SimServer, client: Client, registry: Registry, make_config: ConfigFactory
) -> None:
    register_asker(registry)
    sim.add_fault("oa", Fault(kind="overloaded", count=1))
    services = default_services(make_config())
    async with running_worker(client, registry, FAST, services=services):
        run = await client.start("asker", {"route": OA, "text": "hi", "then_wait": True})
        await until(lambda: _state_is(client, run.id, RunState.WAITING))
        assert len(sim.log("oa")) == 2  # one failure, one answer
        await client.send(run.id, "go", None)
        done = await client.wait(run.id, timeout=15)
    assert done.state == RunState.COMPLETED, done.error
    assert output_of(done)["provider"] == "oa"
    assert len(sim.log("oa")) == 2  # the replay returned the journaled answer
    events = await client.journal(run.id)
    attempt = next(e for e in events if e.type == "llm_attempt")
    assert attempt.payload["error_class"] == "overloaded" and attempt.payload["status"] == 503
    completed = next(e for e in events if e.type == "llm_completed")
    response = completed.payload["response"]
    assert response["attempts"] == 2 and response["usage"]["input_tokens"] > 0
    assert response["cost"] > 0 and completed.name == OA


async def test_a_full_outage_parks_the_run_and_it_resumes_by_itself(
    sim: SimServer, client: Client, registry: Registry, make_config: ConfigFactory
) -> None:
    """Graceful degradation: every model of the route down -> the run waits for a provider,
    holding nothing in the worker, and completes once a probe succeeds."""
    register_asker(registry)
    sim.add_fault("oa", Fault(kind="outage", duration=2.5))
    sim.add_fault("an", Fault(kind="outage", duration=2.5))
    config = make_config(max_attempts=1, breaker_threshold=1, breaker_cooldown=0.5)
    async with running_worker(client, registry, FAST, services=default_services(config)) as w:
        run = await client.start("asker", {"route": "both", "text": "hi"})
        await until(lambda: _state_is(client, run.id, RunState.WAITING))
        parked = await client.get(run.id)
        assert parked.waiting_for == "provider"
        assert w.active_runs == 0  # waiting costs nothing
        done = await client.wait(run.id, timeout=30)
    assert done.state == RunState.COMPLETED, done.error
    types = await journal_types(client, run.id)
    assert "llm_parked" in types and types.count("llm_completed") == 1
    assert types.count("llm_parked") >= 1


async def test_a_deadline_turns_the_wait_into_a_clear_failure(
    sim: SimServer, client: Client, registry: Registry, make_config: ConfigFactory
) -> None:
    register_asker(registry)
    sim.add_fault("oa", Fault(kind="outage", duration=120))
    config = make_config(max_attempts=1, breaker_threshold=1, breaker_cooldown=0.3)
    async with running_worker(client, registry, FAST, services=default_services(config)):
        run = await client.start("asker", {"route": OA, "text": "hi", "deadline": 1.5})
        done = await client.wait(run.id, timeout=30)
    assert done.state == RunState.FAILED
    assert done.error is not None
    error = json.loads(done.error)
    assert "ProviderUnavailable" in error["type"] and "deadline" in error["message"]
    types = await journal_types(client, run.id)
    assert types.count("llm_failed") == 1


async def test_an_auth_error_fails_the_call_at_once_and_the_agent_can_catch_it(
    sim: SimServer, client: Client, registry: Registry, make_config: ConfigFactory
) -> None:
    @kernos.agent("careful", registry=registry)
    async def careful(ctx: kernos.RunContext, route: str) -> str:
        try:
            await ctx.llm(route, [{"role": "user", "content": "x"}])
        except kernos.LLMCallFailed as exc:
            return f"handled {exc.error_class} from {exc.provider}"
        return "answered"

    sim.add_fault("oa", Fault(kind="auth"))
    async with running_worker(client, registry, FAST, services=default_services(make_config())):
        run = await client.start("careful", "both")
        done = await client.wait(run.id, timeout=15)
    assert output_of(done) == "handled auth from oa"
    assert sim.log("an") == []


async def test_without_an_llm_service_ctx_llm_is_a_clear_usage_error(
    client: Client, registry: Registry
) -> None:
    register_asker(registry)
    async with running_worker(client, registry, FAST, services={}):
        run = await client.start("asker", {"route": OA, "text": "hi"})
        done = await client.wait(run.id, timeout=15)
    assert done.state == RunState.FAILED and done.error is not None
    assert "ctx.llm needs a llm service" in json.loads(done.error)["message"]


# -- a worker killed during a backoff -----------------------------------------------------------


@pytest.fixture
async def ask_client(db_url: str) -> AsyncIterator[Client]:
    c = await connect(db_url, registry=ASK)
    try:
        yield c
    finally:
        await c.close()


@pytest.mark.slow
async def test_a_worker_killed_during_a_backoff_resumes_the_call_with_its_history(
    sim: SimServer, ask_client: Client, db_url: str, workers: Workers, tmp_path: Path
) -> None:
    """The provider said retry-after 4 s; the worker is SIGKILLed while it waits. The next
    worker continues the same call: it waits out the rest of those 4 s (not from zero, not
    not at all), makes attempt 2, and the journal holds both attempts' story."""
    toml = write_config(tmp_path / "kernos.toml", config_for(sim))
    env = {"KERNOS_CONFIG": str(toml)}
    sim.add_fault("an", Fault(kind="rate_limit", count=1, retry_after=4))
    first = workers.start(db_url, app="llm_app.py", lease_ttl=1.0, env=env)
    run = await ask_client.start("ask", {"route": AN, "text": "hello"})

    async def attempt_journaled() -> bool:
        return "llm_attempt" in await journal_types(ask_client, run.id)

    await until(attempt_journaled, timeout=30)
    assert first.kill() < 0  # SIGKILL, mid-backoff
    # 1 (the 429), or 2 when this loaded machine saw the attempt so late that the worker had
    # already asked again (an answer it died before committing: asked again, same key)
    sent_before_kill = len(sim.log("an"))
    workers.start(db_url, app="llm_app.py", lease_ttl=1.0, env=env)
    done = await ask_client.wait(run.id, timeout=60)
    assert done.state == RunState.COMPLETED, (done.error, workers.logs())
    assert output_of(done) == {"text": "sim reply to: hello", "attempts": 2, "provider": "an"}
    log = sim.log("an")
    events = await ask_client.journal(run.id)
    claims = [e.type for e in events].count("run_claimed")
    # attempt 1 was not forgotten nor repeated: one 429, then the answer. (On a loaded machine
    # the successor can lose its 1 s lease while it waits; each later claim may ask once more,
    # with the same idempotency key, and still resumes from the journaled attempt.)
    story = (
        [
            (e.status, e.fault, round(e.arrived_monotonic - log[0].arrived_monotonic, 2))
            for e in log
        ],
        [(e.type, e.payload.get("error_class"), e.payload.get("then")) for e in events],
    )  # what to read when this fails: the provider's log and the journal
    assert log[0].status == 429 and all(e.status == 200 for e in log[1:]), story
    assert 1 <= len(log) - 1 <= claims - 1 + (sent_before_kill - 1), (len(log), claims, story)
    assert log[1].arrived_monotonic - log[0].arrived_monotonic >= 4.0  # retry-after honoured
    assert {e.headers.get("idempotency-key") for e in log} == {f"{run.id}:1"}
    attempts = [e for e in events if e.type == "llm_attempt"]
    assert len(attempts) == 1 and attempts[0].payload["delay"] >= 4.0


async def _state_is(client: Client, run_id: str, state: RunState) -> bool:
    return (await client.get(run_id)).state == state
