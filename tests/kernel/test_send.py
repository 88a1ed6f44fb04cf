"""ctx.send: a run's message to another run commits with the sender's journal entry, so it is
sent once however often the sender replays; a message to a finished run is refused."""

from __future__ import annotations

from typing import Any

import kernos
from kernos.kernel import Client, Registry, output_of
from kernos.store import RunState
from kernos.testing import FAST, running_worker, wait_until


def register(registry: Registry) -> None:
    @kernos.agent("listener", registry=registry)
    async def listener(ctx: kernos.RunContext, _: Any) -> Any:
        return await ctx.wait_for_message("news")

    @kernos.agent("sender", registry=registry)
    async def sender(ctx: kernos.RunContext, job: dict[str, Any]) -> str:
        await ctx.send(job["to"], "news", {"hello": job["to"]})
        await ctx.wait_for_message("go")  # a replay after this must not send again
        return "sent"


async def test_a_message_is_sent_once_and_wakes_the_receiver(
    client: Client, registry: Registry
) -> None:
    register(registry)
    async with running_worker(client, registry, FAST, services={}):
        listener = await client.start("listener", None)
        await wait_until(lambda: _state(client, listener.id, RunState.WAITING))
        sender = await client.start("sender", {"to": listener.id})
        heard = await client.wait(listener.id, timeout=15)
        await wait_until(lambda: _state(client, sender.id, RunState.WAITING))
        await client.send(sender.id, "go", None)
        done = await client.wait(sender.id, timeout=15)
    assert output_of(heard) == {"hello": listener.id}
    assert done.state == RunState.COMPLETED, done.error
    sent = [e for e in await client.journal(sender.id) if e.type == "message_sent"]
    assert len(sent) == 1 and sent[0].payload == {"to": listener.id, "topic": "news"}
    received = [e for e in await client.journal(listener.id) if e.type == "message_received"]
    assert [e.payload["sender"] for e in received] == [sender.id]


async def test_a_message_to_a_finished_run_fails_the_sender_clearly(
    client: Client, registry: Registry
) -> None:
    register(registry)
    async with running_worker(client, registry, FAST, services={}):
        listener = await client.start("listener", None)
        await wait_until(lambda: _state(client, listener.id, RunState.WAITING))
        await client.cancel(listener.id)
        await client.wait(listener.id, timeout=15)
        sender = await client.start("sender", {"to": listener.id})
        done = await client.wait(sender.id, timeout=15)
    assert done.state == RunState.FAILED
    assert done.error is not None and "a message to it would never be read" in done.error
    assert "message_sent" not in [e.type for e in await client.journal(sender.id)]


async def _state(client: Client, run_id: str, state: RunState) -> bool:
    return (await client.get(run_id)).state == state
