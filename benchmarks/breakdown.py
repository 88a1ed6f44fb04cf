"""Where the time of one ``ctx.step`` goes: a diagnostic, not part of the table.

    .venv/bin/python benchmarks/breakdown.py [--backends sqlite,postgresql] [-n 1000]

Each layer adds one thing to the one before, all on one fresh database:

1. floor: INSERT + COMMIT of a journal-like row (``_floor.py``)
2. fenced insert: kernos' own append statement (INSERT ... WHERE EXISTS (fence)), run on the
   committer's connection from the calling thread: the database cost of kernos' statement
3. group committer: ``GroupCommitter.submit(...).result()`` from a plain thread: adds the hop to
   the committer thread and back
4. store.append: ``await store.append(...)`` from asyncio: adds the payload size check and
   the wake-up of the event loop from the committer thread
5. ctx.step: a full step of an async trivial function in a worker (benchmark (a))
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import steps
from _common import BACKENDS, Database, database, pg_available
from _floor import measure_floor

from kernos.kernel import connect
from kernos.store import Event


def _events(start: int, n: int) -> list[Event]:
    now = time.time()
    return [
        Event(
            seq=start + i,
            type="step_completed",
            step=start + i,
            name="s",
            attempt=1,
            payload={"result": i},
            created_at=now,
            duration=1e-5,
        )
        for i in range(n)
    ]


async def _layers(db: Database, n: int) -> dict[str, float]:
    client = await connect(db.url, registry=steps.REGISTRY)
    store = client.store
    try:
        await store.register_agents(steps.REGISTRY.keys())
        run = await client.start("bench_steps", 1)
        (claim,) = await store.claim(
            worker_id="bench", agents=steps.REGISTRY.keys(), limit=1, lease_ttl=600, agent_limits={}
        )
        sql = store  # SqlStore
        d = sql.dialect  # type: ignore[attr-defined]
        out: dict[str, float] = {}
        evs = _events(1000, n)

        def direct() -> float:
            start = time.perf_counter()
            for ev in evs:
                with d.committer_tx() as tx:
                    assert sql._insert_fenced(tx, run.id, claim.token, [ev])  # type: ignore[attr-defined]
            return (time.perf_counter() - start) / n * 1000

        out["2 fenced insert (same thread)"] = await asyncio.to_thread(direct)
        evs = _events(1000 + n, n)

        def via_committer() -> float:
            committer = sql._committer  # type: ignore[attr-defined]
            start = time.perf_counter()
            for ev in evs:
                assert committer.submit(run.id, claim.token, [ev]).result()
            return (time.perf_counter() - start) / n * 1000

        out["3 group committer (thread hop)"] = await asyncio.to_thread(via_committer)
        evs = _events(1000 + 2 * n, n)
        start = time.perf_counter()
        for ev in evs:
            await store.append(run.id, claim.token, [ev])
        out["4 await store.append (asyncio)"] = (time.perf_counter() - start) / n * 1000
        return out
    finally:
        await client.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("-n", type=int, default=1000)
    args = ap.parse_args()
    for backend in args.backends.split(","):
        if backend == "postgresql" and not pg_available():
            continue
        with database(backend, "x") as db:
            floor = measure_floor(backend, path=db.path, conninfo=db.conninfo, n=args.n)
            layers = asyncio.run(_layers(db, args.n))
            full = asyncio.run(steps._one_run(db, "bench_steps", args.n))
        rows = {
            "1 floor (INSERT+COMMIT)": floor.latency_ms,
            **layers,
            "5 ctx.step (async fn, worker)": full.per_step_ms,
        }
        print(f"{backend}: ms per step, and ratio to the floor")
        for name, ms in rows.items():
            print(f"  {name:<34} {ms:7.3f} ms  {ms / floor.latency_ms:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
