"""Fixtures for the dashboard: the app on a real database (in the test's loop, over ASGI), and
for the browser tests a real server, a worker and the provider simulator on a database shared
by one test module, driven by a real headless Chromium."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from _db_support import PG_URL, SKIP_PG, pg_schema
from api._api_support import CONFIG, make_keys, register_agents

from kernos.api import create_app
from kernos.kernel import Registry

from ._web import Web

CHROMIUM = os.environ.get("KERNOS_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture
async def web(db_url: str, registry: Registry) -> AsyncIterator[Web]:
    register_agents(registry)
    app = create_app(db_url, registry=registry, config=CONFIG)
    async with app.router.lifespan_context(app):
        client = app.state.kernos.get().client
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://kernos.test", follow_redirects=False
        ) as http:
            yield Web(app, http, client, await make_keys(client))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A database for one test module: a SQLite file, or a PostgreSQL schema dropped after."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('dash') / 'kernos.db'}"
        return
    if not PG_URL:
        pytest.skip(SKIP_PG)
    with pg_schema("kd") as url:
        yield url


def chromium_path() -> str:
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.skip(
            f"no Chromium at {CHROMIUM}: install Debian's chromium package (.ci/run does), or "
            f"point KERNOS_CHROMIUM at one"
        )
    return CHROMIUM
