"""Deploying a new version while runs of the old one wait, with real worker processes
(issue #8, section 4).

Version 1 of the agent ``versioned`` is tests/apps/versioned_v1.py, version 2 is
versioned_v2.py; each ``kernos worker`` process has one of them. A run's output names the version
whose code finished it and the process that did, so every test can say which worker, on which
version, completed which run. Guarantee 8: a run is pinned to the version it started on; it is
never finished by another version's code, not even when no worker of its own version is left.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from _cli_support import ROOT, kernos_async
from _procs import WorkerProcess, Workers, pid_of_worker

from kernos.kernel import Client, Registry, connect, output_of
from kernos.store import RunState, VersionStatus, WorkerState
from kernos.testing import wait_until

pytestmark = pytest.mark.slow

V1, V2 = "versioned_v1.py", "versioned_v2.py"
KERNOS = (sys.executable, "-m", "kernos")


@pytest.fixture
async def client(db_url: str) -> AsyncIterator[Client]:
    """A client without the agents' code (like the API): versions come from the database."""
    c = await connect(db_url, registry=Registry())
    try:
        yield c
    finally:
        await c.close()


async def version(client: Client, key: str) -> VersionStatus | None:
    return next((v for v in await client.store.list_versions() if v.key == key), None)


async def serving(client: Client, worker: WorkerProcess, key: str) -> None:
    """Wait until ``worker`` is alive in the fleet and serves ``key``."""

    async def served() -> bool:
        v = await version(client, key)
        return v is not None and any(pid_of_worker(w) == worker.pid for w in v.workers)

    await wait_until(served, timeout=30, what=f"worker {worker.name} to serve {key}")


async def state_of(client: Client, run_id: str, state: RunState) -> bool:
    return (await client.get(run_id)).state == state


async def finished(client: Client, run_id: str, workers: Workers) -> dict[str, Any]:
    try:
        run = await client.wait(run_id, timeout=60, poll=0.05)
    except TimeoutError:
        raise AssertionError(f"run {run_id} did not finish; workers:\n{workers.logs()}") from None
    assert run.state == RunState.COMPLETED, run.error
    out: dict[str, Any] = output_of(run)
    return out


async def claimed_by(client: Client, run_id: str) -> list[int]:
    """The pid of the worker behind each claim of the run, in order."""
    return [
        pid_of_worker(e.payload["worker"])
        for e in await client.journal(run_id)
        if e.type == "run_claimed"
    ]


async def approve(client: Client, run_id: str) -> None:
    [approval] = await client.store.list_approvals(run_id=run_id)
    await client.decide(approval.id, approve=True, by="user:test")


async def test_a_v1_run_waiting_on_a_timer_finishes_on_v1_while_a_v2_worker_runs(
    db_url: str, workers: Workers, client: Client
) -> None:
    """Guarantee 8 across a deploy: v2 arrives while a v1 run sleeps; the v1 run is woken (by
    whichever worker fires timers) and finished by the v1 worker, while new runs go to v2."""
    w1 = workers.start(db_url, app=V1)
    await serving(client, w1, "versioned@1")
    old = await client.start("versioned", {"sleep": 2})
    assert old.agent_version == "1"
    await wait_until(lambda: state_of(client, old.id, RunState.WAITING), what="the v1 run to sleep")

    w2 = workers.start(db_url, app=V2)
    await serving(client, w2, "versioned@2")
    new = await client.start("versioned", {})
    assert new.agent_version == "2"  # the newest registered version takes new runs

    assert await finished(client, new.id, workers) == {
        "version": "2",
        "started_pid": w2.pid,
        "finished_pid": w2.pid,
    }
    assert await finished(client, old.id, workers) == {
        "version": "1",
        "started_pid": w1.pid,
        "finished_pid": w1.pid,
    }
    assert set(await claimed_by(client, old.id)) == {w1.pid}


async def test_a_run_whose_version_no_worker_serves_waits_visibly_never_on_another_version(
    db_url: str, workers: Workers, client: Client
) -> None:
    """The v1 worker is gone (drained) when the person approves its run: the run is ready but
    the v2 worker never takes it. `kernos status` and `kernos agents` say so; a v1 worker
    started later finishes it on v1."""
    w1 = workers.start(db_url, app=V1)
    await serving(client, w1, "versioned@1")
    run = await client.start("versioned", {"ask": True})
    await wait_until(lambda: state_of(client, run.id, RunState.WAITING), what="the approval")
    assert w1.terminate() == 0
    w2 = workers.start(db_url, app=V2)
    await serving(client, w2, "versioned@2")

    await approve(client, run.id)
    approved_at = time.time()
    assert (await client.get(run.id)).state == RunState.QUEUED

    async def v2_had_time() -> bool:
        """The v2 worker heartbeat a second after the approval: it polled ten times since."""
        return any(
            pid_of_worker(w.id) == w2.pid and w.heartbeat_at > approved_at + 1.0
            for w in await client.store.list_workers()
        )

    await wait_until(v2_had_time, timeout=30, what="the v2 worker to keep polling")
    waiting = await client.get(run.id)
    assert waiting.state == RunState.QUEUED and waiting.claims == 1  # only w1's claim

    status = await kernos_async(db_url, "status", "--json")
    assert status.returncode == 0, status.stderr
    fleet = json.loads(status.stdout)
    assert fleet["queue"] == {"ready": 1, "unserved": 1}
    assert fleet["stranded"] == ["versioned@1"]
    states = {w["pid"]: w["state"] for w in fleet["workers"]}
    assert states == {w1.pid: "stopped", w2.pid: "alive"}
    table = await kernos_async(db_url, "status")
    assert "1 of them claimable by no live worker" in table.stdout, table.stdout
    assert "versioned@1: 1 live run(s), no live worker serves it" in table.stdout

    agents = await kernos_async(db_url, "agents", "--json")
    by_key = {f"{v['agent']}@{v['version']}": v for v in json.loads(agents.stdout)}
    assert by_key["versioned@1"]["stranded"] and by_key["versioned@1"]["workers"] == []
    assert by_key["versioned@1"]["runs"]["queued"] == 1
    assert by_key["versioned@2"]["default"] and not by_key["versioned@2"]["stranded"]
    listed = await kernos_async(db_url, "agents")
    assert "versioned@1: 1 live run(s) but no live worker serves this version" in listed.stdout

    w3 = workers.start(db_url, app=V1)
    assert await finished(client, run.id, workers) == {
        "version": "1",
        "started_pid": w1.pid,
        "finished_pid": w3.pid,
    }
    assert await claimed_by(client, run.id) == [w1.pid, w3.pid]


