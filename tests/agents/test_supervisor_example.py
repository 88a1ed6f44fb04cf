"""The supervisor example: children spawned, answers sent back with ctx.send and collected by a
parent that waits durably, on a real store and the simulated provider."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from _gateway_support import OA, config_for
from _kernel_support import ClientFor

from kernos.gateway import default_services
from kernos.kernel import Client, load_app, output_of
from kernos.sim import SimServer
from kernos.store import RunState
from kernos.testing import FAST, running_worker

APP = load_app("examples.supervisor")


@pytest.fixture
async def app_client(app_client_for: ClientFor) -> AsyncIterator[Client]:
    async with app_client_for(APP) as client:
        yield client


async def test_the_supervisor_collects_both_answers(
    kernos_sim: SimServer, app_client: Client
) -> None:
    services = default_services(config_for(kernos_sim, routes={"support": [OA]}))
    async with running_worker(app_client, APP, FAST, services=services):
        run = await app_client.start("supervisor", "Can I return a kettle after 40 days?")
        done = await app_client.wait(run.id, timeout=30)
    assert done.state == RunState.COMPLETED, done.error
    out = output_of(done)
    assert set(out["answers"]) == {"policy", "logistics"}
    assert out["answers"]["policy"] == "sim reply to: Can I return a kettle after 40 days?"
    assert out["reply"].startswith("sim reply to: Question: Can I return a kettle")
    events = await app_client.journal(run.id)
    children = [e.payload["child_id"] for e in events if e.type == "child_spawned"]
    assert len(children) == 2
    received = [e for e in events if e.type == "message_received"]
    assert sorted(e.payload["sender"] for e in received) == sorted(children)
    for child_id in children:
        child = await app_client.get(child_id)
        assert child.parent_id == run.id and child.state == RunState.COMPLETED
        sent = [e for e in await app_client.journal(child_id) if e.type == "message_sent"]
        assert [e.payload["to"] for e in sent] == [run.id]  # once, however often replayed
