"""pytest fixtures for testing agents against the provider simulator (a pytest plugin).

Installed with kernos (entry point ``pytest11``), so in any project that depends on kernos::

    async def test_my_agent_survives_a_429(kernos_sim: kernos.sim.SimServer) -> None:
        kernos_sim.add_fault("openai", Fault(kind="rate_limit", count=1, retry_after=1))
        gateway = kernos.Gateway(config_pointing_at(kernos_sim))
        ...

``kernos_sim_server`` is one simulator (a real HTTP server on a free port) for the whole test
session; ``kernos_sim`` is that server with no rules, scripts or log, reseeded with
``kernos_sim_seed`` (override that fixture to change the seed).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kernos.sim import SimServer, serve


@pytest.fixture(scope="session")
def kernos_sim_server() -> Iterator[SimServer]:
    """The session's provider simulator."""
    with serve(seed=0) as server:
        yield server


@pytest.fixture
def kernos_sim_seed() -> int:
    """The seed ``kernos_sim`` resets to (fault rates draw from it)."""
    return 1


@pytest.fixture
def kernos_sim(kernos_sim_server: SimServer, kernos_sim_seed: int) -> SimServer:
    """The session's simulator, fresh for this test: no faults, scripts or log."""
    kernos_sim_server.reset(seed=kernos_sim_seed)
    return kernos_sim_server
