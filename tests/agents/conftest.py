"""Agents on a real database, a real in-process worker and the provider simulator over HTTP.

The simulator's ``oa`` provider speaks OpenAI Chat Completions; tests script what the model
says (``sim.script("oa", Reply(...))``) and read what it was sent (``sim.log("oa")``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
from _gateway_support import config_for

from kernos.gateway import default_services
from kernos.kernel import Client, Registry, Worker, WorkerConfig
from kernos.sim import SimServer
from kernos.testing import FAST, running_worker

AgentWorker = Callable[..., AbstractAsyncContextManager[Worker]]


@pytest.fixture
def sim(kernos_sim: SimServer) -> SimServer:
    return kernos_sim


@pytest.fixture
def agent_worker(client: Client, registry: Registry, sim: SimServer) -> AgentWorker:
    """``async with agent_worker() as w:`` a worker whose ``ctx.llm`` calls the simulator."""

    @asynccontextmanager
    async def start(config: WorkerConfig = FAST, **settings: Any) -> AsyncIterator[Worker]:
        services = default_services(config_for(sim, **settings))
        async with running_worker(client, registry, config, services=services) as worker:
            yield worker

    return start
