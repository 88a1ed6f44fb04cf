"""(c) worker memory (RSS) with many waiting runs against an idle worker.

A worker subprocess (``python -m kernos worker``) is started and warmed up with a few runs that
complete (so lazy imports and first-use caches are paid); its VmRSS is then the baseline. Then
``runs`` runs are started, half on ``ctx.sleep(3600)`` and half on ``ctx.wait_for_message``;
the worker claims each, replays it up to the wait and parks it in the store. Once all are
``waiting`` and the worker is idle again, VmRSS is read again (after a short settle). VmHWM,
the peak while it processed them, is printed for information: Python's allocator does not
always give freed arenas back to the OS, so the peak is not what a parked run holds.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import _apps  # noqa: F401  (registers the agents the client starts)
from _common import STATE_DIR, Row, database
from _proc import rss_kib, start_worker, stop

from kernos.kernel import REGISTRY, connect
from kernos.store import RunState


async def _count(client: object, state: RunState) -> int:
    counts = await client.store.count_runs()  # type: ignore[attr-defined]
    return int(counts.get(state, 0))


async def _measure(url: str, runs: int, log: Path) -> tuple[int, int, int, int, float]:
    client = await connect(url, registry=REGISTRY)
    proc = start_worker(url, poll_interval=0.1, concurrency=100, log=log)
    try:
        warm = [await client.start("bench_noop", i) for i in range(50)]
        for run in warm:
            await client.wait(run.id, timeout=120, poll=0.05)
        await asyncio.sleep(2.0)
        base = rss_kib(proc.pid)
        start = time.perf_counter()
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> None:
            async with sem:
                await client.start("bench_sleeper" if i % 2 else "bench_waiter", i)

        await asyncio.gather(*(one(i) for i in range(runs)))
        while await _count(client, RunState.WAITING) < runs:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited with {proc.returncode}; see {log}")
            if time.perf_counter() - start > 600:
                raise TimeoutError("runs did not all park within 600 s")
            await asyncio.sleep(0.25)
        parked_in = time.perf_counter() - start
        await asyncio.sleep(3.0)
        after = rss_kib(proc.pid)
        hwm = rss_kib(proc.pid, "VmHWM")
        running = await _count(client, RunState.RUNNING)
        return base, after, hwm, running, parked_in
    finally:
        stop(proc)
        await client.close()


def bench_c(backend: str, *, runs: int = 10_000, limit_mb: float = 20.0) -> list[Row]:
    log = STATE_DIR / f"bench-worker-c-{backend}.log"
    log.unlink(missing_ok=True)
    with database(backend, "c") as db:
        base, after, hwm, running, parked_in = asyncio.run(_measure(db.url, runs, log))
    delta_mb = (after - base) / 1024
    return [
        Row(
            bench="c",
            backend=backend,
            system="kernos",
            what=f"worker RSS growth, {runs:,} waiting runs",
            value=delta_mb,
            unit="MB",
            target=f"<= {limit_mb:.0f} MB",
            ok=delta_mb <= limit_mb,
            better="lower",
            note=(
                f"idle RSS {base / 1024:.1f} MB -> {after / 1024:.1f} MB with {runs:,} parked "
                f"(peak VmHWM {hwm / 1024:.1f} MB while parking them; {running} still running); "
                f"started and parked in {parked_in:.1f}s ({runs / parked_in:,.0f} runs/s)"
            ),
            extra={"base_kib": base, "after_kib": after, "hwm_kib": hwm},
        )
    ]
