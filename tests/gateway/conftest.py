"""The gateway against the provider simulator over real HTTP, one simulator per session.

Two providers point at it: ``oa`` speaks OpenAI Chat Completions, ``an`` Anthropic Messages.
Backoff is scaled down so that retries take milliseconds; everything else is the product's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from _gateway_support import ConfigFactory, config_for

from kernos.gateway import Gateway, GatewayConfig
from kernos.sim import SimServer

SEED = 7


@pytest.fixture
def kernos_sim_seed() -> int:
    return SEED


@pytest.fixture
def sim(kernos_sim: SimServer) -> SimServer:
    """The session's simulator (kernos' pytest plugin) with no rules, scripts or log."""
    return kernos_sim


@pytest.fixture
def make_config(sim: SimServer) -> ConfigFactory:
    def make(**kw: Any) -> GatewayConfig:
        return config_for(sim, **kw)

    return make


@pytest.fixture
async def gateway(make_config: ConfigFactory) -> AsyncIterator[Gateway]:
    g = Gateway(make_config())
    try:
        yield g
    finally:
        await g.aclose()
