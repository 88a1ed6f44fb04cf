"""The store's read-only views for the dashboard, on both databases: keyset pages of runs that
filter like the list does, a page of a long journal without reading the rest, per-run sums,
chosen payload fields, and sums per time bucket."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from kernos.errors import InvalidInput
from kernos.store import (
    Event,
    JsonPath,
    NewRun,
    RunQuery,
    RunState,
    SqlStore,
    new_run_id,
    open_store,
)

from ._journals import written_run

COST: dict[str, list[JsonPath]] = {"cost": [("response", "cost"), ("cost",)]}


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[SqlStore]:
    s = open_store(db_url)
    await s.migrate()
    try:
        yield s
    finally:
        await s.close()


async def make_runs(store: SqlStore, n: int, **kw: str) -> list[str]:
    ids = []
    for _ in range(n):
        run_id = new_run_id()
        await store.create_run(
            NewRun(id=run_id, agent=kw.get("agent", "a"), agent_version="1", input="null",
                   tenant=kw.get("tenant", "acme"))
        )  # fmt: skip
        ids.append(run_id)
    return ids


async def test_runs_page_by_page_newest_first_and_back(store: SqlStore) -> None:
    ids = await make_runs(store, 7)
    newest_first = ids[::-1]
    first = await store.list_runs_page(RunQuery(limit=3))
    assert [r.id for r in first] == newest_first[:3]
    second = await store.list_runs_page(RunQuery(before=first[-1].id, limit=3))
    assert [r.id for r in second] == newest_first[3:6]
    back = await store.list_runs_page(RunQuery(after=second[0].id, limit=3))
    assert [r.id for r in back] == newest_first[:3]
    last = await store.list_runs_page(RunQuery(before=second[-1].id, limit=3))
    assert [r.id for r in last] == newest_first[6:]
    with pytest.raises(InvalidInput):
        await store.list_runs_page(RunQuery(before="x", after="y"))


async def test_runs_filter_by_tenant_agent_state_wait_and_age(store: SqlStore) -> None:
    acme = await make_runs(store, 2, agent="refund")
    globex = await make_runs(store, 2, agent="refund", tenant="globex")
    await make_runs(store, 1, agent="other")
    found = await store.list_runs_page(RunQuery(tenant="acme", agent="refund"))
    assert sorted(r.id for r in found) == sorted(acme)
    assert {r.id for r in await store.list_runs_page(RunQuery(tenant="globex"))} == set(globex)
    queued = await store.list_runs_page(RunQuery(state=RunState.QUEUED))
    assert len(queued) == 5
    assert await store.list_runs_page(RunQuery(state=RunState.WAITING)) == []
    assert await store.list_runs_page(RunQuery(waiting="approval")) == []
    assert len(await store.list_runs_page(RunQuery(created_after=time.time() - 60))) == 5
    assert await store.list_runs_page(RunQuery(created_after=time.time() + 60)) == []
    with pytest.raises(InvalidInput):
        await store.list_runs_page(RunQuery(waiting="lunch"))


async def test_a_page_of_a_long_journal_and_its_extent(store: SqlStore) -> None:
    run_id = await written_run(store, 1200)
    assert await store.journal_extent(run_id) == (1201, 1201)
    page = await store.journal_page(run_id, after_seq=0, limit=200)
    assert [e.seq for e in page] == list(range(1, 201))
    page = await store.journal_page(run_id, after_seq=1150, limit=200)
    assert [e.seq for e in page] == list(range(1151, 1202))
    assert page[-1].type == "run_completed"
    assert await store.journal_extent("nobody") == (0, 0)


async def test_costs_per_run_in_one_query(store: SqlStore) -> None:
    first = await written_run(store, 50)
    second = await written_run(store, 10)
    (idle,) = await make_runs(store, 1)
    sums = await store.sum_run_events(
        [first, second, idle], types=("llm_completed", "llm_attempt"), sums=COST
    )
    # every fifth event, from seq 1, is an answer costing $0.001
    assert sums[first]["cost"] == pytest.approx(0.010)
    assert sums[second]["cost"] == pytest.approx(0.002)
    assert idle not in sums
    assert await store.sum_run_events([], types=("llm_completed",), sums=COST) == {}


async def test_chosen_fields_of_the_newest_events_of_a_tenant(store: SqlStore) -> None:
    mine = await written_run(store, 20)
    await written_run(store, 20, tenant="globex")
    fields: dict[str, list[JsonPath]] = {
        "provider": [("response", "provider"), ("provider",)],
        "class": [("error_class",)],
    }
    found = await store.event_fields(
        types=("llm_attempt", "llm_completed"), fields=fields, tenant="acme", limit=5
    )
    assert len(found) == 5 and {f.run_id for f in found} == {mine}
    assert [f.at for f in found] == sorted((f.at for f in found), reverse=True)
    attempt = next(f for f in found if f.type == "llm_attempt")
    assert attempt.fields == {"provider": "oa", "class": "rate_limited"}
    answer = next(f for f in found if f.type == "llm_completed")
    assert answer.fields == {"provider": "oa", "class": None}
    everyone = await store.event_fields(types=("llm_attempt",), fields=fields, limit=100)
    assert len(everyone) == 8
    later = await store.event_fields(types=("llm_attempt",), fields=fields, since=time.time() + 1)
    assert later == []


async def test_sums_per_time_bucket(store: SqlStore) -> None:
    run_id = new_run_id()
    await store.create_run(NewRun(id=run_id, agent="bot", agent_version="1", input="null"))
    (claim,) = await store.claim(
        worker_id="w", agents=[("bot", "1")], limit=1, lease_ttl=60.0, agent_limits={}
    )
    hour = 3600.0
    base = (time.time() // hour - 5) * hour
    answer = {"response": {"cost": 0.5, "provider": "oa", "model": "m", "usage": {}}}
    events = [
        Event(1, "llm_completed", 1, "c", 1, answer, base + 10),
        Event(2, "llm_completed", 2, "c", 1, answer, base + 20),
        Event(3, "llm_attempt", 3, "c", 1, {"cost": 0.25, "provider": "an", "model": "x"},
              base + 2 * hour + 5),
        Event(4, "step_completed", 4, "s", 1, {"result": 1}, base + 2 * hour + 6),
    ]  # fmt: skip
    await store.append(run_id, claim.token, events)
    model = [[("response", "provider"), ("provider",)], [("response", "model"), ("model",)]]
    rows = await store.sum_events_over_time(
        types=("llm_completed", "llm_attempt"), sums=COST, group_by=model, bucket=hour,
        since=base - 1,
    )  # fmt: skip
    assert [(r.start, r.key, r.events, r.sums["cost"]) for r in rows] == [
        (base, "oa:m", 2, 1.0),
        (base + 2 * hour, "an:x", 1, 0.25),
    ]
    by_agent = await store.sum_events_over_time(
        types=("llm_completed",), sums=COST, group_by="agent", bucket=hour, since=base - 1,
        tenant="default",
    )  # fmt: skip
    assert [(r.key, r.sums["cost"]) for r in by_agent] == [("bot", 1.0)]
    assert await store.sum_events_over_time(
        types=("llm_completed",), sums=COST, group_by="agent", bucket=hour, since=base - 1,
        tenant="acme",
    ) == []  # fmt: skip
    with pytest.raises(InvalidInput):
        await store.sum_events_over_time(
            types=("x",), sums=COST, group_by="run", bucket=hour, since=0.0
        )
