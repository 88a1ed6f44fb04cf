"""kernos benchmarks (issue #4, section 8; issue #5, section 6): ``make bench`` runs this and
prints one table.

    .venv/bin/python benchmarks/run.py [--quick] [--only a,b,c,d,e,f,g,h,i,j,k,l,m,n,o]
                                       [--backends sqlite,postgresql]

(a) per-step overhead of ``ctx.step`` against the single-commit floor measured in the same run;
(b) steps/s with 1, 10 and 100 concurrent runs in one worker; (c) worker RSS with 10,000
waiting runs; (d) SIGKILL-to-progress time against the lease TTL; (e) the peers (DBOS,
LangGraph) from ``.kernos/bench-peers.json``, written by ``make bench-peers``. The gateway's,
against the provider simulator in its own process (no database, so once, not per backend):
(f) the gateway's added latency over calling the SDK directly; (g) goodput of 1,000 calls
through an outage and a flaky fallback; (h) the same through LiteLLM's Router, run with
``.bench-venv``'s python (``make bench-peers`` installs it). The Agent's (issue #6, section 7),
on the simulator's tool-loop model: (i) the Agent loop's overhead per turn over raw SDK calls;
(j) 1,000 concurrent 10-turn conversations in one worker: turns/s and memory per conversation;
(k) the same workload on the OpenAI Agents SDK and LangGraph, run with ``.bench-venv``'s python.
(n) issue #8: ctx.step and steps/s with tracing (OTLP/HTTP) and metrics on, against both off;
(o) issue #8: a run page of 10,000 journal events in Chromium (``benchmarks/dashboard.py``).

The machine is noisy: every figure is printed with the floor measured in the same process just
before it, and the ratio to that floor is what to compare. These are measurements, never tests:
the exit status is 0 whatever the figures (non-zero only if a benchmark could not run).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BACKENDS, PEERS_JSON, Row, fmt, pg_available, render


def _peer_rows() -> tuple[list[Row], list[str]]:
    """The peers' rows, plus lines saying how they compare with kernos'."""
    if not PEERS_JSON.exists():
        return [], [
            f"(e) peers: no {PEERS_JSON.relative_to(PEERS_JSON.parent.parent)}; run "
            f"`make bench-peers` (creates .bench-venv with DBOS and LangGraph, ~5 min) "
            f"and then `make bench` again"
        ]
    data = json.loads(PEERS_JSON.read_text())
    rows = [Row.from_json(r) for r in data.get("rows", [])]
    age_h = (time.time() - float(data.get("generated_at", 0))) / 3600
    versions = ", ".join(f"{k} {v}" for k, v in data.get("versions", {}).items() if v != "-")
    info = [
        f"(e) peers from {PEERS_JSON.name}, {age_h:.1f} h old"
        + (" (--quick)" if data.get("quick") else "")
        + f": {versions}"
    ]
    info += [f"(e) peer error: {e[:300]}" for e in data.get("errors", [])]
    return rows, info


def _compare(kernos: list[Row], peers: list[Row]) -> list[str]:
    """Is kernos ahead of every peer on every row? Compared by ratio to each run's own floor."""
    lines = []
    for p in peers:
        base = p.bench.split("/")[-1]
        match = [
            k
            for k in kernos
            if k.bench == base
            and k.backend == p.backend
            and (base != "a" or "async" in k.what)
            and (base != "b" or k.what.split(" ")[0] == p.what.split(" ")[0])
        ]
        if not match or p.ratio is None or match[0].ratio is None:
            continue
        k = match[0]
        assert k.ratio is not None
        ahead = k.ratio < p.ratio if p.better == "lower" else k.ratio > p.ratio
        factor = p.ratio / k.ratio if p.better == "lower" else k.ratio / p.ratio
        lines.append(
            f"  {base} {p.backend:<10} vs {p.system:<9} {p.what:<34} kernos {k.ratio:5.2f}x floor,"
            f" {p.system} {p.ratio:5.2f}x floor -> "
            + (f"kernos ahead ({factor:.1f}x)" if ahead else f"kernos BEHIND ({factor:.2f}x)")
            + f"; absolute {fmt(k.value, k.unit)} vs {fmt(p.value, p.unit)}"
        )
    return lines


def _gateway_benches(
    only: set[str], quick: bool, notes: list[str]
) -> tuple[list[Row], list[str], bool]:
    """(f), (g), (h): rows, the kernos-vs-LiteLLM lines, and whether one could not run."""
    import gateway

    rows: list[Row] = []
    kernos: list[gateway.Goodput] = []
    litellm: list[gateway.Goodput] = []
    failed = False
    steps: list[tuple[str, Callable[[], None]]] = [
        ("f", lambda: rows.extend(gateway.bench_f(quick=quick))),
        ("g", lambda: kernos.append(gateway.bench_g(quick=quick))),
        ("h", lambda: litellm.extend(gateway.bench_h(quick=quick))),
    ]
    for key, run in steps:
        if key not in only:
            continue
        start = time.perf_counter()
        print(f"running ({key}) on the simulator ...", file=sys.stderr, flush=True)
        try:
            run()
        except Exception:
            failed = True
            notes.append(f"({key}) failed:\n{traceback.format_exc()}")
            print(notes[-1], file=sys.stderr)
        print(f"  ({key}): {time.perf_counter() - start:.0f}s", file=sys.stderr, flush=True)
    goodput_rows = gateway.goodput_rows(kernos[0] if kernos else None, litellm)
    return rows + goodput_rows, gateway.compare_goodput(goodput_rows), failed


