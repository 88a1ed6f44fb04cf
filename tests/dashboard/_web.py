"""What the dashboard tests share: signed-in requests over ASGI, and for the browser tests a
whole stack (database, API server, worker, provider simulator) running beside the test."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from contextlib import AbstractAsyncContextManager, ExitStack
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
from api._api_support import CONFIG, make_keys, register_agents, serving
from fastapi import FastAPI

import kernos
from kernos.agents import Agent
from kernos.api import create_app
from kernos.api._dashboard_auth import COOKIE, csrf_token
from kernos.gateway import (
    Endpoint,
    GatewayConfig,
    GatewaySettings,
    ProviderConfig,
    default_services,
)
from kernos.kernel import Client, Registry, Worker, connect
from kernos.sim import SimServer
from kernos.store import RunState
from kernos.testing import FAST, running_worker, wait_until

T = TypeVar("T")
#: the simulator's provider for the dashboard's agents (its own: no other test scripts it)
PROVIDER = "dash"
MODEL = f"{PROVIDER}:gpt-dash"


@dataclass
class Web:
    """The app over ASGI, its kernos client, and a key per role and tenant."""

    app: FastAPI
    http: httpx.AsyncClient
    client: Client
    keys: dict[tuple[str, str | None], str] = field(default_factory=dict)

    def cookie(self, role: str = "admin", tenant: str | None = "acme") -> dict[str, str]:
        return {"Cookie": f"{COOKIE}={self.keys[(role, tenant)]}"}

    def csrf(self, role: str = "admin", tenant: str | None = "acme") -> str:
        return csrf_token(self.keys[(role, tenant)])

    async def get(
        self, path: str, role: str = "admin", tenant: str | None = "acme"
    ) -> httpx.Response:
        return await self.http.get(path, headers=self.cookie(role, tenant))

    async def post(
        self,
        path: str,
        form: dict[str, str],
        role: str = "admin",
        tenant: str | None = "acme",
        *,
        token: bool = True,
        origin: str | None = "http://kernos.test",
    ) -> httpx.Response:
        data = {**({"csrf": self.csrf(role, tenant)} if token else {}), **form}
        headers = self.cookie(role, tenant)
        if origin is not None:
            headers["Origin"] = origin
        return await self.http.post(path, data=data, headers=headers)


def register_refunder(registry: Registry, ledger: list[dict[str, Any]]) -> None:
    """An LLM agent whose refunds over 100 need a person's approval."""

    @kernos.tool(requires_approval=lambda a: a["amount"] > 100)
    def issue_refund(order_id: str, amount: float) -> str:
        """Refund an order."""
        ledger.append({"order_id": order_id, "amount": amount})
        return f"refunded {amount} on {order_id}"

    Agent("refunder", model=MODEL, tools=[issue_refund], registry=registry)


def gateway_for(sim: SimServer) -> GatewayConfig:
    return GatewayConfig(
        providers={
            PROVIDER: ProviderConfig(
                name=PROVIDER, kind="openai", base_url=sim.openai_base_url(PROVIDER), api_key_env=""
            )
        },
        routes={"dash": (Endpoint.parse(MODEL),)},
        gateway=GatewaySettings(backoff_base=0.01, backoff_cap=0.05, timeout=5.0),
        prices={},
    )


class Stack:
    """A database with a real API server (its own thread), and a client and an in-process
    worker on an event loop of their own (another thread), so that a synchronous browser
    test can drive pages while runs go on. ``call`` runs a coroutine on that loop."""

    def __init__(self, db_url: str, sim: SimServer) -> None:
        self.db_url = db_url
        self.sim = sim
        self.ledger: list[dict[str, Any]] = []
        self.registry = Registry()
        register_agents(self.registry)
        register_refunder(self.registry, self.ledger)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="dash-stack", daemon=True
        )
        self._exit = ExitStack()
        self._worker: AbstractAsyncContextManager[Worker] | None = None

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> Stack:
        self._thread.start()
        self.client = self.call(connect(self.db_url, registry=self.registry))
        self.keys = self.call(make_keys(self.client))
        services = default_services(gateway_for(self.sim))
        self._worker = running_worker(self.client, self.registry, FAST, services=services)
        self.call(self._worker.__aenter__())
        app = create_app(self.db_url, registry=self.registry, config=CONFIG)
        self.url = self._exit.enter_context(serving(app)).url
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._exit.close()
            if self._worker is not None:
                self.call(self._worker.__aexit__(None, None, None))
            self.call(self.client.close())
            self.call(_cancel_the_rest())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=30)
            self.loop.close()


async def _cancel_the_rest() -> None:
    """Tasks a stopped worker left waiting (a poll for work), so that none is destroyed
    pending when the loop closes."""
    rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in rest:
        task.cancel()
    await asyncio.gather(*rest, return_exceptions=True)


async def in_state(client: Client, run_id: str, state: RunState) -> None:
    """Until the run is in ``state`` (a deadline, never a sleep)."""

    async def reached() -> bool:
        return (await client.get(run_id)).state == state

    await wait_until(reached, timeout=20, what=f"run {run_id} {state.value}")
