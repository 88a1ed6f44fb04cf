"""Claims and tenants, on a real SQLite file and a real PostgreSQL: per-tenant concurrency
limits held over every claimer of the database, and claims fair across tenants (DESIGN.md,
"Runs, workers, scheduling": priorities, per-agent and per-tenant concurrency limits).

A tenant's count is its runs ``running`` with a live lease, whoever holds them.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence

import pytest

from kernos.errors import InvalidInput
from kernos.store import (
    Claim,
    Event,
    NewRun,
    RunState,
    SqlStore,
    TenantLimits,
    new_run_id,
    open_store,
)

AGENTS = [("a", "1"), ("b", "1")]
#: run_at of the first run a test makes; each later one is a second newer
BASE = time.time() - 10_000


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[SqlStore]:
    s = open_store(db_url)
    await s.migrate()
    try:
        yield s
    finally:
        await s.close()


class Queue:
    """Makes runs with strictly increasing ``run_at`` (the claim order among equal priorities)."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self.made = 0

    async def add(self, tenant: str, count: int = 1, **fields: object) -> list[str]:
        ids = []
        for _ in range(count):
            run_id = new_run_id()
            kw: dict[str, object] = {"agent": "a", "agent_version": "1", "input": "null"}
            kw.update(fields)
            await self.store.create_run(
                NewRun(id=run_id, tenant=tenant, run_at=BASE + self.made, **kw)  # type: ignore[arg-type]
            )
            self.made += 1
            ids.append(run_id)
        return ids


async def claim(
    store: SqlStore,
    limit: int,
    tenants: TenantLimits | None,
    *,
    worker: str = "w",
    agent_limits: dict[str, int] | None = None,
    ttl: float = 60.0,
    agents: Sequence[tuple[str, str]] = AGENTS,
) -> list[Claim]:
    return await store.claim(
        worker_id=worker,
        agents=agents,
        limit=limit,
        lease_ttl=ttl,
        agent_limits=agent_limits or {},
        tenant_limits=tenants,
    )


def per_tenant(claims: Sequence[Claim]) -> Counter[str]:
    return Counter(c.run.tenant for c in claims)


async def running_per_tenant(store: SqlStore) -> Counter[str]:
    runs = await store.list_runs(state=RunState.RUNNING, limit=10_000)
    now = time.time()
    return Counter(r.tenant for r in runs if (r.lease_expires_at or 0) >= now)


# -- limits ------------------------------------------------------------------------------------


async def test_a_tenant_at_its_limit_gets_nothing_more_while_others_do(store: SqlStore) -> None:
    """acme may run 2 at once: a claim takes 2 of its 6 and every run of the others; a second
    claim, by another worker, takes nothing of acme's but a newer run of another tenant."""
    queue = Queue(store)
    await queue.add("acme", 6)
    beta = await queue.add("beta", 3)
    limits = TenantLimits(limits={"acme": 2})
    first = await claim(store, 10, limits, worker="w1")
    assert per_tenant(first) == {"acme": 2, "beta": 3}
    assert {c.run.id for c in first} >= set(beta)
    later = await queue.add("gamma")
    second = await claim(store, 10, limits, worker="w2")
    assert [c.run.id for c in second] == later
    assert await claim(store, 10, limits, worker="w3") == []
    assert await running_per_tenant(store) == {"acme": 2, "beta": 3, "gamma": 1}


async def test_a_finished_run_frees_its_tenants_slot(store: SqlStore) -> None:
    queue = Queue(store)
    acme = await queue.add("acme", 3)
    limits = TenantLimits(limits={"acme": 1})
    [only] = await claim(store, 10, limits)
    assert only.run.id == acme[0]
    assert await claim(store, 10, limits) == []
    await store.finish(
        only.run.id,
        only.token,
        state=RunState.COMPLETED,
        events=[Event(seq=1, type="run_completed", payload={"output": None})],
    )
    [next_one] = await claim(store, 10, limits)
    assert next_one.run.id == acme[1]


