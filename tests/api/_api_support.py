"""What the API tests share: their agents, keys per role and tenant, a real server, and a
snapshot of everything a rejected request must leave as it was."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

import kernos
from kernos.api import ApiConfig
from kernos.kernel import Client, Registry
from kernos.store import ROLES, ApprovalState, RunState
from kernos.testing import wait_until

TENANTS = ("acme", "globex")
#: fast polls and no key cache, so that tests see every change at once
CONFIG = ApiConfig(key_cache_ttl=0.0, poll_fast=0.005, poll_slow=0.05, keepalive=0.5)


def register_agents(registry: Registry) -> None:
    """The agents the API tests run: each shows one kind of run the API must serve."""

    @kernos.agent("echo", registry=registry)
    async def echo(ctx: kernos.RunContext, value: Any) -> Any:
        return value

    @kernos.agent("stepper", registry=registry)
    async def stepper(ctx: kernos.RunContext, job: dict[str, Any]) -> int:
        async def work(i: int) -> int:
            await asyncio.sleep(job.get("pause", 0.0))
            return i

        total = 0
        for i in range(int(job["steps"])):
            total += await ctx.step(f"step-{i}", work, i)
        return total

    @kernos.agent("waits", registry=registry)
    async def waits(ctx: kernos.RunContext, topic: str) -> Any:
        return await ctx.wait_for_message(topic)

    @kernos.agent("asks", registry=registry)
    async def asks(ctx: kernos.RunContext, question: str) -> dict[str, Any]:
        decision = await ctx.ask_human(
            question, {"type": "object", "properties": {"amount": {"type": "number"}}}
        )
        return {"approved": decision.approved, "answer": decision.answer, "by": decision.by}


async def make_keys(client: Client) -> dict[tuple[str, str | None], str]:
    """A secret per (role, tenant), and an admin key of no tenant: ``(\"admin\", None)``."""
    keys: dict[tuple[str, str | None], str] = {}
    for tenant in TENANTS:
        for role in ROLES:
            _, secret = await client.store.create_api_key(
                name=f"{role}-{tenant}", tenant=tenant, role=role
            )
            keys[(role, tenant)] = secret
    _, keys[("admin", None)] = await client.store.create_api_key(
        name="root", tenant=None, role="admin"
    )
    return keys


@dataclass
class Api:
    """The app under test, an HTTP client for it, the kernos client it uses, and keys."""

    app: FastAPI
    http: httpx.AsyncClient
    client: Client
    keys: dict[tuple[str, str | None], str] = field(default_factory=dict)

    def auth(self, role: str = "admin", tenant: str | None = "acme") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[(role, tenant)]}"}

    async def start(self, agent: str, value: Any = None, *, tenant: str = "acme") -> str:
        r = await self.http.post(
            "/v1/runs", json={"agent": agent, "input": value}, headers=self.auth("operator", tenant)
        )
        assert r.status_code == 201, r.text
        return str(r.json()["id"])


async def snapshot(client: Client) -> dict[str, Any]:
    """Everything a rejected request must leave as it was: runs, journals, messages (through
    the journal), approvals, MCP tool pins, the audit log."""
    runs = await client.store.list_runs(limit=10_000)
    return {
        "runs": sorted((r.id, r.state, r.control, r.updated_at) for r in runs),
        "journals": {r.id: len(await client.store.load_journal(r.id)) for r in runs},
        "approvals": sorted(
            (a.id, a.state) for a in await client.store.list_approvals(state=None, limit=10_000)
        ),
        "pins": [
            (p.server, p.tool, p.hash, p.pending_hash, p.accepted_by)
            for p in await client.store.list_tool_pins()
        ],
        "audit": len(await client.store.list_audit(limit=100_000)),
    }


async def pending_approval(client: Client, run_id: str) -> str:
    async def found() -> str | None:
        pending = await client.store.list_approvals(run_id=run_id, state=ApprovalState.PENDING)
        run = await client.get(run_id)
        return pending[0].id if pending and run.state == RunState.WAITING else None

    return str(await wait_until(found, timeout=20, what=f"an approval of run {run_id}"))


@dataclass
class Server:
    """A real uvicorn server running the app in a thread of its own."""

    url: str
    app: FastAPI


@contextmanager
def serving(app: FastAPI) -> Iterator[Server]:
    """Serve ``app`` on a free loopback port for the block; stop it after."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_level="warning",
        timeout_graceful_shutdown=2,
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="kernos-api-test-server", daemon=True)
    thread.start()
    try:
        for _ in range(1000):
            if server.started or not thread.is_alive():
                break
            threading.Event().wait(0.01)
        assert server.started, "the API server did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        yield Server(f"http://127.0.0.1:{port}", app)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@dataclass
class Served:
    """A real server, a client of the test's own on the same database, and keys."""

    server: Server
    client: Client
    keys: dict[tuple[str, str | None], str]

    @property
    def url(self) -> str:
        return self.server.url

    def auth(self, role: str = "admin", tenant: str | None = "acme") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[(role, tenant)]}"}
