"""``kernos status`` and a worker's row, with an in-process worker (issue #8, section 4): the
row follows the worker's life (registered, load while it runs, stopped when it drains), its
heartbeat carries the gateway's breaker states, and ``kernos status`` and ``kernos agents``
show it all, in a table and as JSON."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest
from _cli_support import kernos_async

import kernos
from kernos.gateway import Gateway, GatewayConfig, LLMService
from kernos.kernel import Client, Registry, WorkerConfig, connect
from kernos.store import RunState, WorkerRecord, WorkerState
from kernos.testing import running_worker, wait_until

#: heartbeats every 0.1 s
QUICK = WorkerConfig(concurrency=5, lease_ttl=0.3, poll_interval=0.05, grace=5.0)


@pytest.fixture
def registry() -> Registry:
    registry = Registry()

    @kernos.agent("held", registry=registry)
    async def held(ctx: kernos.RunContext, gate: str) -> str:
        return str(await ctx.wait_for_message(gate))

    @kernos.agent("held", version="2", registry=registry)
    async def held_v2(ctx: kernos.RunContext, gate: str) -> str:
        async def hold() -> None:
            flag = Path(gate)
            while not flag.exists():  # noqa: ASYNC110, ASYNC240 - the test creates the file
                await asyncio.sleep(0.01)

        await ctx.step("hold", hold)
        return "done"

    return registry


@pytest.fixture
async def client(db_url: str, registry: Registry) -> AsyncIterator[Client]:
    c = await connect(db_url, registry=registry)
    try:
        yield c
    finally:
        await c.close()


def tripped_gateway() -> Gateway:
    """A gateway whose breaker for ``sim:down`` is open (and ``sim:up`` closed)."""
    gateway = Gateway(GatewayConfig())
    gateway._breakers.get("sim:up")
    down = gateway._breakers.get("sim:down")
    for _ in range(gateway.config.gateway.breaker_threshold):
        permit = down.acquire()
        assert permit is not None
        permit.failure()
    return gateway


async def the_row(client: Client, worker_id: str) -> WorkerRecord:
    return next(w for w in await client.store.list_workers() if w.id == worker_id)


def test_the_llm_service_reports_its_breakers_without_changing_them() -> None:
    service = LLMService(tripped_gateway())
    assert service.health() == {"sim:down": "open", "sim:up": "closed"}
    assert service.health() == {"sim:down": "open", "sim:up": "closed"}


async def test_a_workers_row_follows_its_life_and_carries_its_breakers(
    db_url: str, client: Client, registry: Registry, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    services = {"llm": LLMService(tripped_gateway())}
    async with running_worker(client, registry, QUICK, services=services) as worker:
        row = await the_row(client, worker.id)
        assert row.state is WorkerState.ALIVE and row.host == socket.gethostname()
        assert row.pid == os.getpid() and row.concurrency == 5 and row.lease_ttl == 0.3
        assert set(row.versions) == {"held@1", "held@2"}
        assert row.info == {"breakers": {"sim:down": "open", "sim:up": "closed"}}

        run = await client.start("held", str(gate), version="2")

        async def busy() -> bool:
            return (await the_row(client, worker.id)).active == 1

        await wait_until(busy, what="the heartbeat to report one active run")
        status = await kernos_async(db_url, "status", "--json")
        assert status.returncode == 0, status.stderr
        fleet = json.loads(status.stdout)
        [shown] = fleet["workers"]
        assert shown["id"] == worker.id and shown["state"] == "alive"
        assert (shown["active"], shown["concurrency"]) == (1, 5)
        assert fleet["breakers"] == {"sim:down": {"open": 1}, "sim:up": {"closed": 1}}
        assert fleet["runs"]["running"] == 1 and fleet["queue"] == {"ready": 0, "unserved": 0}
        table = await kernos_async(db_url, "status")
        assert "sim:down open on 1" in table.stdout and "1/5" in table.stdout, table.stdout
        gate.write_text("open")
        await client.wait(run.id, timeout=15)
    row = await the_row(client, worker.id)
    assert row.state is WorkerState.STOPPED and row.active == 0 and row.stopped_at is not None


async def test_kernos_status_counts_runs_waiting_reasons_and_spend_today(
    db_url: str, client: Client, registry: Registry
) -> None:
    async with running_worker(client, registry, QUICK) as worker:
        runs = [await client.start("held", "go", version="1") for _ in range(2)]
        for run in runs:
            await wait_until(partial(_waiting, client, run.id), what="a run to wait for a message")
        queued = await client.start("held", "later", version="2", delay=3600)
        fleet = json.loads((await kernos_async(db_url, "status", "--json")).stdout)
        assert fleet["waiting"] == {"message": 2}
        assert fleet["runs"]["waiting"] == 2 and fleet["runs"]["queued"] == 1
        assert fleet["queue"] == {"ready": 0, "unserved": 0}  # the queued run is not yet due
        assert fleet["spend_today"]["usd"] == 0 and fleet["spend_today"]["calls"] == 0
        assert [w["id"] for w in fleet["workers"]] == [worker.id]
        table = (await kernos_async(db_url, "status")).stdout
        assert "message 2" in table and "SPEND" in table and "$0.0000" in table, table
        agents = await kernos_async(db_url, "agents")
        assert agents.returncode == 0, agents.stderr
        lines = agents.stdout.splitlines()
        assert lines[0].split() == [
            "AGENT", "VERSION", "STATE", "WORKERS", "QUEUED", "RUNNING", "WAITING", "PAUSED",
        ]  # fmt: skip
        assert lines[1].split() == ["held", "1", "active", "1", "0", "0", "2", "0"]
        assert lines[2].split() == ["held", "2", "default", "1", "1", "0", "0", "0"]
        await client.cancel(queued.id)
        for run in runs:
            await client.send(run.id, "go", "ok")
            await client.wait(run.id, timeout=15)


async def _waiting(client: Client, run_id: str) -> bool:
    return (await client.get(run_id)).state == RunState.WAITING


async def test_kernos_agents_on_an_empty_database_and_an_unknown_version(db_url: str) -> None:
    await (await connect(db_url, registry=Registry())).close()  # an empty, migrated database
    empty = await kernos_async(db_url, "agents")
    assert empty.returncode == 0 and "no agents" in empty.stdout
    assert json.loads((await kernos_async(db_url, "agents", "--json")).stdout) == []
    unknown = await kernos_async(db_url, "agents", "retire", "nope", "1")
    assert unknown.returncode == 2 and "no agent named 'nope'" in unknown.stderr
