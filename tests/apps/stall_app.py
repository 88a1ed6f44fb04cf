"""The agent that worker subprocesses of ``tests/test_stall.py`` execute.

``stall_steps`` runs ``n`` steps; each records its effect outside kernos (one line in the file
named by ``KERNOS_STALL_EFFECTS``, with the worker's pid and the step's idempotency key) so the
test can count how often each effect really happened, whatever the journal says.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import kernos

EFFECTS = Path(os.environ.get("KERNOS_STALL_EFFECTS", ".kernos/stall-effects.log"))
STEP_SECONDS = float(os.environ.get("KERNOS_STALL_STEP_SECONDS", "0.2"))


def _record(i: int) -> int:
    key = kernos.idempotency_key()
    with EFFECTS.open("a") as f:
        f.write(f"{os.getpid()} {key} {i}\n")
    return i


async def effect(i: int) -> int:
    await asyncio.sleep(STEP_SECONDS)  # the slow part: an API call
    return await asyncio.to_thread(_record, i)


@kernos.agent("stall_steps")
async def stall_steps(ctx: kernos.RunContext, n: int) -> int:
    total = 0
    for i in range(n):
        total += await ctx.step("effect", effect, i)
    return total
