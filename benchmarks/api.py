"""The HTTP API: requests/s for listing and starting runs, and server-sent event latency
(issue #7, section 6).

    .venv/bin/python benchmarks/api.py [--quick] [--backends sqlite,postgresql]

A real server (``python -m uvicorn --factory kernos.api:create_app``, one process, no access
log) on a loopback port, over a fresh database per backend; the client is this process, httpx
with 32 requests in flight on 32 connections, each request with a valid API key (its lookup is
cached, as in production). The machine's 2 cores are shared by the client, the server and
PostgreSQL, so the server alone would do more.

- **GET /v1/runs?limit=100** with 100 runs in the database: the whole list, 100 runs encoded,
  for ``DURATION`` seconds after a warm-up.
- **POST /v1/runs**: a run started per request (an agent that a worker registered, no
  ``--app``: the server checks it against the database), each one transaction.
- **SSE latency**: a worker subprocess runs ``bench_ticker`` (a step every ~20 ms); a client
  follows ``/v1/runs/{id}/events``. Latency is the time from the event's ``created_at`` (set by
  the worker just before its commit, so the commit is included) to the client parsing it, on
  the same clock; p50 and p95 over every event of the run.

A measurement, never a test: the exit status is 0 whatever the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
from _common import BACKENDS, ROOT, STATE_DIR, Row, database, percentile, pg_available, render
from _proc import start_worker, stop

from kernos.kernel import connect

CONCURRENCY = 32
LISTED = 100
#: an agent no worker here has: runs started in the benchmark stay queued, untouched
IDLE_AGENT = "bench_listed"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server(url: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "ab")  # the server process owns it
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "kernos.api:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        stdout=out,
        stderr=out,
        env={**os.environ, "KERNOS_DATABASE_URL": url},
    )


async def _prepare(url: str) -> str:
    """The database's agents, 100 queued runs, and an admin key; returns the key."""
    client = await connect(url)
    try:
        await client.store.register_agents([(IDLE_AGENT, "1"), ("bench_ticker", "1")])
        for i in range(LISTED):
            await client.start(IDLE_AGENT, i)
        _, secret = await client.store.create_api_key(name="bench", tenant=None, role="admin")
        return secret
    finally:
        await client.close()


