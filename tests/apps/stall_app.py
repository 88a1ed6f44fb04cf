"""The agent that worker subprocesses of ``tests/test_stall.py`` execute.

``stall_steps`` runs ``n`` steps; each records its effect outside kernos (one JSON line in the
file the run's input names, with the worker's pid and the step's idempotency key) so that the
test can count how often each effect really happened, whatever the journal says.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import kernos

STEP_SECONDS = 0.1  # the slow part of a step: an API call


def _record(path: str, i: int) -> int:
    line = json.dumps({"pid": os.getpid(), "key": kernos.idempotency_key(), "i": i})
    with open(path, "a") as f:
        f.write(line + "\n")
    return i


async def effect(path: str, i: int) -> int:
    await asyncio.sleep(STEP_SECONDS)
    return await asyncio.to_thread(_record, path, i)


@kernos.agent("stall_steps")
async def stall_steps(ctx: kernos.RunContext, job: dict[str, Any]) -> int:
    total = 0
    for i in range(int(job["n"])):
        total += await ctx.step("effect", effect, job["effects"], i)
    return total
