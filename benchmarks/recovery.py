"""(d) time from SIGKILL of a worker to its run progressing again.

Two worker subprocesses (``python -m kernos worker --lease-ttl T``) serve one run of
``bench_ticker`` (a step every ~20 ms). Each round: find the worker that holds the run's lease
(its pid is in the worker id), wait until the run has made progress under it, SIGKILL it, and
at once start a replacement so two workers are up again (like a supervisor restarting it). The
recovery time is (created_at of the first step_completed committed after the kill) - (kill
time): the lease must expire (between 2/3 T and T after the kill, as it is renewed every T/3),
the surviving worker must notice on its next poll (poll interval 0.1 s), claim, reload the
journal and replay it, then run and commit one step.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time

import _apps  # noqa: F401  (registers the agents the client starts)
from _common import STATE_DIR, Row, database, median, percentile
from _proc import start_worker, stop

from kernos.kernel import REGISTRY, Client, connect


def _pid_of(owner: str | None) -> int | None:
    """Worker ids are ``<host>-<pid>-<suffix>``."""
    if not owner:
        return None
    try:
        return int(owner.rsplit("-", 2)[1])
    except (IndexError, ValueError):
        return None


async def _last_step(client: Client, run_id: str, after_seq: int) -> tuple[int, float | None]:
    events = await client.store.load_journal(run_id, after_seq=after_seq)
    seq, last = after_seq, None
    for ev in events:
        seq = ev.seq
        if ev.type == "step_completed":
            last = ev.created_at
    return seq, last


async def _first_step_after(
    client: Client, run_id: str, after_seq: int, t_kill: float
) -> tuple[int, float | None]:
    events = await client.store.load_journal(run_id, after_seq=after_seq)
    for ev in events:
        if ev.type == "step_completed" and ev.created_at > t_kill:
            return ev.seq, ev.created_at
    return (events[-1].seq if events else after_seq), None


async def _measure(url: str, kills: int, ttl: float, log_prefix: str) -> list[float]:
    client = await connect(url, registry=REGISTRY)
    log = STATE_DIR / f"{log_prefix}.log"
    log.unlink(missing_ok=True)
    procs: dict[int, subprocess.Popen[bytes]] = {}
    for _ in range(2):
        p = start_worker(url, lease_ttl=ttl, poll_interval=0.1, log=log)
        procs[p.pid] = p
    recoveries: list[float] = []
    try:
        run = await client.start("bench_ticker", 10_000_000)
        seq = 0
        for _ in range(kills):
            # Wait until the run is owned by one of our live workers and stepping under it.
            deadline = time.monotonic() + 60
            while True:
                r = await client.get(run.id)
                pid = _pid_of(r.lease_owner)
                seq, last = await _last_step(client, run.id, seq)
                if (
                    pid in procs
                    and procs[pid].poll() is None
                    and last is not None
                    and time.time() - last < 0.2
                    and r.state.value == "running"
                ):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"run not progressing (state {r.state}, owner {r.lease_owner}); see {log}"
                    )
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # let it run a little (and commit some steps) under this owner
            victim = procs.pop(pid)
            t_kill = time.time()
            os.kill(pid, signal.SIGKILL)
            victim.wait()
            p = start_worker(url, lease_ttl=ttl, poll_interval=0.1, log=log)
            procs[p.pid] = p
            deadline = time.monotonic() + ttl + 60
            while True:
                seq, first = await _first_step_after(client, run.id, seq, t_kill)
                if first is not None:
                    recoveries.append(first - t_kill)
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"run did not progress again after a kill; see {log}")
                await asyncio.sleep(0.02)
        await client.cancel(run.id)
        return recoveries
    finally:
        for p in procs.values():
            stop(p, signal.SIGKILL)
        await client.close()


def bench_d(backend: str, *, kills: int = 20, ttl: float = 2.0) -> list[Row]:
    with database(backend, "d") as db:
        rec = asyncio.run(_measure(db.url, kills, ttl, f"bench-worker-d-{backend}"))
    p50, p95 = median(rec), percentile(rec, 95)
    limit = ttl + 2.0
    return [
        Row(
            bench="d",
            backend=backend,
            system="kernos",
            what=f"SIGKILL -> progress, p50 of {len(rec)} (lease TTL {ttl:g}s)",
            value=p50,
            unit="s",
            floor=ttl,
            ratio=p50 / ttl,
            target=f"<= {limit:g} s",
            ok=p50 <= limit,
        ),
        Row(
            bench="d",
            backend=backend,
            system="kernos",
            what=f"SIGKILL -> progress, p95 of {len(rec)} (lease TTL {ttl:g}s)",
            value=p95,
            unit="s",
            floor=ttl,
            ratio=p95 / ttl,
            target=f"<= {limit:g} s",
            ok=p95 <= limit,
            note=(
                f"floor column = lease TTL; min {min(rec):.2f}s, max {max(rec):.2f}s; "
                f"all: " + ", ".join(f"{x:.2f}" for x in rec)
            ),
            extra={"recoveries": rec},
        ),
    ]
