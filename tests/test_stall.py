"""The database stalls or fills up (issue #4, section 7).

PostgreSQL: a TCP proxy between a worker process and the server stops forwarding for longer than
the lease TTL, then resumes. SQLite: the database file hits ``max_page_count``.

Each test tries to break guarantee 3 (one owner at a time: a worker cut off from the database
must not commit anything for a run another worker took over) or guarantee 7 (a write the
database refused changes nothing), and checks that work continues once the database is back.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from _procs import Workers, pid_of_worker, read_effects

import kernos
from kernos.chaos import TcpProxy
from kernos.errors import StoreFull
from kernos.kernel import Client, Registry, Worker, WorkerConfig, connect
from kernos.store import Event, NewRun, RunState, SqlStore, new_run_id, open_store
from kernos.store._sqlite import SqliteDialect
from kernos.testing import wait_until

log = logging.getLogger(__name__)

LEASE_TTL = 2.0
IO_TIMEOUT = 3.0  # the stalled worker's per-operation deadline (kernos_io_timeout)
STALL = 3 * LEASE_TTL  # longer than the lease TTL and than the io timeout
RUNS = 20
STEPS = 25  # x 0.1 s per step: a run is still in flight when the stall begins
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) WARNING kernos\.worker: (.*)$")


def _with_io_timeout(url: str, seconds: float) -> str:
    return f"{url}{'&' if '?' in url else '?'}kernos_io_timeout={seconds:g}"


def _warnings_after(text: str, since: float) -> list[tuple[float, str]]:
    """(wall time, message) of the worker's WARNING lines logged at or after ``since``."""
    found = []
    for line in text.splitlines():
        m = _LOG_TIME.match(line)
        if m is None:
            continue
        at = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if at >= since - 0.002:  # the log's clock has millisecond resolution
            found.append((at, m.group(2)))
    return found


def _claims(journal: list[Event]) -> list[Event]:
    return [ev for ev in journal if ev.type == "run_claimed"]


def assert_single_owner_history(run_id: str, journal: list[Event]) -> None:
    """Guarantee 3 on a journal: contiguous seqs, one completion, no write of a stale owner.

    Every event after a ``run_claimed`` belongs to that claim until the next one; the store's
    fencing is what makes that true, so a stale owner's write would show up here either as a
    gap or duplicate in the seqs or as a step completed twice.
    """
    seqs = [ev.seq for ev in journal]
    assert seqs == list(range(1, len(journal) + 1)), f"run {run_id}: seqs {seqs}"
    types = Counter(ev.type for ev in journal)
    assert types["run_completed"] == 1, f"run {run_id}: {types}"
    assert journal[-1].type == "run_completed", f"run {run_id} ends with {journal[-1].type}"
    tokens = [ev.payload["token"] for ev in _claims(journal)]
    assert tokens == sorted(set(tokens)), f"run {run_id}: claim tokens {tokens}"
    completed = [ev.step for ev in journal if ev.type == "step_completed"]
    assert completed == list(range(1, STEPS + 1)), f"run {run_id}: steps {completed}"


# -- PostgreSQL: the network to the database stops --------------------------------------------


@pytest.fixture
async def pg_client(pg_url: str) -> AsyncIterator[Client]:
    c = await connect(pg_url, registry=Registry())
    try:
        yield c
    finally:
        await c.close()


