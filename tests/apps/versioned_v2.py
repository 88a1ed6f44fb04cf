"""Version 2 of the agent ``versioned`` (see versioned_v1.py): the same steps, so only the
output tells which version's code finished a run."""

from __future__ import annotations

import os
from typing import Any

import kernos

VERSION = "2"


@kernos.agent("versioned", version=VERSION)
async def versioned(ctx: kernos.RunContext, job: dict[str, Any]) -> dict[str, Any]:
    started = await ctx.step("where", os.getpid)
    if job.get("sleep"):
        await ctx.sleep(float(job["sleep"]))
    if job.get("ask"):
        await ctx.ask_human("May version 2 finish?")
    return {"version": VERSION, "started_pid": started, "finished_pid": os.getpid()}
