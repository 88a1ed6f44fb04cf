"""The API over real HTTP: a uvicorn server on a loopback port, a real worker, both databases.

Live server-sent events (the journal so far, then each event as it is committed, an ``end``
event, resuming with Last-Event-ID), readiness when the database stops answering, and
``kernos serve`` with several processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from kernos.api import ApiConfig, create_app
from kernos.chaos import TcpProxy
from kernos.kernel import Registry, Settings, connect
from kernos.store import Event, Run, RunState
from kernos.testing import FAST, running_worker, wait_until

from ._api_support import CONFIG, Served, make_keys, register_agents, serving

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Sse:
    """One server-sent event as a client sees it."""

    event: str
    id: int | None
    data: str


async def events(http: httpx.AsyncClient, url: str, headers: dict[str, str]) -> AsyncIterator[Sse]:
    """Parse a text/event-stream (the subset the API sends) until the server ends it."""
    async with http.stream("GET", url, headers=headers) as r:
        assert r.status_code == 200, await r.aread()
        assert r.headers["content-type"].startswith("text/event-stream")
        event, ident, data = "message", None, list[str]()
        async for line in r.aiter_lines():
            if line == "":
                if data:
                    yield Sse(event, ident, "\n".join(data))
                event, ident, data = "message", None, list[str]()
            elif line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("id: "):
                ident = int(line.removeprefix("id: "))
            elif line.startswith("data: "):
                data.append(line.removeprefix("data: "))


async def test_events_stream_live_from_a_running_worker_and_end_with_the_run(
    served: Served, registry: Registry
) -> None:
    """The stream holds the events journaled before the client came and those committed
    while it listens, in order, once each, then ``end``: the run below cannot finish before
    the test sends it a message, so events received before that were received live."""
    async with httpx.AsyncClient(base_url=served.url, timeout=30) as http:
        start = await http.post(
            "/v1/runs", json={"agent": "waits", "input": "go"}, headers=served.auth("operator")
        )
        run_id = start.json()["id"]
        received: list[Sse] = []
        async with running_worker(served.client, registry, FAST, services={}):
            async for ev in events(http, f"/v1/runs/{run_id}/events", served.auth("viewer")):
                received.append(ev)
                if ev.event == "message" and _type(ev) == "message_wait":
                    assert (await served.client.get(run_id)).state != RunState.COMPLETED
                    sent = await http.post(
                        f"/v1/runs/{run_id}/messages",
                        json={"topic": "go", "value": "now"},
                        headers=served.auth("operator"),
                    )
                    assert sent.status_code == 202
            done = await served.client.get(run_id)
    journal = [e.seq for e in await served.client.journal(run_id)]
    assert [e.id for e in received if e.event == "message"] == journal
    assert _type(received[-2]) == "run_completed"
    assert (received[-1].event, received[-1].id) == ("end", None)
    assert received[-1].data == f'{{"id":"{run_id}","state":"completed"}}'
    assert done.state == RunState.COMPLETED


def _type(ev: Sse) -> str:
    return str(json.loads(ev.data)["type"])


async def test_last_event_id_resumes_without_gaps_or_repeats(
    served: Served, registry: Registry
) -> None:
    async with httpx.AsyncClient(base_url=served.url, timeout=30) as http:
        run_id = (
            await http.post(
                "/v1/runs",
                json={"agent": "waits", "input": "go"},
                headers=served.auth("operator"),
            )
        ).json()["id"]
        url = f"/v1/runs/{run_id}/events"
        async with running_worker(served.client, registry, FAST, services={}):
            first: list[Sse] = []
            async for ev in events(http, url, served.auth("viewer")):
                first.append(ev)
                if _type(ev) == "message_wait":
                    break  # the client goes away mid-run
            await served.client.send(run_id, "go", 1)
            await served.client.wait(run_id, timeout=20)
        last = first[-1].id
        assert last is not None
        rest = [
            ev
            async for ev in events(http, url, {**served.auth("viewer"), "Last-Event-ID": str(last)})
        ]
        again = [ev async for ev in events(http, f"{url}?after=2", served.auth("viewer"))]
    journal = [e.seq for e in await served.client.journal(run_id)]
    seen = [e.id for e in first + rest if e.event == "message"]
    assert seen == journal
    assert rest[-1].event == "end"
    assert [e.id for e in again if e.event == "message"] == journal[2:]


async def test_many_clients_following_one_run_share_one_poller(
    served: Served, registry: Registry
) -> None:
    async with httpx.AsyncClient(base_url=served.url, timeout=30) as http:
        run_id = (
            await http.post(
                "/v1/runs",
                json={"agent": "waits", "input": "go"},
                headers=served.auth("operator"),
            )
        ).json()["id"]
        feed = served.server.app.state.kernos.get().feed
        url = f"/v1/runs/{run_id}/events"

        async def follow() -> list[Sse]:
            return [ev async for ev in events(http, url, served.auth("viewer"))]

        followers = [asyncio.create_task(follow()) for _ in range(8)]
        await wait_until(lambda: feed.followed == 1, what="the streams to start")
        async with running_worker(served.client, registry, FAST, services={}):
            await wait_until(
                lambda: _waiting(served, run_id), what="the run to wait for its message"
            )
            assert feed.followed == 1
            await served.client.send(run_id, "go", 1)
            results = await asyncio.wait_for(asyncio.gather(*followers), 30)
    journal = [e.seq for e in await served.client.journal(run_id)]
    for got in results:
        assert [e.id for e in got if e.event == "message"] == journal
        assert got[-1].event == "end"
    await wait_until(lambda: feed.followed == 0, what="the poller to stop")


async def _waiting(served: Served, run_id: str) -> bool:
    return (await served.client.get(run_id)).state == RunState.WAITING


async def test_an_idle_stream_is_kept_alive_and_a_finished_run_streams_at_once(
    served: Served, registry: Registry
) -> None:
    async with httpx.AsyncClient(base_url=served.url, timeout=30) as http:
        run_id = (
            await http.post(
                "/v1/runs", json={"agent": "echo", "input": 1}, headers=served.auth("operator")
            )
        ).json()["id"]
        async with http.stream(
            "GET", f"/v1/runs/{run_id}/events", headers=served.auth("viewer")
        ) as r:
            lines = r.aiter_lines()
            while await anext(lines) != ": keepalive":
                pass  # the queued run is quiet: the server says so every CONFIG.keepalive s
        async with running_worker(served.client, registry, FAST, services={}):
            await served.client.wait(run_id, timeout=20)
        got = [ev async for ev in events(http, f"/v1/runs/{run_id}/events", served.auth())]
    assert got[-1].event == "end" and _type(got[-2]) == "run_completed"
    assert CONFIG.keepalive < 5


async def test_a_stream_that_fails_midway_says_so_and_ends(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The status line is long sent when following fails: the stream carries an ``error``
    event (a problem document) and ends, and the client may resume with Last-Event-ID."""

    async def broken(run: Run, *, after: int = 0, keepalive: float = 15.0) -> AsyncIterator[Event]:
        yield Event(seq=after + 1, type="note", created_at=1.0)
        raise RuntimeError("the feed broke")

    feed = served.server.app.state.kernos.get().feed
    monkeypatch.setattr(feed, "follow", broken)
    run_id = (await served.client.start("waits", "go", tenant="acme")).id
    async with httpx.AsyncClient(base_url=served.url, timeout=30) as http:
        got = [ev async for ev in events(http, f"/v1/runs/{run_id}/events", served.auth())]
    assert [(e.event, e.id) for e in got] == [("message", 1), ("error", None)]
    problem = json.loads(got[1].data)
    assert problem["status"] == 500 and "Last-Event-ID" in problem["detail"]
    assert "the feed broke" not in got[1].data