@pytest.mark.slow
@pytest.mark.postgres
async def test_postgres_stall_longer_than_the_lease(
    pg_url: str, pg_client: Client, tmp_path: Path
) -> None:
    """Guarantee 3 across a database stall: no run lost, none owned twice, all complete.

    Two worker processes, each reaching PostgreSQL through its own proxy. A's proxy stops
    forwarding for three lease TTLs while A has runs in flight; the server sees nothing and
    closes nothing, like a hung server or a black-holing network. A must notice within its io
    timeout (and not crash), B must take A's runs over once their leases expire, A's held-back
    writes must be fenced out when the proxy forwards them, and A must work again afterwards
    and exit cleanly on SIGTERM. Each step's effect is recorded outside kernos: only a step in
    flight at a takeover may have run twice.
    """
    effects = tmp_path / "effects.jsonl"
    workers = Workers(tmp_path)
    with TcpProxy() as proxy_a, TcpProxy() as proxy_b:
        try:
            # half the runs each at most: otherwise whichever worker wins the first claims can
            # take all 20 and leave A nothing to be stalled in the middle of
            a = workers.start(
                _with_io_timeout(proxy_a.url(pg_url), IO_TIMEOUT),
                app="stall_app.py",
                lease_ttl=LEASE_TTL,
                concurrency=RUNS // 2,
            )
            b = workers.start(
                _with_io_timeout(proxy_b.url(pg_url), IO_TIMEOUT),
                app="stall_app.py",
                lease_ttl=LEASE_TTL,
                concurrency=RUNS // 2,
            )
            await wait_until(
                lambda: "kernos worker" in a.output() and "kernos worker" in b.output(),
                timeout=30,
                what="both workers to start",
            )
            job = {"n": STEPS, "effects": str(effects)}
            runs = [await pg_client.start("stall_steps", job) for _ in range(RUNS)]
            ids = [r.id for r in runs]

            async def a_is_mid_run() -> bool:
                """A owns a run that has completed steps and has more to do."""
                for run in await pg_client.runs(state=RunState.RUNNING, limit=RUNS):
                    if run.lease_owner and pid_of_worker(run.lease_owner) == a.pid:
                        journal = await pg_client.journal(run.id)
                        if any(ev.type == "step_completed" for ev in journal):
                            return True
                return False

            await wait_until(a_is_mid_run, timeout=30, what="worker A to be mid-run")
            stalled_at = time.time()
            proxy_a.stall()
            a_owned = {
                r.id
                for r in await pg_client.runs(state=RunState.RUNNING, limit=RUNS)
                if r.lease_owner and pid_of_worker(r.lease_owner) == a.pid
            }

            # B takes over every run A held once its lease expired: A is cut off, not dead.
            async def taken_over() -> bool:
                for run_id in a_owned:
                    run = await pg_client.get(run_id)
                    if (
                        run.state == RunState.RUNNING
                        and pid_of_worker(str(run.lease_owner)) == a.pid
                    ):
                        return False
                return True

            await wait_until(taken_over, timeout=STALL, what="B to take over A's runs")
            takeover_s = time.time() - stalled_at
            # A notices on its own, within its io timeout, while the stall lasts.
            noticed = await wait_until(
                lambda: _warnings_after(a.output(), stalled_at),
                timeout=STALL,
                what="worker A to report the stalled database",
            )
            notice_s = noticed[0][0] - stalled_at
            assert a.alive, f"worker A died during the stall:\n{a.output()[-3000:]}"
            await wait_until(
                lambda: time.time() - stalled_at >= STALL, timeout=STALL, what="the stall"
            )
            proxy_a.resume()
            resumed_at = time.time()

            async def all_done() -> bool:
                states = [(await pg_client.get(i)).state for i in ids]
                return all(s.terminal for s in states)

            await wait_until(all_done, timeout=60, what=f"all {RUNS} runs to finish")
            all_done_s = time.time() - resumed_at

            # A works again: with B gone, new runs are A's to execute.
            assert b.terminate() == 0, b.output()[-3000:]
            later = [await pg_client.start("stall_steps", {**job, "n": 2}) for _ in range(3)]
            for run in later:
                done = await pg_client.wait(run.id, timeout=30)
                assert done.state == RunState.COMPLETED, done.error
            recovered_s = time.time() - resumed_at
            assert a.terminate() == 0, a.output()[-3000:]
        finally:
            workers.close()
        log_text = workers.logs()

    for run_id in ids:
        run = await pg_client.get(run_id)
        assert run.state == RunState.COMPLETED, f"run {run_id}: {run.state} {run.error}"
        assert_single_owner_history(run_id, await pg_client.journal(run_id))

    # Effects: one per step, except a step in flight at a takeover, which may run once more.
    counts = Counter(e["key"] for e in read_effects(effects) if e["key"].split(":")[0] in ids)
    extra = {key: n - 1 for key, n in counts.items() if n > 1}
    # A claim whose first write never landed leaves no run_claimed event; the token counts it.
    takeovers = {r: (await pg_client.get(r)).lease_token - 1 for r in ids}
    for key, n in extra.items():
        assert n <= takeovers[key.split(":")[0]], f"effect {key} ran {n + 1} times\n{log_text}"
    assert len(counts) == RUNS * STEPS
    moved = {r for r, n in takeovers.items() if n}
    assert a_owned <= moved, f"A's runs {a_owned - moved} were never taken over"
    print(
        f"\nstall {STALL:.0f}s, lease TTL {LEASE_TTL:.0f}s, io timeout {IO_TIMEOUT:.0f}s: "
        f"A noticed after {notice_s:.2f}s ({noticed[0][1][:80]}...); B took A's "
        f"{len(a_owned)} run(s) over after {takeover_s:.2f}s; all {RUNS} runs done "
        f"{all_done_s:+.2f}s after resume; A executed new runs {recovered_s:.2f}s after resume; "
        f"{sum(extra.values())} effect(s) repeated over {sum(takeovers.values())} takeover(s)"
    )


# -- SQLite: the database file is full --------------------------------------------------------


