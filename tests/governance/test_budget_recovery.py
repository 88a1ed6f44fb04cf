"""A worker SIGKILLed in the middle of an LLM call that a budget counts: what it reserved is not
left reserved until the period turns, and the call its successor finishes is charged."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from _gateway_support import AN, config_for, write_config
from _kernel_support import until
from _procs import APPS, Workers

from kernos.kernel import Client, connect, load_app, output_of
from kernos.sim import Fault, SimServer
from kernos.store import RunState

ASK = load_app(str(APPS / "llm_app.py"))


@pytest.fixture
async def ask_client(db_url: str) -> AsyncIterator[Client]:
    c = await connect(db_url, registry=ASK)
    try:
        yield c
    finally:
        await c.close()


@pytest.mark.slow
async def test_a_killed_workers_reservation_is_taken_over_and_settled(
    kernos_sim: SimServer, ask_client: Client, db_url: str, workers: Workers, tmp_path: Path
) -> None:
    toml = write_config(tmp_path / "kernos.toml", config_for(kernos_sim))
    with toml.open("a") as f:
        f.write(
            '\n[[budgets]]\nname = "tenant-day"\nper = "tenant"\nperiod = "day"\ntokens = 1000000\n'
        )
    env = {"KERNOS_CONFIG": str(toml)}
    # a 429 with retry-after 4 s: the worker holds the reservation while it waits, and dies
    kernos_sim.add_fault("an", Fault(kind="rate_limit", count=1, retry_after=4))
    first = workers.start(db_url, app="llm_app.py", lease_ttl=1.0, env=env)
    run = await ask_client.start("ask", {"route": AN, "text": "hello"})

    async def reserved() -> bool:
        usage = await ask_client.store.budget_usage()
        return bool(usage) and usage[0].reserved_tokens > 0

    async def attempt_journaled() -> bool:
        return any(e.type == "llm_attempt" for e in await ask_client.journal(run.id))

    await until(reserved, timeout=30)
    await until(attempt_journaled, timeout=30)
    assert first.kill() < 0
    held = (await ask_client.store.budget_usage())[0]
    assert held.reserved_tokens > 0 and held.tokens == 0  # the dead worker's reservation

    workers.start(db_url, app="llm_app.py", lease_ttl=1.0, env=env)
    done = await ask_client.wait(run.id, timeout=60)
    assert done.state == RunState.COMPLETED, (done.error, workers.logs())
    assert output_of(done)["text"] == "sim reply to: hello"
    usage = (await ask_client.store.budget_usage())[0]
    assert usage.reserved_tokens == 0, "the killed worker's reservation leaked"
    answered = [e for e in kernos_sim.log("an") if e.status == 200]
    assert usage.tokens > 0 and len(answered) >= 1  # the successor's call was charged
    assert await ask_client.store.held_budget(f"{run.id}:1") == []