async def test_the_default_limit_holds_for_every_tenant_and_names_override_it(
    store: SqlStore,
) -> None:
    queue = Queue(store)
    for tenant in ("t1", "t2", "t3", "vip"):
        await queue.add(tenant, 4)
    limits = TenantLimits(default=1, limits={"vip": 3})
    claims = await claim(store, 20, limits)
    assert per_tenant(claims) == {"t1": 1, "t2": 1, "t3": 1, "vip": 3}
    assert await claim(store, 20, limits, worker="w2") == []


async def test_an_expired_lease_does_not_count_and_its_reclaim_does(store: SqlStore) -> None:
    """A run whose owner died holds no slot: it is claimed again, and then it counts."""
    queue = Queue(store)
    [stale] = await queue.add("acme")
    limits = TenantLimits(limits={"acme": 1})
    [first] = await claim(store, 5, limits, worker="dead", ttl=0.05)
    assert first.run.id == stale
    await queue.add("acme")
    await asyncio.sleep(0.2)  # the lease runs out on the database's clock
    [again] = await claim(store, 5, limits, worker="alive")
    assert again.run.id == stale and again.token == first.token + 1
    assert await claim(store, 5, limits, worker="other") == []


async def test_agent_and_tenant_limits_hold_together(store: SqlStore) -> None:
    queue = Queue(store)
    await queue.add("acme", 5, agent="a")
    await queue.add("acme", 5, agent="b")
    await queue.add("beta", 5, agent="a")
    limits = TenantLimits(limits={"acme": 4})
    claims = await claim(store, 20, limits, agent_limits={"a": 3})
    by_agent = Counter(c.run.agent for c in claims)
    assert by_agent["a"] == 3
    assert per_tenant(claims)["acme"] == 4
    assert len(claims) == 3 + by_agent["b"]


async def test_concurrent_claimers_never_exceed_a_tenants_limit(db_url: str) -> None:
    """Two store instances (as two worker processes would have), each claiming four times at
    the same moment, round after round until nothing is left to take: no tenant ever has more
    runs running than its limit, no run is claimed twice, and every slot is filled. (Without
    the tenants' locks, PostgreSQL's concurrent claims both count a tenant's free slots and
    both fill them: this test then fails nearly every time.)"""
    stores = [open_store(db_url), open_store(db_url)]
    await stores[0].migrate()
    try:
        for trial in range(3):
            await claim_concurrently(stores, f"t{trial}-")
    finally:
        for s in stores:
            await s.close()


async def claim_concurrently(stores: Sequence[SqlStore], prefix: str) -> None:
    queue = Queue(stores[0])
    await queue.add(f"{prefix}acme", 30)
    await queue.add(f"{prefix}beta", 20, agent="b")
    await queue.add(f"{prefix}gamma", 10)
    await queue.add(f"{prefix}delta", 6)
    limit = {"acme": 5, "beta": 3, "gamma": 10, "delta": 3}
    limits = TenantLimits(default=3, limits={f"{prefix}acme": 5, f"{prefix}gamma": 10})
    claimed: list[Claim] = []
    for _ in range(10):
        rounds = await asyncio.gather(
            *(
                claim(s, 3, limits, worker=f"{prefix}w{i}-{n}")
                for i, s in enumerate(stores)
                for n in range(4)
            )
        )
        batch = [c for r in rounds for c in r]
        claimed += batch
        running = await running_per_tenant(stores[0])
        for name, most in limit.items():
            assert running[f"{prefix}{name}"] <= most, (name, running)
        if not batch:
            break
    ids = [c.run.id for c in claimed]
    assert len(ids) == len(set(ids))
    assert per_tenant(claimed) == {f"{prefix}{name}": n for name, n in limit.items()}


