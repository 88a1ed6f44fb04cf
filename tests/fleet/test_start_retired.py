"""Starting runs when versions are retired (issue #8, section 4): wherever a run is created
(``Client.start``, ``POST /v1/runs``, ``kernos run``) a retired version is refused with a
clear error and nothing written; a start that names no version goes to the newest version
that is not retired, which makes retiring a bad deploy a rollback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from _cli_support import kernos_async

import kernos
from kernos.api import ApiConfig, create_app
from kernos.kernel import Client, Registry, connect
from kernos.store import VersionRetired


def two_versions() -> Registry:
    registry = Registry()
    for version in ("1", "2"):

        @kernos.agent("a", version=version, registry=registry)
        async def a(ctx: kernos.RunContext, value: Any) -> Any:
            return value

    return registry


@pytest.fixture
async def local(db_url: str) -> AsyncIterator[Client]:
    """A client that has the code of a@1 and a@2 (as ``kernos run --app`` has)."""
    c = await connect(db_url, registry=two_versions())
    await c.store.register_agents([("a", "1"), ("a", "2")])
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
async def remote(db_url: str, local: Client) -> AsyncIterator[Client]:
    """A client without the agents' code: it goes by what workers registered."""
    c = await connect(db_url, registry=Registry())
    try:
        yield c
    finally:
        await c.close()


async def test_a_start_without_a_version_goes_to_the_newest_not_retired(
    local: Client, remote: Client
) -> None:
    assert (await local.start("a", 1)).agent_version == "2"
    assert (await remote.start("a", 1)).agent_version == "2"
    await local.store.retire_version("a", "2", by="user:ops", reason="bad deploy")
    assert (await local.start("a", 1)).agent_version == "1"
    assert (await remote.start("a", 1)).agent_version == "1"


async def test_a_retired_version_named_or_the_last_one_is_refused(
    local: Client, remote: Client
) -> None:
    await local.store.retire_version("a", "1", by="user:ops")
    before = len(await local.runs())
    for client in (local, remote):
        with pytest.raises(VersionRetired, match="'a' version '1' was retired"):
            await client.start("a", 1, version="1")
    await local.store.retire_version("a", "2", by="user:ops")
    for client in (local, remote):
        with pytest.raises(VersionRetired, match="'a' version '2' was retired"):
            await client.start("a", 1)
    assert len(await local.runs()) == before  # a rejected request writes nothing


async def test_the_api_refuses_a_retired_version_with_409(db_url: str, local: Client) -> None:
    await local.store.retire_version("a", "1", by="user:ops", reason="v2 is out")
    _, secret = await local.store.create_api_key(name="ops", tenant=None, role="admin")
    app = create_app(db_url, registry=Registry(), config=ApiConfig(key_cache_ttl=0.0))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://kernos.test") as http:
            auth = {"Authorization": f"Bearer {secret}"}
            refused = await http.post(
                "/v1/runs", json={"agent": "a", "version": "1", "input": 1}, headers=auth
            )
            started = await http.post("/v1/runs", json={"agent": "a", "input": 1}, headers=auth)
    assert refused.status_code == 409, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert "was retired" in refused.json()["detail"]
    assert "v2 is out" in refused.json()["detail"]
    assert started.status_code == 201 and started.json()["agent_version"] == "2"


async def test_kernos_run_says_the_version_is_retired_and_exits_2(
    db_url: str, local: Client
) -> None:
    await local.store.retire_version("a", "1", by="user:ops")
    refused = await kernos_async(db_url, "run", "a", "--version", "1", "--input", "1")
    assert refused.returncode == 2, refused.stderr
    assert "was retired" in refused.stderr and "kernos agents unretire a 1" in refused.stderr
