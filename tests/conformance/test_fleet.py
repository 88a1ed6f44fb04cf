"""The fleet on both backends: workers' rows (alive, dead, stopped, pruned), agent versions with
their live runs and the workers that serve them, and retired versions (issue #8, section 4);
the gateway state workers share through their rows: rate-limit shares, pauses and open
breakers (issue #9, section 2).

Guarantee 8 stays intact: a run keeps the version it started on; retiring a version refuses new
runs of it and nothing else, and nothing here ever moves a run to another version.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import pytest
from conformance.test_store import ev, new_run

from kernos.errors import AgentNotFound, InvalidInput
from kernos.store import (
    BreakerHold,
    GatewayReport,
    NewRun,
    RunState,
    Schedule,
    SqlStore,
    SuspendResult,
    VersionRetired,
    WorkerRegistration,
    WorkerState,
    new_run_id,
    open_store,
)
from kernos.testing import wait_until


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[SqlStore]:
    s = open_store(db_url)
    await s.migrate()
    try:
        yield s
    finally:
        await s.close()


def registration(worker_id: str = "w1", *versions: str, ttl: float = 30.0) -> WorkerRegistration:
    return WorkerRegistration(
        id=worker_id,
        host="host-a",
        pid=4242,
        versions=versions or ("a@1",),
        concurrency=8,
        lease_ttl=ttl,
        info={"breakers": {"sim:m": "closed"}},
    )


async def claim(store: SqlStore, worker: str, agents: list[tuple[str, str]]) -> tuple[str, int]:
    claims = await store.claim(
        worker_id=worker, agents=agents, limit=1, lease_ttl=30, agent_limits={}
    )
    assert len(claims) == 1
    return claims[0].run.id, claims[0].token


async def age_worker(store: SqlStore, worker_id: str, seconds: float) -> None:
    """Move a worker's heartbeat (and stop time, if any) ``seconds`` into the past."""
    with store.dialect.write() as tx:
        tx.execute(
            "UPDATE kernos_workers SET heartbeat_at = heartbeat_at - ?, "
            "stopped_at = stopped_at - ? WHERE id = ?",
            (seconds, seconds, worker_id),
        )


# -- workers ---------------------------------------------------------------------------------


async def test_a_registered_worker_is_alive_with_what_it_said(store: SqlStore) -> None:
    await store.register_worker(registration("w1", "a@1", "a@2"))
    [w] = await store.list_workers()
    assert (w.id, w.host, w.pid, w.versions) == ("w1", "host-a", 4242, ("a@1", "a@2"))
    assert (w.concurrency, w.active, w.lease_ttl, w.stopped_at) == (8, 0, 30.0, None)
    assert w.state is WorkerState.ALIVE and 0 <= w.heartbeat_age < 5
    assert w.info == {"breakers": {"sim:m": "closed"}}


async def test_a_heartbeat_renews_leases_and_refreshes_the_row_together(store: SqlStore) -> None:
    await store.register_worker(registration("w1"))
    await new_run(store)
    run_id, token = await claim(store, "w1", [("a", "1")])
    before = (await store.get_run(run_id)).lease_expires_at
    assert before is not None
    beat = await store.worker_heartbeat(
        worker_id="w1",
        leases={run_id: token},
        lease_ttl=300,
        active=1,
        info={"breakers": {"sim:m": "open"}},
    )
    assert beat.lost == frozenset() and beat.control == {run_id: None}
    after = (await store.get_run(run_id)).lease_expires_at
    assert after is not None and after > before + 200
    [w] = await store.list_workers()
    assert w.active == 1 and w.info == {"breakers": {"sim:m": "open"}}
    # a stale token is reported lost, exactly as by heartbeat()
    beat = await store.worker_heartbeat(
        worker_id="w1", leases={run_id: token + 1}, lease_ttl=30, active=1
    )
    assert beat.lost == {run_id}


async def test_an_idle_heartbeat_only_refreshes_the_row(store: SqlStore) -> None:
    await store.register_worker(registration("w1"))
    await age_worker(store, "w1", 1000)
    assert (await store.list_workers())[0].heartbeat_age > 900
    beat = await store.worker_heartbeat(worker_id="w1", leases={}, lease_ttl=30, active=0)
    assert beat.lost == frozenset() and beat.control == {}
    [w] = await store.list_workers()
    assert w.heartbeat_age < 5 and w.info == {}


