"""What kernos' own tests use, for yours: an in-process worker and a condition poller.

    async with kernos.testing.running_worker(client, registry) as worker:
        run = await client.start("refund", {"id": "A-17"})
        await kernos.testing.wait_until(lambda: client.get(run.id), timeout=10)

Tests wait on conditions with a deadline, never on fixed sleeps (STYLE.md).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from kernos.gateway import default_services
from kernos.kernel import (
    CallService,
    Client,
    Embedder,
    Gatekeeper,
    Notifier,
    Observer,
    Registry,
    Scrubber,
    Worker,
    WorkerConfig,
)

#: short leases and polls, so that tests of recovery and timers finish quickly
FAST = WorkerConfig(concurrency=50, lease_ttl=3.0, poll_interval=0.05, grace=5.0)

__all__ = ["FAST", "running_worker", "wait_until"]


@asynccontextmanager
async def running_worker(
    client: Client,
    registry: Registry,
    config: WorkerConfig = FAST,
    *,
    services: Mapping[str, CallService] | None = None,
    embedder: Embedder | None = None,
    notifier: Notifier | None = None,
    gatekeeper: Gatekeeper | None = None,
    redactor: Scrubber | None = None,
    observer: Observer | None = None,
) -> AsyncIterator[Worker]:
    """Run a worker in this event loop for the block; it drains and stops on exit.

    ``services`` serve ``ctx.llm`` (default: ``kernos.default_services()``, from kernos.toml;
    a test points them at the provider simulator with a ``GatewayConfig`` of its own).
    ``embedder`` lets ``ctx.memory`` search by meaning.
    """
    if services is None:
        services = default_services()
    worker = Worker(
        client.store,
        registry,
        config,
        services=services,
        embedder=embedder,
        notifier=notifier,
        gatekeeper=gatekeeper,
        redactor=redactor,
        observer=observer,
    )
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(worker.started.wait(), 10)
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, config.grace + 30)


async def wait_until(
    condition: Callable[[], Any | Awaitable[Any]],
    *,
    timeout: float = 15.0,
    what: str = "the condition",
    interval: float = 0.02,
) -> Any:
    """Poll ``condition`` (sync or async) until truthy and return its value.

    Raises ``TimeoutError`` naming ``what`` after ``timeout`` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() >= deadline:
            raise TimeoutError(f"gave up after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)