@pytest.mark.postgres
async def test_readyz_is_503_while_the_database_does_not_answer(
    pg_url: str, registry: Registry
) -> None:
    """Readiness reports the database, liveness does not: a stalled database makes /readyz
    503 (with Retry-After) within its timeout, while /healthz stays 200; both recover."""
    register_agents(registry)
    with TcpProxy() as proxy:
        url = proxy.url(pg_url)
        client = await connect(pg_url, registry=registry)
        try:
            keys = await make_keys(client)
            settings = Settings(database_url=url, db_io_timeout=1.0)
            config = ApiConfig(key_cache_ttl=0, ready_timeout=0.5)
            app = create_app(url, registry=registry, settings=settings, config=config)
            with serving(app) as server:
                async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
                    assert (await http.get("/readyz")).status_code == 200
                    proxy.stall()
                    ready = await http.get("/readyz")
                    assert ready.status_code == 503, ready.text
                    assert ready.headers["content-type"] == "application/problem+json"
                    assert int(ready.headers["retry-after"]) >= 1
                    assert (await http.get("/healthz")).status_code == 200
                    runs = await http.get(
                        "/v1/runs", headers={"Authorization": f"Bearer {keys[('admin', None)]}"}
                    )
                    assert runs.status_code == 503, runs.text
                    assert "retry-after" in runs.headers
                    proxy.resume()

                    async def ready_again() -> bool:
                        return (await http.get("/readyz")).status_code == 200

                    await wait_until(ready_again, timeout=20, what="/readyz to recover")
        finally:
            await client.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
async def test_kernos_serve_runs_several_server_processes(sqlite_url: str) -> None:
    client = await connect(sqlite_url)
    try:
        keys = await make_keys(client)
    finally:
        await client.close()
    port = _free_port()
    command = "import typer; from kernos.cli._serve import serve; typer.run(serve)"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *["-c", command, "--port", str(port), "--workers", "2"],
        cwd=ROOT,
        env={**os.environ, "KERNOS_DATABASE_URL": sqlite_url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:

            async def ready() -> bool:
                try:
                    return (await http.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_until(ready, timeout=60, what="kernos serve to be ready")
            h = {"Authorization": f"Bearer {keys[('viewer', 'acme')]}"}
            for _ in range(20):
                assert (await http.get("/v1/runs", headers=h)).status_code == 200
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    output = out.decode()
    assert proc.returncode == 0, output
    assert output.count("Started server process") == 2, output