async def _wait_ready(http: httpx.AsyncClient, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the API server exited with {proc.returncode}")
        try:
            if (await http.get("/readyz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.1)
    raise TimeoutError("the API server was not ready within 60 s")


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (Linux)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Rate:
    per_second: float
    p50_ms: float
    unexpected: int
    #: share of one core the server and this client used while measuring
    server_cpu: float
    client_cpu: float

    def note(self, what: str, expect: int) -> str:
        return (
            f"{what}: {CONCURRENCY} in flight, p50 {self.p50_ms:.1f} ms per request, "
            f"{self.unexpected} not {expect}; CPU: server {self.server_cpu:.0%} of a core, "
            f"client {self.client_cpu:.0%}"
        )


async def _rate(
    request: Callable[[], Awaitable[httpx.Response]], expect: int, seconds: float, server: int
) -> Rate:
    """Requests/s with CONCURRENCY in flight for ``seconds`` (after 1 s of warm-up), the p50
    latency of one request, how many answered something else than ``expect``, and the CPU the
    server process and this client used: a server well under a core while the client is near
    one means the client set the pace."""
    latencies: list[float] = []
    errors = 0

    async def loop(until: float, record: bool) -> None:
        nonlocal errors
        while time.perf_counter() < until:
            t0 = time.perf_counter()
            r = await request()
            if record:
                latencies.append(time.perf_counter() - t0)
                errors += r.status_code != expect

    warm = time.perf_counter() + 1.0
    await asyncio.gather(*(loop(warm, False) for _ in range(CONCURRENCY)))
    server_before, client_before = _cpu_seconds(server), time.process_time()
    start = time.perf_counter()
    await asyncio.gather(*(loop(start + seconds, True) for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - start
    return Rate(
        per_second=len(latencies) / elapsed,
        p50_ms=percentile(latencies, 50) * 1000,
        unexpected=errors,
        server_cpu=(_cpu_seconds(server) - server_before) / elapsed,
        client_cpu=(time.process_time() - client_before) / elapsed,
    )


async def _sse_latency(http: httpx.AsyncClient, headers: dict[str, str], steps: int) -> list[float]:
    started = await http.post(
        "/v1/runs",
        json={"agent": "bench_ticker", "input": steps, "priority": 10},
        headers=headers,
    )
    started.raise_for_status()
    run_id = started.json()["id"]
    latencies: list[float] = []
    async with http.stream("GET", f"/v1/runs/{run_id}/events", headers=headers, timeout=None) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                now = time.time()
                data = json.loads(line.removeprefix("data: "))
                if "seq" in data:
                    latencies.append(now - data["created_at"])
    return latencies


async def _measure(url: str, backend: str, quick: bool) -> list[Row]:
    seconds = 3.0 if quick else 10.0
    steps = 100 if quick else 500
    secret = await _prepare(url)
    headers = {"Authorization": f"Bearer {secret}"}
    port = _free_port()
    server_log = STATE_DIR / f"bench-api-server-{backend}.log"
    worker_log = STATE_DIR / f"bench-api-worker-{backend}.log"
    server = _start_server(url, port, server_log)
    worker = None
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=30
        ) as http:
            await _wait_ready(http, server)
            listing = await _rate(
                lambda: http.get("/v1/runs", params={"limit": LISTED}, headers=headers),
                200,
                seconds,
                server.pid,
            )
            body = {"agent": IDLE_AGENT, "input": {"order": "A-17"}}
            starting = await _rate(
                lambda: http.post("/v1/runs", json=body, headers=headers), 201, seconds, server.pid
            )
            worker = start_worker(url, poll_interval=0.05, concurrency=10, log=worker_log)
            latencies = await _sse_latency(http, headers, steps)
    finally:
        if worker is not None:
            stop(worker)
        stop(server)
    base = {"bench": "api", "backend": backend, "system": "kernos"}
    sse_ms = [x * 1000 for x in latencies]
    return [
        Row(
            **base,
            what=f"GET /v1/runs?limit={LISTED}, {LISTED} runs",
            value=listing.per_second,
            unit="req/s",
            better="higher",
            note=listing.note("GET /v1/runs", 200),
        ),
        Row(
            **base,
            what="POST /v1/runs",
            value=starting.per_second,
            unit="req/s",
            better="higher",
            note=starting.note("POST /v1/runs", 201),
        ),
        Row(
            **base,
            what="SSE latency p50, commit to client",
            value=percentile(sse_ms, 50),
            unit="ms",
            note=f"SSE: {len(sse_ms)} events of a {steps}-step run, max {max(sse_ms):.1f} ms",
        ),
        Row(**base, what="SSE latency p95", value=percentile(sse_ms, 95), unit="ms"),
    ]


def bench_api(backend: str, *, quick: bool = False) -> list[Row]:
    with database(backend, "api") as db:
        return asyncio.run(_measure(db.url, backend, quick))


def main() -> int:
    ap = argparse.ArgumentParser(description="the HTTP API's requests/s and SSE latency")
    ap.add_argument("--quick", action="store_true", help="3 s per rate, a 100-step run")
    ap.add_argument("--backends", default=",".join(BACKENDS), help="sqlite,postgresql")
    args = ap.parse_args()
    rows: list[Row] = []
    for backend in args.backends.split(","):
        if backend == "postgresql" and not pg_available():
            print("postgresql: not reachable (KERNOS_BENCH_PG); skipped", file=sys.stderr)
            continue
        rows += bench_api(backend, quick=args.quick)
    print(
        render(
            rows,
            f"kernos HTTP API (uvicorn, 1 process; httpx client, {CONCURRENCY} in flight)",
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
