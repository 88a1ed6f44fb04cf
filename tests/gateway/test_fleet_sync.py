"""The gateway's rate limits and breakers shared across the fleet (issue #9, section 2), in one
process: two gateways stand for two workers, with the provider simulator over real HTTP and a
real store on both databases between them. The exchange is ``FleetSync``, driven one step at a
time here (``sync()``) so that each test says exactly what one worker learned from the other;
tests/fleet/test_shared_limits.py runs the same with real worker processes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from _gateway_support import OA, ConfigFactory

import kernos
from kernos.gateway import Gateway, GatewayConfig, LLMService
from kernos.gateway._breaker import BreakerState
from kernos.gateway._fleet import FleetSync
from kernos.gateway._gateway import RouteDown, build_request
from kernos.kernel import Client, FleetMember, Registry, WorkerConfig, connect
from kernos.sim import Fault, SimServer
from kernos.store import SqlStore, WorkerRegistration, open_store
from kernos.testing import running_worker, wait_until

ONLY_OA = {"only": [OA]}
Gateways = Callable[[GatewayConfig], Gateway]
REQUEST = build_request([{"role": "user", "content": "hi"}], None, {})


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[SqlStore]:
    s = open_store(db_url)
    await s.migrate()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def gateways() -> AsyncIterator[Gateways]:
    """Gateways for the test, closed after it (their HTTP clients hold connections)."""
    made: list[Gateway] = []

    def make(config: GatewayConfig) -> Gateway:
        made.append(Gateway(config))
        return made[-1]

    yield make
    for gateway in made:
        await gateway.aclose()


async def joined(store: SqlStore, gateway: Gateway, worker_id: str) -> FleetSync:
    """``gateway`` as the gateway of a registered, live worker ``worker_id``."""
    await store.register_worker(
        WorkerRegistration(
            id=worker_id, host="h", pid=1, versions=("a@1",), concurrency=1, lease_ttl=30.0
        )
    )
    service = LLMService(gateway)
    await service.join_fleet(store, worker_id)
    assert service.fleet is not None
    return service.fleet


def rates(gateway: Gateway, provider: str = "oa") -> tuple[float | None, float | None]:
    return gateway._limiter(provider).rates()


async def test_each_live_worker_takes_its_share_of_the_configured_limits(
    store: SqlStore, gateways: Gateways, make_config: ConfigFactory
) -> None:
    a, b = (gateways(make_config(rpm=600, tpm=60_000)) for _ in range(2))
    first = await joined(store, a, "a")
    assert rates(a) == (600, 60_000)  # alone
    await joined(store, b, "b")
    assert rates(b) == (300, 30_000)  # it joined a fleet of two
    await first.sync()
    assert rates(a) == (300, 30_000)
    await store.stop_worker("b")
    await first.sync()
    assert rates(a) == (600, 60_000)  # b left: its share is a's again
    assert a.fleet_report().providers == ("an", "oa")


async def test_a_retry_after_given_to_one_worker_pauses_the_others(
    store: SqlStore, gateways: Gateways, sim: SimServer, make_config: ConfigFactory
) -> None:
    config = make_config(routes=ONLY_OA, max_attempts=1)
    a, b = gateways(config), gateways(config)
    fleet_a, fleet_b = await joined(store, a, "a"), await joined(store, b, "b")
    sim.add_fault("oa", Fault(kind="rate_limit", count=1, retry_after=4))
    with pytest.raises(RouteDown):
        await a.attempt_call("only", REQUEST)
    pause = a.fleet_report().paused["oa"]
    assert 2.0 < pause <= 4.0
    await fleet_a.sync()  # a publishes its news
    seen = await fleet_b.sync()  # b reads it
    assert 1.0 < seen.paused["oa"] <= 4.0
    assert b._limiter("oa").snapshot().paused_until is not None
    assert b.fleet_report().paused == {}  # b does not repeat a's news as its own

    answer = await asyncio.wait_for(b.complete("only", [{"role": "user", "content": "hi"}]), 30)
    assert answer.provider == "oa"
    first, second = sim.log("oa")
    assert first.status == 429 and second.status == 200
    # b sent nothing before the retry-after a was given had passed
    assert second.arrived_monotonic - first.arrived_monotonic >= 3.95


async def test_a_breaker_opened_on_one_worker_is_held_open_on_the_others(
    store: SqlStore, gateways: Gateways, sim: SimServer, make_config: ConfigFactory
) -> None:
    config = make_config(routes=ONLY_OA, max_attempts=1, breaker_threshold=1, breaker_cooldown=30.0)
    a, b = gateways(config), gateways(config)
    fleet_a, fleet_b = await joined(store, a, "a"), await joined(store, b, "b")
    sim.add_fault("oa", Fault(kind="server_error", count=1))
    with pytest.raises(RouteDown):
        await a.attempt_call("only", REQUEST)
    assert a.breaker_states()[OA].state is BreakerState.OPEN
    await fleet_a.sync()
    await fleet_b.sync()
    held = b.breaker_states()[OA]
    assert held.state is BreakerState.OPEN and held.held
    with pytest.raises(RouteDown) as down:
        await b.attempt_call("only", REQUEST)
    assert len(sim.log("oa")) == 1  # b did not call the endpoint a found failing
    assert down.value.retry_at - time.time() > 20  # parked until a's cooldown ends
    assert b.fleet_report().open == {}  # a reports it; b holds it for a
    assert set(a.fleet_report().open) == {OA}


async def test_news_is_published_at_once_not_at_the_next_interval(
    store: SqlStore, gateways: Gateways, sim: SimServer, make_config: ConfigFactory
) -> None:
    config = make_config(routes=ONLY_OA, max_attempts=1, fleet_sync=3600.0)
    a = gateways(config)
    following = asyncio.create_task((await joined(store, a, "a")).run())
    try:
        await joined(store, gateways(config), "b")
        sim.add_fault("oa", Fault(kind="rate_limit", count=1, retry_after=30))
        with pytest.raises(RouteDown):
            await a.attempt_call("only", REQUEST)

        async def b_sees_the_pause() -> bool:
            return "oa" in (await store.fleet_gateway("b")).paused

        await wait_until(b_sees_the_pause, timeout=10, what="a's pause to be published")
    finally:
        following.cancel()
        with pytest.raises(asyncio.CancelledError):
            await following


async def test_fleet_sync_zero_keeps_limits_and_breakers_to_the_worker(
    store: SqlStore, gateways: Gateways, make_config: ConfigFactory
) -> None:
    service = LLMService(gateways(make_config(rpm=600, fleet_sync=0.0)))
    await service.join_fleet(store, "alone")
    assert service.fleet is None
    await asyncio.wait_for(service.follow_fleet(), 5)  # returns at once: nothing to follow
    assert (await store.fleet_gateway("other")).sharing == {}


# -- in a worker ---------------------------------------------------------------------------------


@pytest.fixture
async def client(db_url: str) -> AsyncIterator[Client]:
    c = await connect(db_url, registry=Registry())
    try:
        yield c
    finally:
        await c.close()


def quiet_registry() -> Registry:
    registry = Registry()

    @kernos.agent("idle", registry=registry)
    async def idle(ctx: kernos.RunContext, x: Any) -> Any:
        return x

    return registry


async def test_workers_join_the_fleet_before_claiming_and_leave_it_when_they_stop(
    client: Client, gateways: Gateways, make_config: ConfigFactory
) -> None:
    """A worker's gateway has its share before the worker claims its first run; when a worker
    stops, the others take its share back."""
    config = WorkerConfig(concurrency=2, lease_ttl=3.0, poll_interval=0.05, grace=5.0)
    first = LLMService(gateways(make_config(rpm=600)))
    second = LLMService(gateways(make_config(rpm=600)))
    assert isinstance(first, FleetMember)
    registry = quiet_registry()
    async with running_worker(client, registry, config, services={"llm": first}) as one:
        await wait_until(lambda: first.fleet is not None, what="the first worker to join")
        assert rates(first.gateway) == (600, None)
        async with running_worker(client, registry, config, services={"llm": second}) as two:
            # joined before it started: its share was right from the start
            assert rates(second.gateway) == (300, None)
            await wait_until(
                lambda: rates(first.gateway) == (300, None), what="the first worker's half"
            )
            rows = {w.id for w in await client.store.list_workers()}
            assert rows == {one.id, two.id}
        await wait_until(lambda: rates(first.gateway) == (600, None), what="the whole limit back")
