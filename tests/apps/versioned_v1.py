"""Version 1 of the agent ``versioned``, for tests/fleet: a deploy of version 2 is the module
versioned_v2.py, run by other worker processes (``--app`` points at one or the other).

The output names the version whose code finished the run and the process it ran in, so a test
can tell which worker, on which version, completed it.
"""

from __future__ import annotations

import os
from typing import Any

import kernos

VERSION = "1"


@kernos.agent("versioned", version=VERSION)
async def versioned(ctx: kernos.RunContext, job: dict[str, Any]) -> dict[str, Any]:
    started = await ctx.step("where", os.getpid)
    if job.get("sleep"):
        await ctx.sleep(float(job["sleep"]))
    if job.get("ask"):
        await ctx.ask_human("May version 1 finish?")
    return {"version": VERSION, "started_pid": started, "finished_pid": os.getpid()}
