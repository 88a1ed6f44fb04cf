"""(a) per-step overhead of ``ctx.step`` and (b) steps/s with 1, 10 and 100 concurrent runs.

Both run an in-process worker against a fresh database, with the floor measured in the same
process just before, on the same database file / server, with the same durability settings.

(a) One run of ``n`` steps, each ``await ctx.step("s", trivial)`` where ``trivial`` is an
``async def`` returning an int (awaited inline). The per-step figure is taken from the journal:
(created_at of the last step_completed - created_at of the first) / (n - 1), i.e. steady state,
without the claim, the first load and the finish. The wall time of the whole run (start to
``wait`` returning) is printed too. A second row uses a *sync* trivial function, which kernos
runs in a thread.

(b) ``c`` runs started together, each of ``steps`` async trivial steps; steps/s = all steps /
(time from the first ``start`` to the last run finished), so it includes creating, claiming
and finishing the runs. Compared with the floor's commits/s.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from _common import Database, Row, b_shape, database
from _floor import Floor, measure_floor

import kernos
from kernos.kernel import Registry, Worker, WorkerConfig, connect

REGISTRY = Registry()


async def trivial_async(i: int) -> int:
    return i


def trivial_sync(i: int) -> int:
    return i


@kernos.agent("bench_steps", registry=REGISTRY)
async def bench_steps(ctx: kernos.RunContext, n: int) -> int:
    for i in range(n):
        await ctx.step("s", trivial_async, i)
    return n


@kernos.agent("bench_steps_sync", registry=REGISTRY)
async def bench_steps_sync(ctx: kernos.RunContext, n: int) -> int:
    for i in range(n):
        await ctx.step("s", trivial_sync, i)
    return n


@dataclass(frozen=True, slots=True)
class StepTiming:
    per_step_ms: float
    wall_s: float
    steps: int


async def _one_run(db: Database, agent: str, n: int) -> StepTiming:
    client = await connect(db.url, registry=REGISTRY)
    worker = Worker(
        client.store, REGISTRY, WorkerConfig(concurrency=200, poll_interval=0.05, lease_ttl=30)
    )
    task = asyncio.create_task(worker.run())
    await worker.started.wait()
    try:
        start = time.perf_counter()
        run = await client.start(agent, n)
        worker.wake()
        done = await client.wait(run.id, timeout=600, poll=0.02)
        wall = time.perf_counter() - start
        assert done.state.value == "completed", done
        times = [e.created_at for e in await client.journal(run.id) if e.type == "step_completed"]
        assert len(times) == n, len(times)
        per_step = (times[-1] - times[0]) / (n - 1) * 1000
        return StepTiming(per_step, wall, n)
    finally:
        worker.stop()
        await task
        await client.close()


async def _concurrent(db: Database, runs: int, steps: int) -> float:
    """steps/s of ``runs`` runs of ``steps`` steps each, started at once in one worker."""
    client = await connect(db.url, registry=REGISTRY)
    worker = Worker(
        client.store,
        REGISTRY,
        WorkerConfig(concurrency=max(200, runs), poll_interval=0.05, lease_ttl=30),
    )
    task = asyncio.create_task(worker.run())
    await worker.started.wait()
    try:
        start = time.perf_counter()
        started = await asyncio.gather(*(client.start("bench_steps", steps) for _ in range(runs)))
        worker.wake()
        for run in started:
            done = await client.wait(run.id, timeout=600, poll=0.02)
            assert done.state.value == "completed", done
        return runs * steps / (time.perf_counter() - start)
    finally:
        worker.stop()
        await task
        await client.close()


def floor_for(db: Database, n: int) -> Floor:
    return measure_floor(db.backend, path=db.path, conninfo=db.conninfo, n=n)


def bench_a(backend: str, *, steps: int = 1000, repeat: int = 3) -> list[Row]:
    rows: list[Row] = []
    with database(backend, "a") as db:
        floors = [floor_for(db, 1000) for _ in range(repeat)]
        floor = min(f.latency_ms for f in floors)
        for agent, label in (("bench_steps", "async fn"), ("bench_steps_sync", "sync fn")):
            timings = [asyncio.run(_one_run(db, agent, steps)) for _ in range(repeat)]
            best = min(timings, key=lambda t: t.per_step_ms)
            ratio = best.per_step_ms / floor
            primary = agent == "bench_steps"
            rows.append(
                Row(
                    bench="a",
                    backend=backend,
                    system="kernos",
                    what=f"ctx.step, {label}, {steps} steps",
                    value=best.per_step_ms,
                    unit="ms",
                    floor=floor,
                    ratio=ratio,
                    target="<= 1.5x" if primary else "(info)",
                    ok=(ratio <= 1.5) if primary else None,
                    better="lower",
                    note=(
                        f"wall {best.wall_s:.2f}s for the run incl. claim+finish "
                        f"({best.wall_s / steps * 1000:.2f} ms/step); "
                        f"floor min of {repeat}: "
                        + ", ".join(f"{f.latency_ms:.3f}" for f in floors)
                        + " ms; kernos: "
                        + ", ".join(f"{t.per_step_ms:.3f}" for t in timings)
                        + " ms"
                    ),
                )
            )
    return rows


def bench_b(backend: str, *, total_steps: int = 10_000, repeat: int = 2) -> list[Row]:
    rows: list[Row] = []
    with database(backend, "b") as db:
        floors = [floor_for(db, 1000) for _ in range(repeat)]
        rate = max(f.rate for f in floors)
        for runs in (1, 10, 100):
            steps = b_shape(runs, total_steps)
            results = [asyncio.run(_concurrent(db, runs, steps)) for _ in range(repeat)]
            best = max(results)
            ratio = best / rate
            rows.append(
                Row(
                    bench="b",
                    backend=backend,
                    system="kernos",
                    what=f"{runs} concurrent run(s) x {steps} steps",
                    value=best,
                    unit="steps/s",
                    floor=rate,
                    ratio=ratio,
                    target=">= 3x" if runs == 100 else "(info)",
                    ok=(ratio >= 3) if runs == 100 else None,
                    better="higher",
                    note=(
                        ""
                        if runs != 100
                        else f"floor = single-commit rate, best of {repeat}; kernos runs: "
                        + ", ".join(f"{r:,.0f}" for r in results)
                        + " steps/s"
                    ),
                )
            )
    return rows
