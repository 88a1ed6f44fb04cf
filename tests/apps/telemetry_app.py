"""An agent for the telemetry tests run in real worker processes: it logs from inside a step,
asks a model (``KERNOS_CONFIG`` points the worker at the provider simulator) and takes its
time, so a test can kill its worker in the middle."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kernos

log = logging.getLogger("telemetry_app")


async def work(i: int, seconds: float) -> int:
    log.info("working on part %d", i)
    await asyncio.sleep(seconds)
    return i * i


@kernos.agent("traced")
async def traced(ctx: kernos.RunContext, job: dict[str, Any]) -> dict[str, Any]:
    total = 0
    for i in range(1, int(job.get("steps", 3)) + 1):
        total += await ctx.step(f"part-{i}", work, i, float(job.get("seconds", 0.05)))
    text = ""
    if job.get("route"):
        text = (await ctx.llm(job["route"], [{"role": "user", "content": "sum?"}])).text
    return {"total": total, "text": text}