async def test_claimers_with_different_agents_and_limits_never_deadlock(db_url: str) -> None:
    """Workers serving different agents share tenants: one takes agent a's lock and then the
    tenants', the other only the tenants'. Every claim waits only on advisory locks, taken in
    one order (agents, then tenants), so all of them finish and the limits hold."""
    stores = [open_store(db_url), open_store(db_url)]
    await stores[0].migrate()
    try:
        queue = Queue(stores[0])
        for tenant in ("t1", "t2", "t3", "t4", "t5"):
            await queue.add(tenant, 4, agent="a")
            await queue.add(tenant, 4, agent="b")
        limits = TenantLimits(default=2)
        claimed: list[Claim] = []
        for _ in range(10):
            rounds = await asyncio.gather(
                *(
                    claim(s, 2, limits, worker=f"a{n}", agents=[("a", "1")], agent_limits={"a": 6})
                    if n % 2
                    else claim(s, 2, limits, worker=f"b{n}", agents=[("b", "1")])
                    for s in stores
                    for n in range(4)
                )
            )
            batch = [c for r in rounds for c in r]
            claimed += batch
            if not batch:
                break
        assert per_tenant(claimed) == {t: 2 for t in ("t1", "t2", "t3", "t4", "t5")}
        assert Counter(c.run.agent for c in claimed)["a"] <= 6
    finally:
        for s in stores:
            await s.close()


# -- fairness ----------------------------------------------------------------------------------


async def test_claims_are_fair_across_tenants(store: SqlStore) -> None:
    """Tenant A queued 40 runs, then B queued 5: a claim of 10 takes turns between them, each
    tenant's oldest first (without [tenants], all 10 would be A's)."""
    queue = Queue(store)
    a = await queue.add("A", 40)
    b = await queue.add("B", 5)
    claims = await claim(store, 10, TenantLimits())
    turns = [run for pair in zip(a[:5], b, strict=True) for run in pair]
    assert [c.run.id for c in claims] == turns  # a[0], b[0], a[1], b[1], ...


async def test_without_tenant_limits_claims_stay_in_order(store: SqlStore) -> None:
    queue = Queue(store)
    a = await queue.add("A", 40)
    await queue.add("B", 5)
    claims = await claim(store, 10, None)
    assert [c.run.id for c in claims] == a[:10]


async def test_priority_wins_over_fairness(store: SqlStore) -> None:
    """All of A's urgent runs come before any run of a lower priority, however many tenants
    wait; among equal priorities, turns."""
    queue = Queue(store)
    a_low = await queue.add("A", 10, priority=0)
    b_low = await queue.add("B", 5, priority=0)
    a_high = await queue.add("A", 6, priority=5)
    claims = await claim(store, 10, TenantLimits())
    assert [c.run.id for c in claims] == [*a_high, a_low[0], b_low[0], a_low[1], b_low[1]]


async def test_a_flood_reaches_every_tenant_queued_behind_it(store: SqlStore) -> None:
    """A queued 100 runs, then B 50, then C 2: a claim of 10 reads past A's and B's floods
    (each holds more than the claim could take) and reaches C."""
    queue = Queue(store)
    await queue.add("A", 100)
    await queue.add("B", 50)
    c = await queue.add("C", 2)
    claims = await claim(store, 10, TenantLimits())
    assert per_tenant(claims) == {"A": 4, "B": 4, "C": 2}
    assert {x.run.id for x in claims} >= set(c)


async def test_a_capped_flood_leaves_room_for_the_others(store: SqlStore) -> None:
    """A may run 3 at once and queued 40 runs first: its runs beyond the 3 are never read,
    so one claim serves B and C too; the next claims serve only B and C."""
    queue = Queue(store)
    await queue.add("A", 40)
    b = await queue.add("B", 5)
    c = await queue.add("C", 1)
    limits = TenantLimits(limits={"A": 3})
    first = await claim(store, 10, limits)
    assert per_tenant(first) == {"A": 3, "B": 5, "C": 1}
    assert {x.run.id for x in first} >= {*b, *c}
    await queue.add("B", 2)
    second = await claim(store, 10, limits)
    assert per_tenant(second) == {"B": 2}


# -- the configuration object ------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "3"])
def test_a_limit_must_be_a_whole_number_of_at_least_one(bad: object) -> None:
    with pytest.raises(InvalidInput, match="at least 1"):
        TenantLimits(limits={"acme": bad})  # type: ignore[dict-item]
    with pytest.raises(InvalidInput, match="at least 1"):
        TenantLimits(default=bad)  # type: ignore[arg-type]
