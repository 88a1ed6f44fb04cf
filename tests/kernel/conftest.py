from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from _kernel_support import WorkerFactory

from kernos.kernel import Client, Registry, Worker, WorkerConfig

FAST = WorkerConfig(concurrency=50, lease_ttl=3.0, poll_interval=0.05, grace=5.0)


@pytest.fixture
def worker(client: Client, registry: Registry) -> WorkerFactory:
    """``async with worker() as w:`` runs an in-process worker on the test's database."""

    @asynccontextmanager
    async def start(config: WorkerConfig = FAST) -> AsyncIterator[Worker]:
        w = Worker(client.store, registry, config)
        task = asyncio.create_task(w.run())
        await asyncio.wait_for(w.started.wait(), 10)
        try:
            yield w
        finally:
            w.stop()
            await asyncio.wait_for(task, 30)

    return start
