"""Approval deadlines that escalate, and notifications that outlive the worker that queued them.

An approval whose deadline escalates is marked escalated (journaled, audited), announced again
(``approval.escalated``, to the escalation URL), and keeps waiting for a person; it takes its
default only at the escalated deadline. The notification of an approval is committed with it
and delivered by whichever worker is alive: a worker SIGKILLed mid-delivery loses nothing.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from _cli_support import kernos_async
from _kernel_support import until
from _procs import APPS, Workers
from _webhook_support import Receiver

import kernos
from kernos.errors import ToolRejected
from kernos.governance import WebhookNotifier
from kernos.kernel import Client, Registry, connect, load_app, output_of
from kernos.store import ApprovalState, RunState
from kernos.testing import FAST, running_worker, wait_until

SECRET = "whsec-test-0123456789"
ASKS = load_app(str(APPS / "approval_app.py"))


@pytest.fixture
def receivers() -> Iterator[tuple[Receiver, Receiver]]:
    first, escalation = Receiver(), Receiver()
    try:
        yield first, escalation
    finally:
        first.close()
        escalation.close()


@pytest.fixture
async def asks_client(db_url: str) -> AsyncIterator[Client]:
    c = await connect(db_url, registry=ASKS)
    try:
        yield c
    finally:
        await c.close()


def notifier_for(receivers: tuple[Receiver, Receiver]) -> WebhookNotifier:
    return WebhookNotifier(
        receivers[0].url, SECRET, allow_private=True, escalation_url=receivers[1].url
    )


async def test_an_unanswered_approval_escalates_then_takes_its_default(
    asks_client: Client, receivers: tuple[Receiver, Receiver]
) -> None:
    client = asks_client
    job = {"timeout": 0.5, "on_timeout": "escalate", "escalation_timeout": 1.5}
    async with running_worker(client, ASKS, FAST, services={}, notifier=notifier_for(receivers)):
        run = await client.start("asks", job)
        done = await client.wait(run.id, timeout=30)
        await wait_until(lambda: receivers[1].got, timeout=10, what="the escalation webhook")
    assert done.state == RunState.COMPLETED, done.error
    assert output_of(done) == {"approved": False, "by": "kernos:timeout", "expired": True}
    [approval] = await client.store.list_approvals(state=None, run_id=run.id)
    assert approval.state == ApprovalState.EXPIRED and approval.escalated_at is not None
    assert approval.escalated_at - approval.created_at >= 0.5
    assert approval.decided_at is not None and approval.decided_at - approval.escalated_at >= 1.5
    assert "escalated deadline" in (approval.reason or "")
    first, escalated = receivers[0].bodies(), receivers[1].bodies()
    assert [b["event"] for b in first] == ["run.needs_person"]
    assert [b["event"] for b in escalated] == ["approval.escalated"]
    assert escalated[0]["approval"]["id"] == approval.id
    assert escalated[0]["approval"]["escalated_at"] is not None
    types = [e.type for e in await client.journal(run.id)]
    assert types.count("approval_escalated") == 1 and types.count("approval_decided") == 1
    audit = [(e.actor, e.action) for e in await client.store.list_audit()]
    assert ("kernos:timeout", "approval.escalate") in audit
    assert ("kernos:timeout", "approval.expired") in audit


async def test_a_person_decides_after_the_escalation_and_theirs_stands(
    asks_client: Client, db_url: str
) -> None:
    client = asks_client
    job = {"timeout": 0.3, "on_timeout": "escalate"}  # after escalating: wait for a person
    async with running_worker(client, ASKS, FAST, services={}):
        run = await client.start("asks", job)

        async def escalated() -> str | None:
            found = await client.store.list_approvals(run_id=run.id)
            return found[0].id if found and found[0].escalated_at is not None else None

        approval_id = str(await wait_until(escalated, timeout=20, what="the escalation"))
        listed = await kernos_async(db_url, "approvals", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        [row] = json.loads(listed.stdout)
        assert row["id"] == approval_id and row["escalated_at"] is not None
        human = await kernos_async(db_url, "approvals", "list")
        assert "escalated" in human.stdout
        ok = await kernos_async(db_url, "approvals", "approve", approval_id, "--by", "lead")
        assert ok.returncode == 0, ok.stderr
        done = await client.wait(run.id, timeout=20)
    assert output_of(done) == {"approved": True, "by": "lead", "expired": False}


def _toml(path: Path, receiver: Receiver) -> Path:
    path.write_text(
        f'[notifications]\nwebhook_url = "{receiver.url}"\nallow_private = true\ntimeout = 1.0\n'
    )
    return path


@pytest.mark.slow
async def test_a_worker_killed_mid_delivery_leaves_the_notification_to_another(
    asks_client: Client, db_url: str, workers: Workers, tmp_path: Path
) -> None:
    receiver = Receiver(["hang"])  # the first delivery never gets an answer
    try:
        env = {
            "KERNOS_CONFIG": str(_toml(tmp_path / "kernos.toml", receiver)),
            "KERNOS_WEBHOOK_SECRET": SECRET,
        }
        first = workers.start(db_url, app="approval_app.py", env=env)
        run = await asks_client.start("asks", {"question": "Wire 9,000 EUR?"})
        await until(lambda: receiver.got, timeout=30)
        assert first.kill() < 0  # SIGKILL while the POST is in flight
        [queued] = await asks_client.store.list_notifications(pending=True)
        assert queued.attempts == 1
        workers.start(db_url, app="approval_app.py", env=env)

        async def delivered() -> bool:
            sent = await asks_client.store.list_notifications()
            return bool(sent) and sent[0].delivered_at is not None

        await until(delivered, timeout=30)
        [sent] = await asks_client.store.list_notifications()
        assert sent.attempts == 2, workers.logs()
        bodies: list[dict[str, Any]] = receiver.bodies()
        assert [b["id"] for b in bodies] == [sent.id, sent.id]
        assert bodies[0]["approval"]["run_id"] == run.id
    finally:
        receiver.close()


async def test_a_tools_approval_deadline_can_escalate(client: Client, registry: Registry) -> None:
    @kernos.tool(
        requires_approval=True,
        approval_timeout=0.3,
        on_approval_timeout="escalate",
        escalation_timeout=0.5,
    )
    def wire(amount: int) -> str:
        """Wire money."""
        return f"wired {amount}"

    @kernos.agent("wirer", registry=registry)
    async def wirer(ctx: kernos.RunContext, _: Any) -> str:
        try:
            await ctx.approve_tool(wire, {"amount": 9000})
        except ToolRejected as exc:
            return f"not wired: {exc}"
        return "wired"

    async with running_worker(client, registry, FAST, services={}):
        run = await client.start("wirer", None)
        done = await client.wait(run.id, timeout=30)
    assert str(output_of(done)).startswith("not wired")
    [approval] = await client.store.list_approvals(state=None, run_id=run.id)
    assert approval.escalated_at is not None and approval.state == ApprovalState.EXPIRED
