"""A worker given ``WorkerConfig(tenant_limits=...)`` keeps each tenant to its limit, and the
others are not held back by it (DESIGN.md: per-tenant concurrency limits). The fleet-wide
version, with three worker processes, is tests/fleet/test_tenant_limits.py."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import replace

from _kernel_support import WorkerFactory

import kernos
from kernos.kernel import Client, Registry, TenantLimits
from kernos.store import RunState
from kernos.testing import FAST

BETA_RUNS = 6


async def test_a_worker_keeps_a_tenant_to_its_limit_and_not_the_others(
    client: Client, registry: Registry, worker: WorkerFactory
) -> None:
    running: Counter[str] = Counter()
    peak: Counter[str] = Counter()
    # every beta run waits until all of them run at once: they would time out if beta were
    # held to acme's limit (or to any limit below BETA_RUNS)
    all_beta = asyncio.Event()

    async def work(tenant: str) -> None:
        running[tenant] += 1
        peak[tenant] = max(peak[tenant], running[tenant])
        try:
            if tenant == "beta":
                if running["beta"] == BETA_RUNS:
                    all_beta.set()
                await asyncio.wait_for(all_beta.wait(), timeout=20)
            else:
                await asyncio.sleep(0.02)
        finally:
            running[tenant] -= 1

    @kernos.agent("tenanted", registry=registry)
    async def tenanted(ctx: kernos.RunContext, tenant: str) -> None:
        await ctx.step("work", work, tenant)

    runs = [await client.start("tenanted", "acme", tenant="acme") for _ in range(10)]
    runs += [await client.start("tenanted", "beta", tenant="beta") for _ in range(BETA_RUNS)]
    config = replace(FAST, tenant_limits=TenantLimits(limits={"acme": 2}))
    async with worker(config):
        ended = [await client.wait(r.id, timeout=30) for r in runs]
    assert all(r.state == RunState.COMPLETED for r in ended), [r.error for r in ended]
    assert peak["acme"] == 2
    assert peak["beta"] == BETA_RUNS
