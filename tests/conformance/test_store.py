"""The store conformance suite: the same tests on a real SQLite file and a real PostgreSQL.

Each test exercises one promise of the ``Store`` protocol; those that guard a guarantee of
DESIGN.md say which.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pytest

from kernos.errors import (
    InvalidInput,
    InvalidState,
    LeaseLost,
    RunNotFound,
    ScheduleNotFound,
    SchemaMismatch,
)
from kernos.store import (
    LATEST_VERSION,
    ChildWait,
    Control,
    Event,
    JsonPath,
    MessageWait,
    NewRun,
    RunState,
    Schedule,
    SqlStore,
    SuspendResult,
    Timer,
    new_run_id,
    open_store,
)

AGENTS = [("a", "1")]


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[SqlStore]:
    s = open_store(db_url, max_payload=64 * 1024)
    await s.migrate()
    try:
        yield s
    finally:
        await s.close()


async def new_run(store: SqlStore, **kw: object) -> str:
    run_id = new_run_id()
    fields: dict[str, object] = {"agent": "a", "agent_version": "1", "input": "null", **kw}
    await store.create_run(NewRun(id=run_id, **fields))  # type: ignore[arg-type]
    return run_id


async def claim_one(
    store: SqlStore, worker: str = "w1", ttl: float = 30.0, *, create: bool = True
) -> tuple[str, int]:
    """Claim one run (creating it first unless ``create`` is False)."""
    if create:
        await new_run(store)
    claims = await store.claim(
        worker_id=worker, agents=AGENTS, limit=1, lease_ttl=ttl, agent_limits={}
    )
    assert len(claims) == 1
    return claims[0].run.id, claims[0].token


def ev(seq: int, type_: str = "step_completed", step: int | None = 1, **payload: object) -> Event:
    return Event(seq=seq, type=type_, step=step, name="s", payload=dict(payload))


# -- schema ------------------------------------------------------------------------------------


async def test_migrate_is_idempotent(store: SqlStore) -> None:
    status = await store.migrate()
    assert status.current == LATEST_VERSION and status.up_to_date and status.pending == []


async def test_concurrent_migrations_apply_once(db_url: str) -> None:
    """Two processes starting at once must not both migrate (issue #4, store)."""
    stores = [open_store(db_url) for _ in range(4)]
    try:
        results = await asyncio.gather(*(s.migrate() for s in stores))
        assert {r.current for r in results} == {LATEST_VERSION}
        status = await stores[0].schema_status()
        assert status.up_to_date
    finally:
        for s in stores:
            await s.close()


async def test_newer_schema_is_refused(store: SqlStore, db_url: str) -> None:
    with store.dialect.write() as tx:
        tx.execute(
            "INSERT INTO kernos_schema (version, description, applied_at) VALUES (?, ?, ?)",
            (LATEST_VERSION + 1, "from the future", time.time()),
        )
    other = open_store(db_url)
    try:
        with pytest.raises(SchemaMismatch, match="newer than"):
            await other.migrate()
    finally:
        await other.close()


# -- runs --------------------------------------------------------------------------------------


async def test_create_get_list(store: SqlStore) -> None:
    first = await new_run(store, input='{"x":1}', priority=3)
    run = await store.get_run(first)
    assert run.state == RunState.QUEUED and run.priority == 3 and json.loads(run.input) == {"x": 1}
    second = await new_run(store)
    listed = await store.list_runs()
    assert [r.id for r in listed][:2] == [second, first]
    assert [r.id for r in await store.list_runs(state=RunState.RUNNING)] == []
    assert (await store.count_runs())[RunState.QUEUED] == 2


async def test_unknown_run_is_a_clear_error(store: SqlStore) -> None:
    with pytest.raises(RunNotFound, match="not found in"):
        await store.get_run("nope")


async def test_oversized_input_writes_nothing(store: SqlStore) -> None:
    """Guarantee 7: a rejected request changes no state."""
    with pytest.raises(InvalidInput, match="over the limit"):
        await store.create_run(
            NewRun(id=new_run_id(), agent="a", agent_version="1", input='"' + "x" * 70_000 + '"')
        )
    assert await store.list_runs() == []


async def test_duplicate_run_id_rejected(store: SqlStore) -> None:
    run_id = await new_run(store)
    with pytest.raises(InvalidInput, match="exists already"):
        await store.create_run(NewRun(id=run_id, agent="a", agent_version="1", input="1"))
    assert (await store.get_run(run_id)).input == "null"


# -- claiming and fencing ----------------------------------------------------------------------


async def test_claim_takes_a_run_once(store: SqlStore) -> None:
    run_id = await new_run(store)
    got, token = await claim_one(store, create=False)
    assert got == run_id and token == 1
    again = await store.claim(worker_id="w2", agents=AGENTS, limit=5, lease_ttl=30, agent_limits={})
    assert again == []
    run = await store.get_run(run_id)
    assert run.state == RunState.RUNNING and run.lease_owner == "w1" and run.claims == 1


async def test_claim_respects_priority_delay_and_version(store: SqlStore) -> None:
    low = await new_run(store, priority=0)
    high = await new_run(store, priority=5)
    await new_run(store, run_at=time.time() + 3600)
    await new_run(store, agent_version="2")
    claims = await store.claim(
        worker_id="w", agents=AGENTS, limit=10, lease_ttl=30, agent_limits={}
    )
    assert [c.run.id for c in claims] == [high, low]


async def test_agent_concurrency_limit(store: SqlStore) -> None:
    for _ in range(5):
        await new_run(store)
    first = await store.claim(
        worker_id="w1", agents=AGENTS, limit=10, lease_ttl=30, agent_limits={"a": 2}
    )
    second = await store.claim(
        worker_id="w2", agents=AGENTS, limit=10, lease_ttl=30, agent_limits={"a": 2}
    )
    assert len(first) == 2 and second == []


async def test_concurrent_claims_never_share_a_run(store: SqlStore) -> None:
    """Guarantee 3: one owner at a time, under concurrent claimers."""
    ids = {await new_run(store) for _ in range(40)}
    results = await asyncio.gather(
        *(
            store.claim(worker_id=f"w{i}", agents=AGENTS, limit=7, lease_ttl=30, agent_limits={})
            for i in range(8)
        )
    )
    claimed = [c.run.id for batch in results for c in batch]
    assert len(claimed) == len(set(claimed))
    assert set(claimed) <= ids


async def test_expired_lease_is_reclaimed_and_stale_owner_fenced(store: SqlStore) -> None:
    """Guarantee 3: a worker that lost its lease appends nothing more."""
    run_id, old = await claim_one(store, "w1", ttl=0.05)
    await store.append(run_id, old, [ev(1)])
    await asyncio.sleep(0.1)
    got, new = await claim_one(store, "w2", create=False)
    assert got == run_id and new == old + 1
    with pytest.raises(LeaseLost):
        await store.append(run_id, old, [ev(2)])
    with pytest.raises(LeaseLost):
        await store.append(run_id, old, [ev(2), ev(3)])
    with pytest.raises(LeaseLost):
        await store.finish(run_id, old, state=RunState.COMPLETED, events=[ev(2, "run_completed")])
    assert [e.seq for e in await store.load_journal(run_id)] == [1]
    await store.append(run_id, new, [ev(2)])
    beat = await store.heartbeat(worker_id="w1", leases={run_id: old}, lease_ttl=30)
    assert beat.lost == {run_id}


async def test_each_event_records_the_lease_token_of_its_writer(store: SqlStore) -> None:
    """The journal says who wrote each event (migration 13): an owner's appends, batched or
    not, and its finish carry its lease token; a person's cancel of a queued run carries none.
    So a reader can check afterwards that no stale owner's write got in (``kernos chaos``
    does)."""
    run_id, old = await claim_one(store, "w1", ttl=0.05)
    await store.append(run_id, old, [ev(1)])
    await store.append(run_id, old, [ev(2, step=2), ev(3, step=3), ev(4, step=4), ev(5, step=5),
                                     ev(6, step=6)])  # fmt: skip
    await asyncio.sleep(0.1)
    _, new = await claim_one(store, "w2", create=False)
    await store.append(run_id, new, [ev(7, step=7)])
    await store.pause(run_id)
    assert await store.append(run_id, new, [ev(8, step=8)]) == Control.PAUSE
    journal = await store.load_journal(run_id)
    assert [e.token for e in journal] == [old] * 6 + [new] * 2
    queued = await new_run(store)
    await store.cancel(queued)  # a person cancels a run no worker ever held
    assert [(e.type, e.token) for e in await store.load_journal(queued)] == [
        ("run_cancelled", None)
    ]
    page = await store.journal_page(run_id, after_seq=0, limit=100)
    assert [e.token for e in page] == [e.token for e in journal]
    await store.finish(run_id, new, state=RunState.COMPLETED, events=[ev(9, "run_completed")])
    assert (await store.load_journal(run_id, after_seq=8))[0].token == new


async def test_own_expired_lease_is_reclaimed_with_a_new_token(store: SqlStore) -> None:
    """A worker whose lease expired (say the database was unreachable) may take the run back,
    but only under a new token: its older execution is fenced like any other stale owner."""
    run_id, old = await claim_one(store, "w1", ttl=0.01)
    await asyncio.sleep(0.05)
    got, new = await claim_one(store, "w1", create=False)
    assert got == run_id and new == old + 1
    with pytest.raises(LeaseLost):
        await store.append(run_id, old, [ev(1)])


async def test_group_commit_of_many_concurrent_appends(store: SqlStore) -> None:
    runs = []
    for _ in range(20):
        await new_run(store)
    claims = await store.claim(
        worker_id="w", agents=AGENTS, limit=20, lease_ttl=30, agent_limits={}
    )
    runs = [(c.run.id, c.token) for c in claims]

    async def many(run_id: str, token: int) -> None:
        for seq in range(1, 26):
            await store.append(run_id, token, [ev(seq, step=seq)])

    before = store.commit_stats()
    await asyncio.gather(*(many(r, t) for r, t in runs))
    for run_id, _ in runs:
        assert [e.seq for e in await store.load_journal(run_id)] == list(range(1, 26))
    after = store.commit_stats()
    appends, commits = after.appends - before.appends, after.commits - before.commits
    assert appends == 500
    # concurrent runs share transactions: 500 appends in far fewer commits
    assert commits * 4 <= appends, (commits, appends)


async def test_heartbeat_renews_and_reports_control(store: SqlStore) -> None:
    run_id, token = await claim_one(store, ttl=1)
    before = (await store.get_run(run_id)).lease_expires_at
    await store.pause(run_id)
    beat = await store.heartbeat(worker_id="w1", leases={run_id: token}, lease_ttl=60)
    assert beat.lost == frozenset() and beat.control == {run_id: Control.PAUSE}
    after = (await store.get_run(run_id)).lease_expires_at
    assert before is not None and after is not None and after > before


# -- suspending and waking ---------------------------------------------------------------------


async def test_timer_suspends_and_fires_once(store: SqlStore) -> None:
    """Guarantee 4: a waiting run is rows in the store until its timer fires."""
    run_id, token = await claim_one(store)
    result = await store.suspend(
        run_id,
        token,
        waiting_for="timer",
        events=[ev(1, "timer_started")],
        timer=Timer(1, time.time() + 0.05),
        wake_check=None,
    )
    assert result == SuspendResult.SUSPENDED
    run = await store.get_run(run_id)
    assert run.state == RunState.WAITING and run.lease_owner is None
    assert await store.fire_timers() == 0 or (await store.get_run(run_id)).state == RunState.QUEUED
    await asyncio.sleep(0.1)
    fired = await asyncio.gather(store.fire_timers(), store.fire_timers())
    assert sum(fired) <= 1
    assert (await store.get_run(run_id)).state == RunState.QUEUED


async def test_message_before_suspend_prevents_suspend(store: SqlStore) -> None:
    run_id, token = await claim_one(store)
    await store.send_message(run_id, "t", '"hi"')
    result = await store.suspend(
        run_id, token, waiting_for="message:t", events=[], timer=None, wake_check=MessageWait("t")
    )
    assert result == SuspendResult.WAKE_PENDING
    assert (await store.get_run(run_id)).state == RunState.RUNNING
    taken = await store.take_message(
        run_id, token, topic="t", step=1, make_event=lambda m: ev(1, "message_received")
    )
    assert taken is not None and taken.payload == '"hi"'
    again = await store.take_message(
        run_id, token, topic="t", step=2, make_event=lambda m: ev(2, "message_received")
    )
    assert again is None


async def test_message_after_suspend_wakes_the_run(store: SqlStore) -> None:
    run_id, token = await claim_one(store)
    await store.suspend(
        run_id, token, waiting_for="message:t", events=[], timer=None, wake_check=MessageWait("t")
    )
    await store.send_message(run_id, "other", "1")
    assert (await store.get_run(run_id)).state == RunState.WAITING
    await store.send_message(run_id, "t", "2")
    assert (await store.get_run(run_id)).state == RunState.QUEUED


async def test_message_suspend_race_never_strands_a_run(store: SqlStore) -> None:
    """Guarantee 4's other half: a wait never misses a message sent while it suspends."""
    for _ in range(15):
        run_id, token = await claim_one(store)
        suspend = store.suspend(
            run_id,
            token,
            waiting_for="message:t",
            events=[],
            timer=None,
            wake_check=MessageWait("t"),
        )
        send = store.send_message(run_id, "t", "1")
        result, _ = await asyncio.gather(suspend, send)
        state = (await store.get_run(run_id)).state
        assert (result, state) in {
            (SuspendResult.WAKE_PENDING, RunState.RUNNING),
            (SuspendResult.SUSPENDED, RunState.QUEUED),
        }
        if state == RunState.QUEUED:
            run_id, token = await claim_one(store, "w2", create=False)
        await store.finish(run_id, token, state=RunState.COMPLETED, events=[], output="1")


async def test_child_completion_wakes_parent(store: SqlStore) -> None:
    parent, token = await claim_one(store)
    child_id = new_run_id()
    await store.spawn(
        parent,
        token,
        events=[ev(1, "child_spawned")],
        child=NewRun(id=child_id, agent="a", agent_version="1", input="1", parent_id=parent),
    )
    result = await store.suspend(
        parent,
        token,
        waiting_for=f"child:{child_id}",
        events=[],
        timer=None,
        wake_check=ChildWait(child_id),
    )
    assert result == SuspendResult.SUSPENDED
    got, ctoken = await claim_one(store, "w2", create=False)
    assert got == child_id
    await store.finish(
        child_id, ctoken, state=RunState.COMPLETED, events=[ev(1, "run_completed")], output="2"
    )
    assert (await store.get_run(parent)).state == RunState.QUEUED


async def test_send_to_finished_run_is_refused(store: SqlStore) -> None:
    run_id, token = await claim_one(store)
    await store.finish(
        run_id, token, state=RunState.COMPLETED, events=[ev(1, "run_completed")], output="1"
    )
    with pytest.raises(InvalidState, match="completed"):
        await store.send_message(run_id, "t", "1")


# -- control -----------------------------------------------------------------------------------


async def test_pause_resume_cancel_transitions(store: SqlStore) -> None:
    queued = await new_run(store)
    assert (await store.pause(queued, reason="look")).state == RunState.PAUSED
    with pytest.raises(InvalidState):
        await store.pause(queued)
    assert (await store.resume(queued)).state == RunState.QUEUED
    assert (await store.cancel(queued)).state == RunState.CANCELLED
    with pytest.raises(InvalidState):
        await store.cancel(queued)
    with pytest.raises(InvalidState):
        await store.resume(queued)
    types = [e.type for e in await store.load_journal(queued)]
    assert types == ["run_paused", "run_resumed", "run_cancelled"]

    running, token = await claim_one(store)
    assert (await store.cancel(running)).control == Control.CANCEL
    result = await store.suspend(
        running, token, waiting_for="timer", events=[], timer=None, wake_check=None
    )
    assert result == SuspendResult.CANCEL_PENDING


async def test_pause_of_running_run_lands_at_suspend(store: SqlStore) -> None:
    run_id, token = await claim_one(store)
    await store.pause(run_id)
    result = await store.suspend(
        run_id, token, waiting_for="timer", events=[], timer=None, wake_check=None
    )
    assert result == SuspendResult.PAUSED
    run = await store.get_run(run_id)
    assert run.state == RunState.PAUSED and run.control is None


# -- schedules ---------------------------------------------------------------------------------


async def test_schedule_fires_once_per_tick_across_workers(store: SqlStore) -> None:
    now = time.time()
    await store.add_schedule(Schedule("nightly", "a", "* * * * *", "null", 0, now - 1, now))
    with pytest.raises(InvalidInput):
        await store.add_schedule(Schedule("nightly", "a", "* * * * *", "null", 0, now, now))
    results = await asyncio.gather(
        *(
            store.fire_schedules(versions={"a": "1"}, next_fire=lambda cron, t: t + 60)
            for _ in range(4)
        )
    )
    assert sum(len(r) for r in results) == 1
    assert len(await store.list_runs()) == 1
    assert (await store.list_schedules())[0].next_fire_at > now
    await store.remove_schedule("nightly")
    with pytest.raises(ScheduleNotFound):
        await store.remove_schedule("nightly")


async def test_append_reports_a_pending_control_request(store: SqlStore) -> None:
    """A pause or cancel reaches the owner at its next append, and the events still land."""
    run_id, token = await claim_one(store)
    assert await store.append(run_id, token, [ev(1)]) is None
    await store.pause(run_id)
    assert await store.append(run_id, token, [ev(2)]) == Control.PAUSE
    assert await store.append(run_id, token, [ev(3, step=2), ev(4, step=3)]) == Control.PAUSE
    assert [e.seq for e in await store.load_journal(run_id)] == [1, 2, 3, 4]


async def test_postgres_leases_use_the_servers_clock(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guarantee 3 across hosts: a worker whose clock runs 20 s fast must not take a run whose
    lease (15 s) is still live on the database's clock."""
    store = open_store(pg_url)
    await store.migrate()
    try:
        run_id, _ = await claim_one(store, "healthy", ttl=15)
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + 20)
        stolen = await store.claim(
            worker_id="fast-clock", agents=AGENTS, limit=5, lease_ttl=15, agent_limits={}
        )
        assert stolen == []
        assert (await store.get_run(run_id)).lease_owner == "healthy"
    finally:
        await store.close()


async def test_upgrading_an_older_schema_keeps_its_runs(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database made by an earlier kernos (schema 1) migrates in place, runs intact."""
    from kernos.store import _schema, _sql

    monkeypatch.setattr(_sql, "MIGRATIONS", _schema.MIGRATIONS[:1])
    monkeypatch.setattr(_sql, "LATEST_VERSION", 1)
    old = open_store(db_url)
    try:
        assert (await old.migrate()).current == 1
        with old.dialect.write() as tx:
            tx.execute(
                "INSERT INTO kernos_runs (id, agent, agent_version, state, input, created_at, "
                "updated_at, run_at) VALUES ('r-old', 'a', '1', 'queued', '1', 0, 0, 0)"
            )
    finally:
        await old.close()
    monkeypatch.undo()
    new = open_store(db_url)
    try:
        status = await new.migrate()
        assert status.current == LATEST_VERSION and status.up_to_date
        assert (await new.pause("r-old", reason="upgrade check")).state == RunState.PAUSED
        journal = await new.load_journal("r-old")
        assert journal[-1].payload == {"reason": "upgrade check"}
        assert (await new.get_run("r-old")).tenant == "default"  # schema 3 filled it in
    finally:
        await new.close()


# -- tenants and the journal's totals ------------------------------------------------------------


async def test_tenant_is_stored_listed_and_inherited_by_children(store: SqlStore) -> None:
    acme = await new_run(store, tenant="acme")
    await new_run(store)
    assert (await store.get_run(acme)).tenant == "acme"
    assert [r.id for r in await store.list_runs(tenant="acme")] == [acme]
    claims = await store.claim(worker_id="w", agents=AGENTS, limit=5, lease_ttl=30, agent_limits={})
    parent = next(c for c in claims if c.run.id == acme)
    child = await store.spawn(
        acme,
        parent.token,
        events=[ev(1, "child_spawned")],
        child=NewRun(
            id=new_run_id(),
            agent="a",
            agent_version="1",
            input="null",
            parent_id=acme,
            tenant=parent.run.tenant,
        ),
    )
    assert child.tenant == "acme"


async def test_sum_events_totals_payload_numbers_by_run_agent_tenant_and_field(
    store: SqlStore,
) -> None:
    """The projection the cost ledger reads: sums over JSON payloads, on both backends."""
    rows = []
    for agent, tenant, cost in (("a", "acme", 0.5), ("a", "zeta", 0.25), ("a", "acme", 1.0)):
        run_id = await new_run(store, agent=agent, tenant=tenant)
        claims = await store.claim(
            worker_id="w", agents=AGENTS, limit=1, lease_ttl=30, agent_limits={}
        )
        token = claims[0].token
        await store.append(
            run_id,
            token,
            [
                Event(seq=1, type="llm_attempt", step=1, payload={"cost": 0.01, "model": "m1"}),
                Event(
                    seq=2,
                    type="llm_completed",
                    step=1,
                    payload={"response": {"cost": cost, "model": "m2", "usage": {"n": 3}}},
                ),
                Event(seq=3, type="step_completed", step=2, payload={"cost": 99}),
            ],
        )
        rows.append(run_id)
    sums: dict[str, list[JsonPath]] = {
        "cost": [("response", "cost"), ("cost",)],
        "n": [("response", "usage", "n")],
    }
    types = ["llm_attempt", "llm_completed"]
    by_tenant = await store.sum_events(types=types, sums=sums, group_by="tenant")
    assert [(t.key, t.events) for t in by_tenant] == [("acme", 4), ("zeta", 2)]  # dearest first
    assert by_tenant[0].sums["cost"] == pytest.approx(1.52)
    assert by_tenant[0].sums["n"] == 6
    by_run = await store.sum_events(types=types, sums=sums, group_by="run")
    assert {t.key: round(t.sums["cost"], 2) for t in by_run} == dict(
        zip(rows, [0.51, 0.26, 1.01], strict=True)
    )
    by_model = await store.sum_events(
        types=types, sums=sums, group_by=[[("response", "model"), ("model",)]]
    )
    assert {t.key: t.events for t in by_model} == {"m1": 3, "m2": 3}
    later = await store.sum_events(types=types, sums=sums, group_by="agent", since=time.time() + 60)
    assert later == []
    with pytest.raises(InvalidInput):
        await store.sum_events(types=types, sums=sums, group_by="planet")
