"""(n) what tracing and metrics cost a worker: step overhead with both on against both off.

The same workloads as (a) and (b), in one process, on one database, in interleaved pairs
(off, on): one run of 1,000 trivial steps (ms per step, from the journal's timestamps) and 100
concurrent runs (steps/s). "On" is what ``kernos worker --metrics-port`` with
``OTEL_EXPORTER_OTLP_ENDPOINT`` set does: every committed event goes through the span builder
and the Prometheus counters, and is handed to the span exporter sidecar, which sends the
spans by OTLP/HTTP in batches to a real HTTP endpoint
on loopback (a sink process that answers 200, standing in for a collector).

Target (issue #8): at most 10% more per step with everything on.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable

from _common import Database, Row, database, median
from steps import REGISTRY

from kernos.kernel import Observer, Observers, Worker, WorkerConfig, connect
from kernos.telemetry import SpanPipe, WorkerMetrics, tracing_settings

_SINK = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


class _Sink:
    """An OTLP/HTTP endpoint in a process of its own (as a collector is) that reads each
    request and answers 200."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SINK], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        port = int(self.proc.stdout.readline())
        self.endpoint = f"http://127.0.0.1:{port}"

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _observer(sink: _Sink) -> tuple[Observer, Callable[[], None]]:
    """What ``kernos worker --metrics-port N`` with an OTLP endpoint runs: metrics in the
    worker, spans built and sent by the sidecar process."""
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint}
    settings = tracing_settings(env)
    assert settings is not None
    pipe = SpanPipe(settings, env)
    assert pipe.wait_ready(), "the span exporter sidecar did not start"
    return Observers([pipe, WorkerMetrics()]), lambda: asyncio.run(pipe.aclose())


async def _steps(
    db: Database, observer: Observer | None, runs: int, steps: int
) -> tuple[float, float]:
    """(ms per step of the first run, steps/s of all): ``runs`` runs of ``steps`` steps."""
    client = await connect(db.url, registry=REGISTRY)
    worker = Worker(
        client.store,
        REGISTRY,
        WorkerConfig(concurrency=max(200, runs), poll_interval=0.05, lease_ttl=30),
        observer=observer,
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
        rate = runs * steps / (time.perf_counter() - start)
        times = [
            e.created_at for e in await client.journal(started[0].id) if e.type == "step_completed"
        ]
        per_step = (times[-1] - times[0]) / (len(times) - 1) * 1000
        return per_step, rate
    finally:
        worker.stop()
        await task
        await client.close()


def bench_n(backend: str, *, repeat: int = 3, quick: bool = False) -> list[Row]:
    sink = _Sink()
    rows: list[Row] = []
    try:
        with database(backend, "n") as db:
            latency: list[tuple[float, float]] = []
            rates: list[tuple[float, float]] = []
            for _ in range(repeat):
                off_ms, _ = asyncio.run(_steps(db, None, 1, 300 if quick else 1000))
                observer, close = _observer(sink)
                try:
                    on_ms, _ = asyncio.run(_steps(db, observer, 1, 300 if quick else 1000))
                finally:
                    close()
                latency.append((off_ms, on_ms))
                _, off_rate = asyncio.run(_steps(db, None, 100, 20 if quick else 50))
                observer, close = _observer(sink)
                try:
                    _, on_rate = asyncio.run(_steps(db, observer, 100, 20 if quick else 50))
                finally:
                    close()
                rates.append((off_rate, on_rate))
        ratio = median([on / off for off, on in latency])
        rows.append(
            Row(
                bench="n",
                backend=backend,
                system="kernos",
                what="ctx.step with tracing + metrics on (floor: both off)",
                value=median([on for _, on in latency]),
                unit="ms",
                floor=median([off for off, _ in latency]),
                ratio=ratio,
                target="<= 1.10x",
                ok=ratio <= 1.10,
                better="lower",
                note="pairs (off, on) ms/step: "
                + ", ".join(f"({a:.3f}, {b:.3f})" for a, b in latency),
            )
        )
        ratio_rate = median([on / off for off, on in rates])
        rows.append(
            Row(
                bench="n",
                backend=backend,
                system="kernos",
                what="steps/s, 100 runs, tracing + metrics on (floor: off)",
                value=median([on for _, on in rates]),
                unit="steps/s",
                floor=median([off for off, _ in rates]),
                ratio=ratio_rate,
                target=">= 0.90x",
                ok=ratio_rate >= 0.90,
                better="higher",
                note="pairs (off, on) steps/s: "
                + ", ".join(f"({a:.0f}, {b:.0f})" for a, b in rates),
            )
        )
    finally:
        sink.close()
    return rows
