"""Fixtures for real resources: a SQLite file, a PostgreSQL schema, worker processes.

PostgreSQL comes from ``KERNOS_TEST_DATABASE_URL``. Without it the PostgreSQL half of every
backend-parametrised test is skipped with a visible reason (a laptop); with it, an unreachable
server fails those tests (CI).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest
from _db_support import PG_URL, SKIP_PG, pg_schema
from _kernel_support import WorkerFactory
from _procs import Workers

from kernos.kernel import Client, Registry, Worker, WorkerConfig, connect
from kernos.testing import FAST, running_worker


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL schema for one test, dropped afterwards."""
    if not PG_URL:
        pytest.skip(SKIP_PG)
    with pg_schema("kt") as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'kernos.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on a real SQLite file and on a real PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'kernos.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def registry() -> Registry:
    return Registry()


@pytest.fixture
async def client(db_url: str, registry: Registry) -> AsyncIterator[Client]:
    c = await connect(db_url, registry=registry)
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
def worker(client: Client, registry: Registry) -> WorkerFactory:
    """``async with worker() as w:`` runs an in-process worker on the test's database."""

    def start(config: WorkerConfig = FAST) -> AbstractAsyncContextManager[Worker]:
        return running_worker(client, registry, config)

    return start


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    """Real worker processes for one test (``python -m kernos worker``), all killed after it."""
    procs = Workers(tmp_path)
    try:
        yield procs
    finally:
        procs.close()


@pytest.fixture
def app_client_for(db_url: str) -> Callable[[Registry], AbstractAsyncContextManager[Client]]:
    """``async with app_client_for(registry) as client:`` a client on the test's database that
    knows the agents of an app module (``load_app(...)``)."""

    @asynccontextmanager
    async def open_client(registry: Registry) -> AsyncIterator[Client]:
        c = await connect(db_url, registry=registry)
        try:
            yield c
        finally:
            await c.close()

    return open_client