async def test_a_silent_worker_is_dead_after_a_few_ttls_and_a_stopped_one_is_not(
    store: SqlStore,
) -> None:
    await store.register_worker(registration("quiet", ttl=0.05))
    await store.register_worker(registration("leaving", ttl=0.05))
    await store.stop_worker("leaving")

    async def states() -> dict[str, WorkerState]:
        return {w.id: w.state for w in await store.list_workers()}

    async def quiet_is_dead() -> bool:
        return await states() == {"quiet": WorkerState.DEAD, "leaving": WorkerState.STOPPED}

    await wait_until(quiet_is_dead, timeout=10, what="the silent worker to be shown dead")
    # a stopped worker's late heartbeat does not bring it back
    await store.worker_heartbeat(worker_id="leaving", leases={}, lease_ttl=0.05, active=0)
    assert (await states())["leaving"] is WorkerState.STOPPED
    # restarting under the same id makes it alive again
    await store.register_worker(registration("leaving", ttl=30))
    assert (await states())["leaving"] is WorkerState.ALIVE


async def test_rows_stopped_or_dead_for_a_day_are_pruned_when_a_worker_starts(
    store: SqlStore,
) -> None:
    for worker_id in ("old-dead", "old-stopped", "recent-stopped"):
        await store.register_worker(registration(worker_id))
    await store.stop_worker("old-stopped")
    await store.stop_worker("recent-stopped")
    await age_worker(store, "old-dead", 2 * 86400)
    await age_worker(store, "old-stopped", 2 * 86400)
    await age_worker(store, "recent-stopped", 3600)
    assert len(await store.list_workers()) == 3
    await store.register_worker(registration("new"))
    assert {w.id for w in await store.list_workers()} == {"new", "recent-stopped"}


# -- the gateway's state, shared ----------------------------------------------------------------


async def test_what_one_gateway_publishes_reaches_the_others_as_seconds_left(
    store: SqlStore,
) -> None:
    for worker_id in ("w1", "w2"):
        await store.register_worker(registration(worker_id))
    report = GatewayReport(
        providers=("oa",),
        paused={"oa": 30.0},
        open={"oa:m": BreakerHold(remaining=20.0, cooldown=5.0)},
    )
    mine = await store.publish_gateway("w1", report)
    # its own holds are not told back to it; the other worker has not published yet
    assert (mine.sharing, mine.paused, mine.open) == ({"oa": 1}, {}, {})

    seen = await store.publish_gateway("w2", GatewayReport(providers=("oa", "an")))
    assert seen.sharing == {"oa": 2, "an": 1}
    assert 20 < seen.paused["oa"] <= 30.0
    hold = seen.open["oa:m"]
    assert 10 < hold.remaining <= 20.0 and hold.cooldown == 5.0
    again = await store.fleet_gateway("w2")  # a read alone says the same, a little later
    assert again.sharing == seen.sharing and again.paused["oa"] <= seen.paused["oa"]
    first = await store.fleet_gateway("w1")
    assert (first.sharing, first.paused, first.open) == ({"oa": 2, "an": 1}, {}, {})


async def test_times_are_kept_on_the_databases_clock(store: SqlStore) -> None:
    """A worker's own clock plays no part: what is stored is the database's time plus the
    seconds the worker said, and a reader gets seconds back from the database's time."""
    for worker_id in ("w1", "w2"):
        await store.register_worker(registration(worker_id))
    await store.publish_gateway("w1", GatewayReport(paused={"oa": 100.0}))
    with store.dialect.read() as tx:
        now = store.dialect.now(tx)
        row = tx.fetchone("SELECT gateway FROM kernos_workers WHERE id = ?", ("w1",))
    assert row is not None
    until = json.loads(row[0])["paused"]["oa"]
    assert now < until <= now + 100.0
    # a database clock (wherever it is) that moved 40 s on: 60 s are left, not 100
    with store.dialect.write() as tx:
        tx.execute(
            "UPDATE kernos_workers SET gateway = ? WHERE id = ?",
            (json.dumps({"providers": [], "paused": {"oa": until - 40}, "open": {}}), "w1"),
        )
    left = (await store.fleet_gateway("w2")).paused["oa"]
    assert 50 < left <= 60.0


async def test_the_longest_hold_wins_and_ended_ones_are_left_out(store: SqlStore) -> None:
    for worker_id in ("w1", "w2", "w3"):
        await store.register_worker(registration(worker_id))
    await store.publish_gateway(
        "w1",
        GatewayReport(
            paused={"oa": 10.0, "an": 0.3},
            open={"oa:m": BreakerHold(remaining=40.0, cooldown=10.0)},
        ),
    )
    await store.publish_gateway(
        "w2",
        GatewayReport(
            paused={"oa": 40.0, "gone": 0.0},
            open={
                "oa:m": BreakerHold(remaining=5.0, cooldown=60.0),
                "an:m": BreakerHold(remaining=-1.0, cooldown=5.0),
            },
        ),
    )
    fleet = await store.fleet_gateway("w3")
    assert set(fleet.paused) == {"oa", "an"} and 30 < fleet.paused["oa"] <= 40.0
    assert set(fleet.open) == {"oa:m"}
    assert 30 < fleet.open["oa:m"].remaining <= 40 and fleet.open["oa:m"].cooldown == 10.0

    async def an_resumed() -> bool:
        return "an" not in (await store.fleet_gateway("w3")).paused

    await wait_until(an_resumed, timeout=10, what="the 0.3 s pause to end")


