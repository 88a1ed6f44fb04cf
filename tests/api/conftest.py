"""Fixtures for the HTTP API: the app on a real database, with a key per role and tenant.

``api`` runs the app in the test's event loop behind ``httpx.ASGITransport`` (fast, and an
in-process worker can share its loop); ``served`` runs it on a real uvicorn server on a free
loopback port, for what needs real HTTP (live server-sent events, readiness, schemathesis).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from kernos.api import create_app
from kernos.kernel import Registry, connect

from ._api_support import CONFIG, Api, Served, make_keys, register_agents, serving


@pytest.fixture
async def api(db_url: str, registry: Registry) -> AsyncIterator[Api]:
    register_agents(registry)
    app = create_app(db_url, registry=registry, config=CONFIG)
    async with app.router.lifespan_context(app):
        client = app.state.kernos.get().client
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://kernos.test") as http:
            yield Api(app, http, client, await make_keys(client))


@pytest.fixture
async def served(db_url: str, registry: Registry) -> AsyncIterator[Served]:
    register_agents(registry)
    client = await connect(db_url, registry=registry)
    try:
        keys = await make_keys(client)
        app = create_app(db_url, registry=registry, config=CONFIG)
        with serving(app) as server:
            yield Served(server, client, keys)
    finally:
        await client.close()
