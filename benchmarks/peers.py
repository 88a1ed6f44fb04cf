"""(e) the workloads of (a) and (b) on DBOS Transact and on LangGraph with its checkpointers.

Runs with ``.bench-venv``'s python (``make bench-peers``), never with kernos' venv: kernos is
not imported here. Each (peer, backend) pair runs in its own subprocess (DBOS is a per-process
singleton) and measures its own floor first, with the same code as ``run.py`` (``_floor.py``),
so its ratios compare with kernos' even though the runs happen at different times. Results go
to ``.kernos/bench-peers.json``, which ``run.py`` prints.

What each peer does per step (so the comparison is fair):

* DBOS: a ``@DBOS.workflow()`` calling a trivial ``@DBOS.step()`` ``n`` times. Per step DBOS
  checks the step's recorded output (a read), runs the function, then records its output in
  one transaction (an ownership check and an INSERT into ``operation_outputs``). The SQLite
  system database file is switched to WAL beforehand (DBOS leaves SQLite in its default
  rollback-journal mode; synchronous stays FULL, SQLite's default) so durability matches
  kernos'. (b) starts ``c`` workflows with ``DBOS.start_workflow`` (its executor threads).
* LangGraph: a ``StateGraph`` whose single node increments a counter and loops back to itself
  until it reached ``n`` (``n`` supersteps), compiled with ``AsyncSqliteSaver`` (aiosqlite,
  the connection set to WAL + synchronous=FULL) or ``AsyncPostgresSaver`` (a psycopg pool,
  autocommit, synchronous_commit=on) and invoked with ``durability="sync"``: each superstep's
  checkpoint (``aput``) and its writes (``aput_writes``) are committed before the next
  superstep starts, which is the guarantee kernos gives per step. (LangGraph's default
  ``durability="async"`` writes the checkpoint while the next superstep already runs, and would
  lose a step on a crash.) (b) runs ``c`` ``ainvoke`` calls with distinct thread ids at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from importlib import metadata
from typing import Any, TypedDict

from _common import BACKENDS, PEERS_JSON, Database, Row, b_shape, database, pg_available
from _floor import measure_floor

PEERS = ("dbos", "langgraph")


class State(TypedDict):
    """The LangGraph state: a counter and its target."""

    i: int
    n: int


CONCURRENCY = (1, 10, 100)


# -- DBOS ---------------------------------------------------------------------------------------


def _dbos_bench(db: Database, steps: int, total: int, repeat: int) -> dict[str, Any]:
    import logging

    from dbos import DBOS, DBOSConfig

    logging.getLogger("dbos").setLevel(logging.WARNING)
    if db.backend == "sqlite":
        import sqlite3

        assert db.path is not None
        conn = sqlite3.connect(db.path)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.close()
        url = f"sqlite:///{db.path}"
    else:
        url = f"postgresql://postgres@127.0.0.1:5432/test?options=-csearch_path%3D{db.schema}"
    config: DBOSConfig = {
        "name": "kernos-bench",
        "system_database_url": url,
        "max_executor_threads": 128,
        "sys_db_pool_size": 20,
        "log_level": "WARNING",
        "console_log_level": "WARNING",
    }  # type: ignore[typeddict-item]
    if db.backend == "postgresql":
        config["dbos_system_schema"] = db.schema  # type: ignore[typeddict-unknown-key]

    @DBOS.step()
    def trivial(i: int) -> int:
        return i

    @DBOS.workflow()
    def loop(n: int) -> int:
        times = []
        for i in range(n):
            trivial(i)
            times.append(time.perf_counter())
        return int((times[-1] - times[0]) / (n - 1) * 1e9)

    DBOS(config=config)
    DBOS.launch()
    try:
        per_step = []
        for _ in range(repeat):
            handle = DBOS.start_workflow(loop, steps)
            per_step.append(handle.get_result() / 1e6)
        rates: dict[int, list[float]] = {}
        for c in CONCURRENCY:
            n = b_shape(c, total)
            start = time.perf_counter()
            handles = [DBOS.start_workflow(loop, n) for _ in range(c)]
            for h in handles:
                h.get_result()
            rates[c] = [c * n / (time.perf_counter() - start)]
        return {"per_step_ms": per_step, "rates": rates}
    finally:
        DBOS.destroy()


# -- LangGraph ----------------------------------------------------------------------------------


async def _langgraph_bench(db: Database, steps: int, total: int, repeat: int) -> dict[str, Any]:
    from langgraph.graph import END, START, StateGraph

    def step(state: State) -> dict[str, Any]:
        return {"i": state["i"] + 1}

    def more(state: State) -> str:
        return "step" if state["i"] < state["n"] else END

    async def measure(saver: Any) -> dict[str, Any]:
        def build(node: Any) -> Any:
            g = StateGraph(State)
            g.add_node("step", node)
            g.add_edge(START, "step")
            g.add_conditional_edges("step", more)
            return g.compile(checkpointer=saver)

        graph = build(step)
        per_step = []
        for r in range(repeat):
            cfg = {"configurable": {"thread_id": f"a-{r}"}, "recursion_limit": steps + 10}
            start = time.perf_counter()
            await graph.ainvoke({"i": 0, "n": steps}, cfg, durability="sync")
            wall = time.perf_counter() - start
            per_step.append(wall / steps * 1000)  # wall of the whole invoke / supersteps
        rates: dict[int, list[float]] = {}
        for c in CONCURRENCY:
            n = b_shape(c, total)
            start = time.perf_counter()
            await asyncio.gather(
                *(
                    graph.ainvoke(
                        {"i": 0, "n": n},
                        {
                            "configurable": {"thread_id": f"b-{c}-{k}"},
                            "recursion_limit": n + 10,
                        },
                        durability="sync",
                    )
                    for k in range(c)
                )
            )
            rates[c] = [c * n / (time.perf_counter() - start)]
        return {"per_step_ms": per_step, "rates": rates}

    if db.backend == "sqlite":
        import aiosqlite
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

        assert db.path is not None
        async with aiosqlite.connect(db.path) as conn:
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=FULL")
            saver = AsyncSqliteSaver(conn)
            await saver.setup()
            return await measure(saver)
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    from psycopg.rows import dict_row
    from psycopg_pool import AsyncConnectionPool

    assert db.conninfo is not None
    async with AsyncConnectionPool(
        db.conninfo,
        min_size=4,
        max_size=20,
        open=False,
        kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
    ) as pool:
        saver = AsyncPostgresSaver(pool)  # type: ignore[arg-type]
        await saver.setup()
        return await measure(saver)


# -- one (peer, backend) in a subprocess ----------------------------------------------------------


def _one(peer: str, backend: str, steps: int, total: int, repeat: int) -> list[dict[str, Any]]:
    with database(backend, f"peer_{peer}") as db:
        floors = [
            measure_floor(backend, path=db.path, conninfo=db.conninfo, n=1000)
            for _ in range(repeat)
        ]
        if peer == "dbos":
            res = _dbos_bench(db, steps, total, repeat)
            per_step_what = f"@DBOS.step, sync fn, {steps} steps"
        else:
            res = asyncio.run(_langgraph_bench(db, steps, total, repeat))
            per_step_what = f"superstep+checkpoint, {steps} steps"
    floor_ms = min(f.latency_ms for f in floors)
    floor_rate = max(f.rate for f in floors)
    best = min(res["per_step_ms"])
    rows = [
        Row(
            bench="e/a",
            backend=backend,
            system=peer,
            what=per_step_what,
            value=best,
            unit="ms",
            floor=floor_ms,
            ratio=best / floor_ms,
            better="lower",
            note=(
                f"{peer} per-step runs: "
                + ", ".join(f"{x:.3f}" for x in res["per_step_ms"])
                + " ms; floors: "
                + ", ".join(f"{f.latency_ms:.3f}" for f in floors)
                + " ms"
            ),
        )
    ]
    for c, rates in res["rates"].items():
        c = int(c)
        n = b_shape(c, total)
        best_rate = max(rates)
        rows.append(
            Row(
                bench="e/b",
                backend=backend,
                system=peer,
                what=f"{c} concurrent run(s) x {n} steps",
                value=best_rate,
                unit="steps/s",
                floor=floor_rate,
                ratio=best_rate / floor_rate,
                better="higher",
            )
        )
    return [r.to_json() for r in rows]


def _versions() -> dict[str, str]:
    out = {}
    for name in (
        "dbos",
        "langgraph",
        "langgraph-checkpoint",
        "langgraph-checkpoint-sqlite",
        "langgraph-checkpoint-postgres",
        "psycopg",
        "aiosqlite",
        "sqlalchemy",
    ):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "-"
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help="fewer steps and repeats (steps/s rows run once either way)",
    )
    ap.add_argument("--one", help="internal: PEER:BACKEND, prints JSON rows")
    ap.add_argument("--only", help="peers to run, e.g. dbos,langgraph")
    args = ap.parse_args()
    steps, total, repeat = (300, 2000, 1) if args.quick else (1000, 5000, 2)
    if args.one:
        peer, backend = args.one.split(":")
        print(json.dumps(_one(peer, backend, steps, total, repeat)))
        return 0
    peers = args.only.split(",") if args.only else list(PEERS)
    backends = [b for b in BACKENDS if b != "postgresql" or pg_available()]
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    for peer in peers:
        for backend in backends:
            print(f"peers: {peer} on {backend} ...", file=sys.stderr, flush=True)
            cmd = [sys.executable, os.path.abspath(__file__), "--one", f"{peer}:{backend}"]
            if args.quick:
                cmd.append("--quick")
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            if proc.returncode != 0:
                errors.append(
                    f"{peer} on {backend}: exit {proc.returncode}: " + proc.stderr.strip()[-2000:]
                )
                print(errors[-1], file=sys.stderr)
                continue
            rows.extend(json.loads(proc.stdout.strip().splitlines()[-1]))
    PEERS_JSON.parent.mkdir(parents=True, exist_ok=True)
    PEERS_JSON.write_text(
        json.dumps(
            {
                "generated_at": time.time(),
                "quick": args.quick,
                "python": sys.version.split()[0],
                "versions": _versions(),
                "rows": rows,
                "errors": errors,
            },
            indent=1,
        )
    )
    from _common import render

    print(render([Row.from_json(r) for r in rows], "peers (e)"))
    print(f"\nwritten to {PEERS_JSON}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