async def test_dead_and_stopped_workers_share_nothing(store: SqlStore) -> None:
    """A pause or an open breaker from a worker that stopped or died is ignored, and it no
    longer takes a share of the limits; a worker always counts itself."""
    for worker_id in ("dead", "stopped", "alive", "late"):
        await store.register_worker(registration(worker_id))
    held = GatewayReport(
        providers=("oa",),
        paused={"oa": 60.0},
        open={"oa:m": BreakerHold(remaining=60.0, cooldown=5.0)},
    )
    for worker_id in ("dead", "stopped", "late"):
        await store.publish_gateway(worker_id, held)
    fleet = await store.publish_gateway("alive", GatewayReport(providers=("oa",)))
    assert fleet.sharing == {"oa": 4} and set(fleet.paused) == {"oa"}

    await store.stop_worker("stopped")
    await age_worker(store, "dead", 1000)  # silent for far more than 3 lease TTLs of 30 s
    await age_worker(store, "late", 1000)
    await store.publish_gateway("stopped", held)  # a stopped row is not written again
    fleet = await store.fleet_gateway("alive")
    assert (fleet.sharing, fleet.paused, fleet.open) == ({"oa": 1}, {}, {})
    # a worker whose own heartbeat is late still counts itself, never the dead
    assert (await store.fleet_gateway("late")).sharing == {"oa": 2}


async def test_a_worker_that_restarts_under_its_id_has_published_nothing(
    store: SqlStore,
) -> None:
    await store.register_worker(registration("w1"))
    await store.register_worker(registration("w2"))
    await store.publish_gateway("w1", GatewayReport(providers=("oa",), paused={"oa": 60.0}))
    assert (await store.fleet_gateway("w2")).paused
    await store.register_worker(registration("w1"))
    fleet = await store.fleet_gateway("w2")
    assert (fleet.sharing, fleet.paused) == ({}, {})


# -- versions --------------------------------------------------------------------------------


async def test_versions_show_live_runs_by_state_and_the_live_workers_serving_them(
    store: SqlStore,
) -> None:
    await store.register_agents([("a", "1"), ("a", "2"), ("b", "1")])
    await store.register_worker(registration("w-old", "a@1", "b@1"))
    await store.register_worker(registration("w-new", "a@2", "b@1"))
    await store.register_worker(registration("w-dead", "a@1", ttl=0.01))
    await age_worker(store, "w-dead", 10)
    for _ in range(3):
        await new_run(store, agent_version="1")
    await new_run(store, agent_version="2", run_at=time.time() + 3600)  # queued, not yet due
    await claim(store, "w-old", [("a", "1")])  # one of a@1's runs is running
    await new_run(store, agent="c", agent_version="9")  # no worker ever registered c
    found = {v.key: v for v in await store.list_versions()}
    assert list(found) == ["a@1", "a@2", "b@1", "c@9"]
    a1, a2, b1, c9 = found.values()
    assert a1.runs == {RunState.QUEUED: 2, RunState.RUNNING: 1} and a1.live == 3
    assert a1.ready == 2 and a1.workers == ("w-old",) and not a1.stranded
    assert a2.runs == {RunState.QUEUED: 1} and a2.ready == 0 and a2.workers == ("w-new",)
    assert a2.default and not a1.default
    assert b1.live == 0 and set(b1.workers) == {"w-old", "w-new"} and b1.default
    assert c9.registered_at is None and c9.workers == () and c9.stranded and c9.ready == 1
    only_a = await store.list_versions("a")
    assert [v.key for v in only_a] == ["a@1", "a@2"]
    fleet = await store.fleet_status()
    assert fleet.ready == 3 and fleet.unserved == 1  # c@9's run: nobody will claim it
    assert fleet.runs == {RunState.QUEUED: 4, RunState.RUNNING: 1}


async def test_waiting_runs_are_counted_by_what_they_wait_for(store: SqlStore) -> None:
    await store.register_agents([("a", "1")])
    reasons = ["timer", "message:orders", "approval:x:3", "approval:y:7", "child:01J"]
    for waiting_for in reasons:
        await new_run(store)
        run_id, token = await claim(store, "w1", [("a", "1")])
        result = await store.suspend(
            run_id,
            token,
            waiting_for=waiting_for,
            events=[ev(1, "step_started")],
            timer=None,
            wake_check=None,
        )
        assert result == SuspendResult.SUSPENDED
    fleet = await store.fleet_status()
    assert fleet.waiting == {"approval": 2, "child": 1, "message": 1, "timer": 1}
    assert fleet.runs == {RunState.WAITING: 5}
    assert fleet.versions[0].runs == {RunState.WAITING: 5} and fleet.ready == 0