def _sqlite_dialect(client: Client) -> SqliteDialect:
    store = client.store
    assert isinstance(store, SqlStore)
    dialect = store.dialect
    assert isinstance(dialect, SqliteDialect)
    return dialect


def _page_count(dialect: SqliteDialect) -> int:
    with dialect.read() as tx:
        row = tx.fetchone("PRAGMA page_count")
    assert row is not None
    return int(row[0])


def _fill(dialect: SqliteDialect) -> None:
    """No page more than the file has now: the next write that needs a page fails."""
    dialect.set_max_page_count(_page_count(dialect))


def _snapshot(path: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    import sqlite3

    with sqlite3.connect(path) as conn:
        runs = conn.execute("SELECT * FROM kernos_runs ORDER BY id").fetchall()
        journal = conn.execute("SELECT * FROM kernos_journal ORDER BY run_id, seq").fetchall()
    return runs, journal


BIG = "x" * 64_000  # several pages: an event this size always needs new ones


async def test_sqlite_full_rejects_writes_cleanly_and_recovers(sqlite_url: str) -> None:
    """Guarantee 7 with the disk full: a clear ``StoreFull``, nothing half-written, then work.

    A run is created and claimed and has journaled a step; with the file capped at its current
    size, an append, a create_run and a finish each fail with ``StoreFull`` whose message says
    what happened and what to do, and neither the runs nor the journal change. Once the cap is
    lifted the same run appends and completes.
    """
    store = open_store(sqlite_url)
    await store.migrate()
    try:
        dialect = store.dialect
        assert isinstance(dialect, SqliteDialect)
        run = await store.create_run(
            NewRun(id=new_run_id(), agent="a", agent_version="v1", input="null")
        )
        [claim] = await store.claim(
            worker_id="w", agents=[("a", "v1")], limit=1, lease_ttl=60, agent_limits={}
        )
        await store.append(run.id, claim.token, [Event(seq=1, type="run_claimed")])
        path = str(dialect.path)
        before = _snapshot(path)

        _fill(dialect)
        with pytest.raises(StoreFull) as full:
            await store.append(
                run.id,
                claim.token,
                [
                    Event(seq=2, type="step_completed", step=1, payload={"result": BIG}),
                    Event(seq=3, type="step_completed", step=2, payload={"result": BIG}),
                ],
            )
        message = str(full.value)
        assert "full" in message and str(dialect.path) in message, message
        assert "nothing of the failed write was kept" in message, message
        assert "max_page_count" in message or "disk space" in message, message
        assert full.value.retryable
        with pytest.raises(StoreFull):
            await store.create_run(
                NewRun(id=new_run_id(), agent="a", agent_version="v1", input=f'"{BIG}"')
            )
        with pytest.raises(StoreFull):
            await store.finish(
                run.id,
                claim.token,
                state=RunState.COMPLETED,
                events=[Event(seq=2, type="run_completed", payload={"output": BIG})],
                output=f'"{BIG}"',
            )
        assert _snapshot(path) == before, "a refused write changed the database"
        assert (await store.get_run(run.id)).state == RunState.RUNNING

        dialect.set_max_page_count(None)
        await store.append(
            run.id,
            claim.token,
            [Event(seq=2, type="step_completed", step=1, payload={"result": BIG})],
        )
        await store.finish(
            run.id,
            claim.token,
            state=RunState.COMPLETED,
            events=[Event(seq=3, type="run_completed", payload={"output": 1})],
            output="1",
        )
        done = await store.get_run(run.id)
        assert done.state == RunState.COMPLETED
        assert [ev.type for ev in await store.load_journal(run.id)] == [
            "run_claimed",
            "step_completed",
            "run_completed",
        ]
    finally:
        await store.close()


async def test_sqlite_full_mid_run_keeps_steps_and_completes(sqlite_url: str) -> None:
    """Guarantees 1 and 7 with the disk filling under a running worker.

    The file is capped while a run is between steps; the next journal write fails. The steps
    completed before stay in the journal, nothing is recorded as failed because of the full
    disk, and once space is freed the same worker finishes the run without repeating a step.
    """
    registry = Registry()
    gate = asyncio.Event()
    effects: Counter[int] = Counter()

    async def produce(i: int) -> str:
        if i == 3:
            await gate.wait()
        effects[i] += 1
        return BIG[:20_000]

    @kernos.agent("filler", registry=registry)
    async def filler(ctx: kernos.RunContext, n: int) -> int:
        for i in range(n):
            await ctx.step("produce", produce, i)
        return n

    client = await connect(sqlite_url, registry=registry)
    dialect = _sqlite_dialect(client)
    worker = Worker(
        client.store, registry, WorkerConfig(lease_ttl=LEASE_TTL, poll_interval=0.05, grace=5)
    )
    task = asyncio.create_task(worker.run())
    try:
        run = await client.start("filler", 6)

        async def steps_done() -> int:
            journal = await client.journal(run.id)
            return sum(1 for ev in journal if ev.type == "step_completed")

        await wait_until(
            lambda: _steps_at_least(steps_done, 3), timeout=10, what="three steps journaled"
        )
        _fill(dialect)
        kept = await client.journal(run.id)
        gate.set()  # step 4 runs now and its result cannot be written

        async def write_refused() -> bool:
            # the run stays as it was: no new event, not failed (step 4 may run again on each
            # re-claim while the disk stays full: at least once, never recorded)
            return effects[3] >= 1

        await wait_until(write_refused, timeout=10, what="step 4 to run into the full disk")
        journal = await client.journal(run.id)
        assert journal[: len(kept)] == kept, "a completed step was lost"
        assert not any(ev.type == "run_failed" for ev in journal), journal[-1]
        assert (await client.get(run.id)).state != RunState.FAILED

        dialect.set_max_page_count(None)
        done = await client.wait(run.id, timeout=3 * LEASE_TTL + 5)
        assert done.state == RunState.COMPLETED, done.error
        final = await client.journal(run.id)
        assert final[: len(kept)] == kept
        completed = [ev.step or 0 for ev in final if ev.type == "step_completed"]
        assert completed == sorted(set(completed)) and len(completed) == 6
        assert all(effects[i] == 1 for i in (0, 1, 2)), effects
    finally:
        dialect.set_max_page_count(None)
        worker.stop()
        await asyncio.wait_for(task, 30)
        await client.close()


async def _steps_at_least(count: Any, n: int) -> bool:
    return int(await count()) >= n


@pytest.mark.postgres
async def test_postgres_connections_reset_mid_run_do_not_fail_it(pg_url: str) -> None:
    """Guarantees 1 and 2 when every connection to the database is reset between two steps.

    A failover, a restarted PgBouncer or a cloud NAT dropping idle flows. The dialect replaces a
    connection found dead before use (the pool checks its own; the group committer looks for
    the server's goodbye on its idle socket), so the next journal write goes through and the run
    is not recorded as failed because of the database's hiccup.
    """
    registry = Registry()
    gate = asyncio.Event()

    async def work(i: int) -> int:
        if i == 2:
            await gate.wait()
        return i

    @kernos.agent("reset", registry=registry)
    async def reset(ctx: kernos.RunContext, n: int) -> int:
        for i in range(n):
            await ctx.step("work", work, i)
        return n

    with TcpProxy() as proxy:
        client = await connect(proxy.url(pg_url), registry=registry)
        worker = Worker(client.store, registry, WorkerConfig(lease_ttl=LEASE_TTL, grace=5))
        task = asyncio.create_task(worker.run())
        try:
            run = await client.start("reset", 4)

            async def two_steps() -> bool:
                journal = await client.journal(run.id)
                return sum(ev.type == "step_completed" for ev in journal) == 2

            await wait_until(two_steps, timeout=10, what="two steps journaled")
            proxy.sever()
            # the reset lands while the connections idle (between two LLM calls, say): past
            # the committer's bypass window, so its next append checks its connection first
            await asyncio.sleep(0.7)
            gate.set()
            done = await client.wait(run.id, timeout=3 * LEASE_TTL + 5)
            assert done.state == RunState.COMPLETED, done.error
            # the same owner carried on: no lease ran out, no replay on another claim
            assert done.claims == 1, done.claims
        finally:
            worker.stop()
            await asyncio.wait_for(task, 30)
            await client.close()


@pytest.mark.slow
@pytest.mark.postgres
async def test_a_worker_started_while_the_database_is_down_waits_for_it(
    pg_url: str, workers: Workers
) -> None:
    """A worker restarted during a failover joins once the database is back, instead of
    exiting at once (and being restarted in a loop by its supervisor): found by the chaos
    scenario, where a worker restarted during the stall exited with code 3."""
    proxy = TcpProxy()  # bound, not listening yet: connections are refused, as by a down server
    try:
        worker = workers.start(
            proxy.url(pg_url), env={"KERNOS_STARTUP_WAIT": "60"}, log_level="WARNING"
        )
        await wait_until(lambda: "trying again" in worker.output(), what="a retry", timeout=30)
        assert worker.alive
        proxy.start()
        await wait_until(
            lambda: re.search(r"kernos worker \S+ on ", worker.output()) is not None,
            what="the worker's banner once the database is back",
            timeout=60,
        )
        assert worker.alive
    finally:
        proxy.close()
    impatient = workers.start(
        "postgresql://postgres@127.0.0.1:1/test", env={"KERNOS_STARTUP_WAIT": "0"}
    )
    assert impatient.proc.wait(timeout=60) == 3
    assert "unavailable" in impatient.output()
