"""The support agent of ``examples/support.py``, as a user runs it: on the simulator's scripted
replies, with refunds recorded in a real SQLite ledger keyed by idempotency key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from _gateway_support import OA, config_for
from _kernel_support import ClientFor

from kernos.gateway import default_services
from kernos.kernel import Client, load_app, output_of
from kernos.sim import Reply, SimServer
from kernos.sim import ToolCall as Call
from kernos.store import RunState
from kernos.testing import FAST, running_worker

APP = load_app("examples.support")


@pytest.fixture
async def app_client(app_client_for: ClientFor) -> AsyncIterator[Client]:
    async with app_client_for(APP) as client:
        yield client


async def test_the_support_agent_looks_up_refunds_and_answers(
    kernos_sim: SimServer, app_client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from examples import support

    monkeypatch.setenv("KERNOS_ACME_DB", str(tmp_path / "acme.db"))
    sim = kernos_sim
    sim.script(
        "oa",
        Reply(
            tool_calls=(
                Call(name="lookup_order", arguments={"order_id": "A-17"}),
                Call(name="invoice", arguments={"order_id": "A-17"}),  # from the MCP server
            )
        ),
        Reply(
            tool_calls=(
                Call(
                    name="issue_refund",
                    arguments={"order_id": "B-2", "amount": 12, "reason": "late"},
                ),
                Call(
                    name="issue_refund",
                    arguments={"order_id": "A-17", "amount": 42.5, "reason": "arrived broken"},
                ),
            )
        ),
        Reply(text="I refunded 42.50 EUR for A-17. B-2 is still in transit."),
    )
    services = default_services(config_for(sim, routes={"support": [OA]}))
    async with running_worker(app_client, APP, FAST, services=services):
        run = await app_client.start("support", "A-17 arrived broken and B-2 is late. Refund both.")
        done = await app_client.wait(run.id, timeout=30)
    assert done.state == RunState.COMPLETED, done.error
    assert output_of(done) == "I refunded 42.50 EUR for A-17. B-2 is still in transit."
    made = support.refunds()
    assert [(r["order_id"], r["amount"]) for r in made] == [("A-17", 42.5)]
    assert made[0]["key"].startswith(f"{run.id}:")
    told = [m["content"] for m in sim.log("oa")[-1].request["messages"] if m["role"] == "tool"]
    assert '"INV-991"' in told[1]
    assert "only delivered orders refund" in told[2]
    assert '"refund_id"' in told[3]