# -- retiring --------------------------------------------------------------------------------


async def test_a_retired_version_refuses_new_runs_and_keeps_those_it_has(store: SqlStore) -> None:
    """Guarantee 8 with retirement: runs already on the version go on there."""
    await store.register_agents([("a", "1"), ("a", "2")])
    in_flight = await new_run(store, agent_version="1")
    v = await store.retire_version("a", "1", by="user:ops", reason="v2 is out")
    assert v.retired and v.retired_by == "user:ops" and v.retired_reason == "v2 is out"
    assert v.live == 1 and v.runs == {RunState.QUEUED: 1} and not v.default
    refused_id = new_run_id()
    with pytest.raises(VersionRetired) as refused:
        await store.create_run(NewRun(id=refused_id, agent="a", agent_version="1", input="null"))
    assert refused.value.retired == {"1"} and "kernos agents unretire a 1" in str(refused.value)
    assert "v2 is out" in str(refused.value)
    assert await store.list_runs(agent="a") == [await store.get_run(in_flight)]  # none written
    # the run it had is still claimed (by a worker with version 1) and finishes there
    run_id, _ = await claim(store, "w1", [("a", "1")])
    assert run_id == in_flight
    await new_run(store, agent_version="2")  # other versions are not affected
    audit = [e for e in await store.list_audit() if e.action.startswith("agent.")]
    assert [(e.action, e.actor, e.target) for e in audit] == [("agent.retire", "user:ops", "a@1")]
    assert audit[0].details == {"reason": "v2 is out"}
    assert (await store.verify_audit()).ok


async def test_retiring_twice_changes_nothing_and_unretiring_lets_runs_in(
    store: SqlStore,
) -> None:
    await store.register_agents([("a", "1")])
    first = await store.retire_version("a", "1", by="user:ops")
    again = await store.retire_version("a", "1", by="user:someone-else")
    assert again.retired_at == first.retired_at and again.retired_by == "user:ops"
    back = await store.unretire_version("a", "1", by="user:ops", reason="rollback")
    assert not back.retired and back.retired_by is None and back.default
    await new_run(store, agent_version="1")
    actions = [e.action for e in await store.list_audit() if e.action.startswith("agent.")]
    assert actions == ["agent.retire", "agent.unretire"]


async def test_retiring_what_is_not_registered_says_what_is(store: SqlStore) -> None:
    await store.register_agents([("a", "1"), ("a", "2")])
    with pytest.raises(AgentNotFound, match=r"no version '3' \(registered: 1, 2\)"):
        await store.retire_version("a", "3", by="user:ops")
    with pytest.raises(AgentNotFound, match="no agent named 'zz'"):
        await store.retire_version("zz", "1", by="user:ops")
    with pytest.raises(InvalidInput):
        await store.retire_version("a", "1", by="")
    assert [e for e in await store.list_audit() if e.action.startswith("agent.")] == []


async def test_the_default_version_is_the_newest_one_not_retired(store: SqlStore) -> None:
    await store.register_agents([("a", "1")])
    await store.register_agents([("a", "2")])
    await store.register_agents([("a", "3")])
    await store.retire_version("a", "3", by="user:ops")
    defaults = [v.version for v in await store.list_versions("a") if v.default]
    assert defaults == ["2"]
    await store.retire_version("a", "2", by="user:ops")
    await store.retire_version("a", "1", by="user:ops")
    assert [v for v in await store.list_versions("a") if v.default] == []


async def test_schedules_never_fire_on_a_retired_version(store: SqlStore) -> None:
    await store.register_agents([("a", "1")])
    await store.register_agents([("a", "2")])
    now = time.time()
    await store.add_schedule(Schedule("tick", "a", "* * * * *", "null", 0, now - 1, now))
    await store.retire_version("a", "2", by="user:ops", reason="bad deploy")
    # a worker whose newest version is the retired 2 starts the schedule's run on 1
    [fired] = await store.fire_schedules(versions={"a": "2"}, next_fire=lambda cron, t: t + 60)
    assert fired.agent_version == "1" and fired.schedule == "tick"
    # with every version retired the tick is not used up: it fires once one takes runs again
    await store.retire_version("a", "1", by="user:ops")
    with store.dialect.write() as tx:
        tx.execute("UPDATE kernos_schedules SET next_fire_at = ?", (time.time() - 1,))
    assert await store.fire_schedules(versions={"a": "2"}, next_fire=lambda cron, t: t + 60) == []
    assert (await store.list_schedules())[0].next_fire_at < time.time()
    await store.unretire_version("a", "2", by="user:ops")
    [fired] = await store.fire_schedules(versions={"a": "2"}, next_fire=lambda cron, t: t + 60)
    assert fired.agent_version == "2"
