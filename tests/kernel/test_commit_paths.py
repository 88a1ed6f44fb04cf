"""How appends reach the disk on SQLite: inline when a run is alone, never blocking the loop.

A lone run commits on the event loop's thread (no hand-off); these tests check what that must
not cost: the loop keeps turning during a long run of quick steps, another process holding the
write lock sends appends to the committer thread instead of blocking the loop, and concurrent
runs are still grouped (fewer commits than steps).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time

import pytest
from _kernel_support import WorkerFactory, until

import kernos
from kernos.kernel import Client, Registry, output_of


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    """Inline commits are SQLite's (PostgreSQL commits only on the committer's thread)."""
    return sqlite_url


async def _noop(i: int) -> int:
    return i


async def _stepping(client: Client, run_id: str) -> bool:
    return any(e.type == "step_completed" for e in await client.journal(run_id))


def _register(registry: Registry, name: str) -> None:
    @kernos.agent(name, registry=registry)
    async def many_steps(ctx: kernos.RunContext, n: int) -> int:
        for i in range(n):
            await ctx.step("s", _noop, i)
        return n


async def test_a_run_of_quick_steps_does_not_starve_the_loop(
    sqlite_url: str, client: Client, registry: Registry, worker: WorkerFactory
) -> None:
    _register(registry, "quick")
    ticks = 0
    gaps: list[float] = []

    async def ticker(stop: asyncio.Event) -> None:
        nonlocal ticks
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0)
            now = time.monotonic()
            gaps.append(now - last)
            last = now
            ticks += 1

    before = client.store.commit_stats()
    async with worker():
        stop = asyncio.Event()
        tick_task = asyncio.create_task(ticker(stop))
        run = await client.start("quick", 4000)
        done = await client.wait(run.id, timeout=60)
        stop.set()
        await tick_task
    assert done.state.value == "completed"
    assert output_of(done) == 4000
    # the run committed inline (no suspension point of its own; a slow fsync on a busy
    # machine turns that off for a while, so not every time)...
    assert client.store.commit_stats().inline - before.inline > 0
    # ...yet the loop turned all along, and no stretch held it for long: without the
    # periodic yield the ticker would wait for the whole run (about a second)
    assert ticks > 100, ticks
    assert max(gaps) < 0.3, max(gaps)


async def test_another_process_holding_the_write_lock_does_not_block_the_loop(
    client: Client, registry: Registry, worker: WorkerFactory, sqlite_url: str
) -> None:
    _register(registry, "blocked")
    db_file = sqlite_url.removeprefix("sqlite:///")
    window: list[float] = []

    def hold_write_lock() -> None:
        # another process's writer, as far as SQLite is concerned: its own connection
        conn = sqlite3.connect(db_file, isolation_level=None, timeout=30)
        conn.execute("BEGIN IMMEDIATE")
        window.append(time.monotonic())
        time.sleep(1.0)
        window.append(time.monotonic())
        conn.execute("COMMIT")
        conn.close()

    ticks: list[float] = []

    async def ticker(stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(0.01)
            ticks.append(time.monotonic())

    async with worker():
        run = await client.start("blocked", 20_000)  # long enough to outlast the lock
        await until(lambda: _stepping(client, run.id))  # alone: inline commits
        stop = asyncio.Event()
        tick_task = asyncio.create_task(ticker(stop))
        holder = threading.Thread(target=hold_write_lock)
        holder.start()
        await until(lambda: len(window) == 2)
        still_running = (await client.get(run.id)).state.value == "running"
        stop.set()
        await tick_task
        holder.join(5)
        done = await client.wait(run.id, timeout=60)
    assert still_running, "the run finished before the lock was taken: make it longer"
    held_from, held_to = window
    during = [t for t in ticks if held_from <= t <= held_to]
    # the loop kept turning (about every 10 ms) while the other writer held the lock
    assert len(during) > 20, f"the event loop was blocked by the other writer ({len(during)})"
    assert done.state.value == "completed"
    assert output_of(done) == 20_000


async def test_a_lone_run_commits_inline_and_concurrent_runs_share_commits(
    client: Client, registry: Registry, worker: WorkerFactory
) -> None:
    _register(registry, "grouped")
    store = client.store
    async with worker():
        before = store.commit_stats()
        run = await client.start("grouped", 200)
        assert (await client.wait(run.id, timeout=60)).state.value == "completed"
        alone = store.commit_stats()
        runs = [await client.start("grouped", 20) for _ in range(50)]
        for run in runs:
            done = await client.wait(run.id, timeout=60)
            assert done.state.value == "completed"
        together = store.commit_stats()
    # alone, steps committed on the loop's thread (all of them unless a slow fsync paused it)
    assert alone.inline > before.inline, (before, alone)
    # 50 runs at once: 1,000 step appends (plus lifecycle) in far fewer commits
    appends = together.appends - alone.appends
    commits = together.commits - alone.commits
    assert appends >= 1000
    assert commits * 3 <= appends, (commits, appends)
