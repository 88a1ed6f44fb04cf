"""(p) Scale-out on PostgreSQL (issue #9, section 2): runs/s and steps/s with 1, 2, 4 and 8
worker processes, beside what the database itself did.

    .venv/bin/python benchmarks/scaleout.py [--runs 400] [--steps 10] [--workers 1,2,4,8]

For each worker count, on a fresh schema: the workers are started and warmed up (each claims
a one-step run), then ``--runs`` runs of ``--steps`` trivial steps (``bench_chain`` in
``_apps.py``) are created at once, and the clock runs until the last one completes. Printed
beside each: the database's own figures over the same interval, from its statistics views —
commits/s (``pg_stat_database.xact_commit``), and the share of samples (every 50 ms) in which
some backend waited on a lock (``pg_stat_activity.wait_event_type = 'Lock'``), with the CPU
the workers used. What limits the rate on this machine is what the last columns say: with two
cores, more processes than cores share them with the database server.

Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PG_BASE_URL, Database, Row, database, pg_available, render
from _proc import APP, start_worker, stop, wait_until

from kernos.kernel import connect, load_app

REGISTRY = load_app(APP)  # the agents the workers run, so runs can be started before they register


class _Sampler:
    """Samples the database's lock waits while a measurement runs."""

    def __init__(self) -> None:
        self.samples = 0
        self.waiting = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with psycopg.connect(PG_BASE_URL, autocommit=True) as conn:
            while not self._stop.wait(0.05):
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE wait_event_type = 'Lock' AND datname = current_database()"
                ).fetchone()
                self.samples += 1
                self.waiting += int(bool(row and row[0]))


def _commits() -> int:
    with psycopg.connect(PG_BASE_URL, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    return int(row[0]) if row else 0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime, in clock ticks


async def _start_runs(url: str, agent: str, n: int, steps: int) -> list[str]:
    client = await connect(url, registry=REGISTRY)
    try:
        started = await asyncio.gather(*(client.start(agent, steps) for _ in range(n)))
        return [r.id for r in started]
    finally:
        await client.close()


def _done(db: Database, agent: str) -> int:
    assert db.conninfo is not None
    with psycopg.connect(db.conninfo, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM kernos_runs WHERE agent = %s AND state = 'completed'", (agent,)
        ).fetchone()
    return int(row[0]) if row else 0


def measure(workers: int, runs: int, steps: int) -> Row:
    with database("postgresql", f"p{workers}") as db:
        procs = [start_worker(db.url, concurrency=100, poll_interval=0.05) for _ in range(workers)]
        try:
            asyncio.run(_start_runs(db.url, "bench_noop", workers * 2, 1))  # warm up
            wait_until(lambda: _done(db, "bench_noop") == workers * 2, 60, "the warm-up runs")
            cpu_before = sum(_cpu_seconds(p.pid) for p in procs)
            commits_before = _commits()
            start = time.perf_counter()
            with _Sampler() as sampler:
                asyncio.run(_start_runs(db.url, "bench_chain", runs, steps))
                wait_until(lambda: _done(db, "bench_chain") == runs, 600, f"{runs} runs")
            elapsed = time.perf_counter() - start
            commits = _commits() - commits_before
            cpu = sum(_cpu_seconds(p.pid) for p in procs) - cpu_before
        finally:
            for p in procs:
                stop(p)
    rate = runs / elapsed
    return Row(
        bench="p",
        backend="postgresql",
        system="kernos",
        what=f"{workers} worker process(es): {runs} runs x {steps} steps",
        value=rate,
        unit="runs/s",
        note=(
            f"{workers} worker(s): {rate:.0f} runs/s, {runs * steps / elapsed:,.0f} steps/s; "
            f"database {commits / elapsed:,.0f} commits/s; a lock wait in "
            f"{sampler.waiting}/{sampler.samples} samples; workers' CPU "
            f"{cpu / elapsed:.2f} cores"
        ),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--workers", default="1,2,4,8")
    args = parser.parse_args()
    if not pg_available():
        raise SystemExit(f"no PostgreSQL at {PG_BASE_URL} (set KERNOS_BENCH_PG)")
    rows = [measure(int(w), args.runs, args.steps) for w in args.workers.split(",")]
    print(render(rows, "(p) scale-out on PostgreSQL: runs/s by worker processes"))


if __name__ == "__main__":
    main()
