"""One provider simulator on a free port for the session, reset before each test.

The clients are the official SDKs with their own retries off and a short timeout, talking real
HTTP to the simulator: what a test sees is what the gateway will see.

The simulator itself comes from kernos' pytest plugin (``kernos_sim``), which any project that
depends on kernos gets too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import anthropic
import httpx
import openai
import pytest

from kernos.sim import SimServer

SEED = 1


@pytest.fixture
def kernos_sim_seed() -> int:
    return SEED


@pytest.fixture
def sim(kernos_sim: SimServer) -> SimServer:
    """The session's simulator (kernos' pytest plugin) with no rules, scripts or log."""
    return kernos_sim


@pytest.fixture
def oai(sim: SimServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=sim.openai_base_url("oai"), api_key="sim", max_retries=0, timeout=5
    ) as client:
        yield client


@pytest.fixture
def ant(sim: SimServer) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(
        base_url=sim.anthropic_base_url("ant"), api_key="sim", max_retries=0, timeout=5
    ) as client:
        yield client


@pytest.fixture
async def aoai(sim: SimServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=sim.openai_base_url("oai"), api_key="sim", max_retries=0, timeout=5
    ) as client:
        yield client


@pytest.fixture
async def aant(sim: SimServer) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=sim.anthropic_base_url("ant"), api_key="sim", max_retries=0, timeout=5
    ) as client:
        yield client


@pytest.fixture
def http(sim: SimServer) -> Iterator[httpx.Client]:
    """Plain HTTP to the simulator, for the control endpoint and byte-level checks."""
    with httpx.Client(base_url=sim.url, timeout=5) as client:
        yield client