def main() -> int:
    ap = argparse.ArgumentParser(description="kernos benchmarks (issue #4, section 8)")
    ap.add_argument(
        "--quick", action="store_true", help="fewer steps, runs, kills, repeats, LLM calls"
    )
    ap.add_argument(
        "--only", default="a,b,c,d,e,f,g,h,i,j,k,l,m,n,o", help="which measurements, e.g. a,b"
    )
    ap.add_argument("--backends", default=",".join(BACKENDS), help="sqlite,postgresql")
    args = ap.parse_args()
    only = set(args.only.split(","))
    backends = [b for b in args.backends.split(",") if b]
    notes: list[str] = []
    if "postgresql" in backends and not pg_available():
        backends.remove("postgresql")
        notes.append(
            "PostgreSQL: no server at KERNOS_BENCH_PG / postgresql://postgres@"
            "127.0.0.1:5432/test, its rows are skipped"
        )

    import agents
    import api
    import dashboard
    import governance
    import memory
    import recovery
    import steps
    import telemetry

    q = args.quick
    plan: list[tuple[str, Callable[[str], list[Row]]]] = [
        ("a", lambda b: steps.bench_a(b, steps=1000, repeat=1 if q else 5)),
        ("b", lambda b: steps.bench_b(b, total_steps=2000 if q else 5000, repeat=1 if q else 2)),
        ("c", lambda b: memory.bench_c(b, runs=2000 if q else 10_000)),
        ("d", lambda b: recovery.bench_d(b, kills=5 if q else 20, ttl=2.0)),
        ("i", lambda b: agents.bench_i(b, rounds=10 if q else 30, warmup=3 if q else 5)),
        ("j", lambda b: agents.bench_j(b, conversations=200 if q else 1000)),
        ("m", lambda b: api.bench_api(b, quick=q)),
        ("n", lambda b: telemetry.bench_n(b, repeat=1 if q else 3, quick=q)),
        ("o", lambda b: dashboard.measure(b, 10_000, 3 if q else 10)),
    ]
    rows: list[Row] = []
    failed = False
    t0 = time.perf_counter()
    for key, fn in plan:
        if key not in only:
            continue
        for backend in backends:
            start = time.perf_counter()
            print(f"running ({key}) on {backend} ...", file=sys.stderr, flush=True)
            try:
                rows.extend(fn(backend))
            except Exception:
                failed = True
                notes.append(f"({key}) on {backend} failed:\n{traceback.format_exc()}")
                print(notes[-1], file=sys.stderr)
            print(
                f"  ({key}) on {backend}: {time.perf_counter() - start:.0f}s",
                file=sys.stderr,
                flush=True,
            )
    goodput_lines: list[str] = []
    if only & {"f", "g", "h"}:
        rows_fgh, goodput_lines, fgh_failed = _gateway_benches(only, q, notes)
        rows.extend(rows_fgh)
        failed = failed or fgh_failed
    if "l" in only:
        print("running (l) policy checks ...", file=sys.stderr, flush=True)
        try:
            rows.extend(governance.bench_policy(quick=q))
        except Exception:
            failed = True
            notes.append(f"(l) failed:\n{traceback.format_exc()}")
    agent_lines: list[str] = []
    if "k" in only:
        start = time.perf_counter()
        print("running (k) on the simulator ...", file=sys.stderr, flush=True)
        try:
            rows_k, info_k = agents.bench_k(rounds=10 if q else 30, warmup=3 if q else 5)
            rows.extend(rows_k)
            notes.extend(info_k)
        except Exception:
            failed = True
            notes.append(f"(k) failed:\n{traceback.format_exc()}")
            print(notes[-1], file=sys.stderr)
        print(f"  (k): {time.perf_counter() - start:.0f}s", file=sys.stderr, flush=True)
        agent_lines = agents.compare_k(rows)
    peer_rows: list[Row] = []
    if "e" in only:
        peer_rows, info = _peer_rows()
        peer_rows = [r for r in peer_rows if r.backend in backends]
        notes.extend(info)
    print()
    print(
        render(
            rows + peer_rows,
            f"kernos benchmarks{' (--quick)' if q else ''}: value, floor (same run), "
            f"ratio to floor; b/e-b floor = single-commit rate; d floor = lease TTL; "
            f"f floor = the SDK called directly; i/k floor = the same model calls on the bare "
            f"SDK client + the tool awaited; j floor = the same conversations on the bare SDK",
        )
    )
    if goodput_lines:
        print("\n(g) kernos vs (h) LiteLLM's Router: the same calls, faults and seed")
        print("\n".join(goodput_lines))
    if agent_lines:
        print("\n(k) added ms per turn over each one's own floor (lower is better):")
        print("\n".join(agent_lines))
    if peer_rows:
        print(
            "\n(e) kernos vs peers, by ratio to each run's own floor (lower is better for a, "
            "higher for b):"
        )
        print("\n".join(_compare(rows, peer_rows)) or "  (no matching kernos rows in this run)")
    if notes:
        print()
        print("\n".join(notes))
    print(f"\ntotal {time.perf_counter() - t0:.0f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
