"""``kernos serve``'s /metrics (the fleet, read from the database by a real scrape) and its
JSON logs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import kernos
from kernos.kernel import Client, Registry
from kernos.store import WorkerRegistration
from kernos.testing import wait_until

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
async def test_serve_exposes_the_fleet_and_logs_json(
    client: Client, registry: Registry, db_url: str
) -> None:
    @kernos.agent("asks", registry=registry)
    async def asks(ctx: kernos.RunContext, _: object) -> None:
        await ctx.ask_human("ok?")

    await client.store.register_agents(registry.keys())
    for _ in range(3):
        await client.start("asks", None)
    await client.store.register_worker(
        WorkerRegistration(
            id="w-1", host="h", pid=1, versions=("asks@1",), concurrency=8, lease_ttl=30.0
        )
    )
    await client.store.worker_heartbeat(
        worker_id="w-1",
        leases={},
        lease_ttl=30.0,
        active=2,
        info={"breakers": {"openai:gpt-4o": "open", "anthropic:claude": "closed"}},
    )
    port = _free_port()
    command = "import typer; from kernos.cli._serve import serve; typer.run(serve)"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *["-c", command, "--port", str(port), "--log-format", "json"],
        cwd=ROOT,
        env={**os.environ, "KERNOS_DATABASE_URL": db_url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:

            async def scrape() -> str | None:
                try:
                    response = await http.get("/metrics")
                except httpx.TransportError:
                    return None
                return response.text if response.status_code == 200 else None

            text = str(await wait_until(scrape, timeout=60, what="a scrape of /metrics"))
            assert (await http.get("/v1/runs")).status_code == 401  # the API still needs a key
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("kernos_runs", (("state", "queued"),))] == 3
    assert samples[("kernos_queue_depth", ())] == 3
    assert (
        samples[("kernos_live_runs", (("agent", "asks"), ("state", "queued"), ("version", "1")))]
        == 3
    )
    assert samples[("kernos_workers", (("state", "alive"),))] == 1
    assert samples[("kernos_fleet_capacity", ())] == 8
    assert samples[("kernos_fleet_active_runs", ())] == 2
    assert samples[("kernos_breaker_state", (("endpoint", "openai:gpt-4o"),))] == 2
    assert samples[("kernos_breaker_state", (("endpoint", "anthropic:claude"),))] == 0
    lines = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    assert lines, out.decode()
    assert any(line["logger"].startswith("uvicorn") for line in lines)
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
