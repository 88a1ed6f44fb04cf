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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from _common import Database, Row, b_shape, database, median
from _floor import Floor, measure_floor

import kernos
from kernos.kernel import Registry, Worker, WorkerConfig, connect

REGISTRY = Registry()
T = TypeVar("T")


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


def floor_for(db: Database, n: int, *, autocommit: bool = False) -> Floor:
    return measure_floor(db.backend, path=db.path, conninfo=db.conninfo, n=n, autocommit=autocommit)


def _strict_row(base: Row, strict: list[Floor], values: list[float]) -> Row:
    """The same measurement against PostgreSQL's one-statement floor (information only)."""
    if base.better == "lower":
        floor = median([f.latency_ms for f in strict])
        ratio = median([v / f.latency_ms for v, f in zip(values, strict, strict=True)])
    else:
        floor = median([f.rate for f in strict])
        ratio = median([v / f.rate for v, f in zip(values, strict, strict=True)])
    return Row(
        bench=base.bench,
        backend=base.backend,
        system="kernos",
        what=base.what + ", vs 1-statement floor",
        value=base.value,
        unit=base.unit,
        floor=floor,
        ratio=ratio,
        target="(info)",
        better=base.better,
        note=(
            f"{base.what}: against one autocommitted INSERT per row (one round trip) instead "
            f"of the driver's BEGIN/INSERT/COMMIT; floors, "
            + ("ms: " if base.better == "lower" else "commits/s: ")
            + ", ".join(
                f"{f.latency_ms:.3f}" if base.better == "lower" else f"{f.rate:,.0f}"
                for f in strict
            )
        ),
    )


def _cpu_ms(per: int, fn: Callable[..., T], *args: Any) -> tuple[T, float]:
    """``fn(*args)`` and the CPU time of this process (all threads) it took, in ms per ``per``."""
    start = time.process_time()
    out = fn(*args)
    return out, (time.process_time() - start) / per * 1000


def _run_sync(coro_fn: Callable[..., Any], *args: Any) -> Any:
    return asyncio.run(coro_fn(*args))


def bench_a(backend: str, *, steps: int = 1000, repeat: int = 5) -> list[Row]:
    """Interleaved pairs (floor, kernos); the ratio is the median of the pairs' ratios."""
    rows: list[Row] = []
    with database(backend, "a") as db:
        for agent, label in (("bench_steps", "async fn"), ("bench_steps_sync", "sync fn")):
            pairs: list[tuple[Floor, float, StepTiming, float]] = []
            strict: list[Floor] = []
            for _ in range(repeat):
                floor, floor_cpu = _cpu_ms(1000, floor_for, db, 1000)
                if backend == "postgresql":
                    strict.append(floor_for(db, 1000, autocommit=True))
                timing, cpu = _cpu_ms(steps, _run_sync, _one_run, db, agent, steps)
                pairs.append((floor, floor_cpu, timing, cpu))
            ratio = median([t.per_step_ms / f.latency_ms for f, _, t, _ in pairs])
            value = median([t.per_step_ms for _, _, t, _ in pairs])
            floor_ms = median([f.latency_ms for f, _, _, _ in pairs])
            primary = agent == "bench_steps"
            rows.append(
                Row(
                    bench="a",
                    backend=backend,
                    system="kernos",
                    what=f"ctx.step, {label}, {steps} steps",
                    value=value,
                    unit="ms",
                    floor=floor_ms,
                    ratio=ratio,
                    target="<= 1.5x" if primary else "(info)",
                    ok=(ratio <= 1.5) if primary else None,
                    better="lower",
                    note=(
                        f"{label}: median of {repeat} (floor, kernos) pairs, ms: "
                        + ", ".join(
                            f"({f.latency_ms:.3f}, {t.per_step_ms:.3f})" for f, _, t, _ in pairs
                        )
                        + f"; CPU of this process: floor {median([c for _, c, _, _ in pairs]):.3f}"
                        f" ms/commit, kernos {median([c for _, _, _, c in pairs]):.3f} ms/step"
                        f" (whole run incl. start, claim, finish, client polling)"
                    ),
                )
            )
            if strict and primary:
                rows.append(_strict_row(rows[-1], strict, [t.per_step_ms for _, _, t, _ in pairs]))
    return rows


def bench_b(backend: str, *, total_steps: int = 5000, repeat: int = 2) -> list[Row]:
    """Each measurement is paired with a floor measured just before it."""
    rows: list[Row] = []
    with database(backend, "b") as db:
        for runs in (1, 10, 100):
            steps = b_shape(runs, total_steps)
            pairs: list[tuple[Floor, float, float]] = []
            strict: list[Floor] = []
            for _ in range(repeat):
                floor = floor_for(db, 1000)
                if backend == "postgresql" and runs == 100:
                    strict.append(floor_for(db, 1000, autocommit=True))
                rate, cpu = _cpu_ms(runs * steps, _run_sync, _concurrent, db, runs, steps)
                pairs.append((floor, rate, cpu))
            ratio = median([r / f.rate for f, r, _ in pairs])
            rows.append(
                Row(
                    bench="b",
                    backend=backend,
                    system="kernos",
                    what=f"{runs} concurrent run(s) x {steps} steps",
                    value=median([r for _, r, _ in pairs]),
                    unit="steps/s",
                    floor=median([f.rate for f, _, _ in pairs]),
                    ratio=ratio,
                    target=">= 3x" if runs == 100 else "(info)",
                    ok=(ratio >= 3) if runs == 100 else None,
                    better="higher",
                    note=(
                        f"{runs} runs: median of {repeat} (floor commits/s, kernos steps/s) pairs: "
                        + ", ".join(f"({f.rate:,.0f}, {r:,.0f})" for f, r, _ in pairs)
                        + f"; kernos CPU {median([c for _, _, c in pairs]):.3f} ms/step"
                    ),
                )
            )
            if strict:
                rows.append(_strict_row(rows[-1], strict, [r for _, r, _ in pairs]))
    return rows
