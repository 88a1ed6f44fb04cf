"""Services that share state across the fleet (``FleetMember``: the gateway's limits and
breakers, issue #9, section 2): the worker joins them to the fleet after registering and
before claiming its first run, follows the fleet until it stops, and a member that fails never
stops the worker."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import kernos
from kernos.errors import StoreUnavailable
from kernos.kernel import Client, DurableCall, FleetMember, Registry
from kernos.store import RunState, Store
from kernos.testing import FAST, running_worker, wait_until


class Member:
    """A service that records how the worker drove it."""

    def __init__(self, client: Client, run_id: str, *, broken: bool = False) -> None:
        self.client = client
        self.run_id = run_id
        self.broken = broken
        self.joined: list[tuple[str, RunState, list[str]]] = []
        self.following = asyncio.Event()
        self.cancelled = False

    async def join_fleet(self, store: Store, worker_id: str) -> None:
        run = await store.get_run(self.run_id)
        workers = [w.id for w in await store.list_workers()]
        self.joined.append((worker_id, run.state, workers))
        if self.broken:
            raise StoreUnavailable("the database is away")

    async def follow_fleet(self) -> None:
        self.following.set()
        if self.broken:
            raise RuntimeError("a bug in the member")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise

    async def __call__(self, call: DurableCall, /, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("not called")


def register(registry: Registry) -> None:
    @kernos.agent("plain", registry=registry)
    async def plain(ctx: kernos.RunContext, x: Any) -> Any:
        return x


async def test_a_member_joins_after_registration_before_the_first_claim_and_follows(
    client: Client, registry: Registry
) -> None:
    register(registry)
    run = await client.start("plain", 1)  # ready before the worker starts
    member = Member(client, run.id)
    assert isinstance(member, FleetMember)
    async with running_worker(client, registry, FAST, services={"m": member}) as worker:
        await asyncio.wait_for(member.following.wait(), 15)
        done = await client.wait(run.id, timeout=15)
    assert done.state == RunState.COMPLETED
    [(worker_id, state, rows)] = member.joined
    assert worker_id == worker.id and worker.id in rows and state == RunState.QUEUED
    assert member.cancelled  # following ends when the worker stops


async def test_a_failing_member_does_not_stop_the_worker(
    client: Client, registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    register(registry)
    run = await client.start("plain", 2)
    member = Member(client, run.id, broken=True)
    async with running_worker(client, registry, FAST, services={"m": member}):
        done = await client.wait(run.id, timeout=15)
        await wait_until(lambda: "stopped following the fleet" in caplog.text)
    assert done.state == RunState.COMPLETED
    assert len(member.joined) == 1
    assert "could not join the fleet's shared limits yet: the database is away" in caplog.text