async def test_retire_refuses_new_runs_lets_live_ones_finish_and_reports_the_drain(
    db_url: str, workers: Workers, client: Client
) -> None:
    w1 = workers.start(db_url, app=V1)
    w2 = workers.start(db_url, app=V2)
    await serving(client, w1, "versioned@1")
    await serving(client, w2, "versioned@2")
    live = await client.start("versioned", {"ask": True}, version="1")
    await wait_until(lambda: state_of(client, live.id, RunState.WAITING), what="the approval")

    retired = await kernos_async(
        db_url, "agents", "retire", "versioned", "1", "--reason", "v2 is out", "--by", "ops"
    )
    assert retired.returncode == 0, retired.stderr
    assert "versioned@1 retired at" in retired.stdout and "by ops" in retired.stdout
    assert "1 live run(s) remain (1 waiting)" in retired.stdout

    refused = await kernos_async(db_url, "run", "versioned", "--version", "1")
    assert refused.returncode == 2 and "was retired" in refused.stderr
    started = await kernos_async(db_url, "run", "versioned", "--input", "{}")
    assert started.returncode == 0, started.stderr
    assert (await client.get(started.stdout.strip())).agent_version == "2"

    waiter = await asyncio.create_subprocess_exec(
        *KERNOS, "agents", "retire", "versioned", "1", "--wait", "--poll", "0.1",
        "--database", db_url,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert waiter.stderr is not None
    progress = await asyncio.wait_for(waiter.stderr.readline(), 60)
    assert b"1 live run(s) remain (1 waiting)" in progress  # it is waiting for the drain
    await approve(client, live.id)
    assert (await finished(client, live.id, workers))["version"] == "1"
    stdout, _ = await asyncio.wait_for(waiter.communicate(), 60)
    assert waiter.returncode == 0
    assert stdout.decode().strip().endswith("versioned@1 drained: no live runs")

    agents = json.loads((await kernos_async(db_url, "agents", "--json")).stdout)
    v1 = next(v for v in agents if v["version"] == "1")
    assert v1["retired"] and v1["drained"] and v1["retired_reason"] == "v2 is out"
    retirements = [e for e in await client.store.list_audit() if e.action == "agent.retire"]
    assert [(e.actor, e.target) for e in retirements] == [("ops", "versioned@1")]

    back = await kernos_async(db_url, "agents", "unretire", "versioned", "1")
    assert back.returncode == 0 and "versioned@1 takes new runs again" in back.stdout
    assert (await client.start("versioned", {}, version="1")).agent_version == "1"


async def test_a_sigkilled_worker_is_shown_dead_once_its_heartbeat_ages(
    db_url: str, workers: Workers, client: Client
) -> None:
    """A worker killed with SIGKILL never says goodbye: it is dead after three lease TTLs of
    silence; one stopped by SIGTERM is shown stopped, not dead."""
    killed = workers.start(db_url, app=V1, lease_ttl=1.0, concurrency=7)
    kept = workers.start(db_url, app=V2, lease_ttl=1.0)
    await serving(client, killed, "versioned@1")
    await serving(client, kept, "versioned@2")
    killed.kill()

    async def dead() -> bool:
        return any(
            pid_of_worker(w.id) == killed.pid and w.state is WorkerState.DEAD
            for w in await client.store.list_workers()
        )

    await wait_until(dead, timeout=30, what="the killed worker to be shown dead")
    fleet = json.loads((await kernos_async(db_url, "status", "--json")).stdout)
    rows = {w["pid"]: w for w in fleet["workers"]}
    assert rows[killed.pid]["state"] == "dead" and rows[killed.pid]["heartbeat_age"] > 3.0
    assert rows[killed.pid]["versions"] == ["versioned@1"]
    assert rows[killed.pid]["concurrency"] == 7
    assert rows[kept.pid]["state"] == "alive" and rows[kept.pid]["heartbeat_age"] < 3.0
    assert fleet["stranded"] == []  # no live runs: nothing waits for the dead worker's version
    table = (await kernos_async(db_url, "status")).stdout
    assert "1 alive · 1 dead · 0 stopped" in table, table

    assert kept.terminate() == 0
    fleet = json.loads((await kernos_async(db_url, "status", "--json")).stdout)
    assert {w["pid"]: w["state"] for w in fleet["workers"]} == {
        killed.pid: "dead",
        kept.pid: "stopped",
    }
    kept_id = next(w["id"] for w in fleet["workers"] if w["pid"] == kept.pid)
    table = (await kernos_async(db_url, "status")).stdout
    assert "0 alive · 1 dead · 1 stopped" in table and kept_id not in table
    assert kept_id in (await kernos_async(db_url, "status", "--all")).stdout
