"""Agents run by the benchmarks' worker subprocesses (``python -m kernos worker --app``).

Registered in kernos' default registry, which is what the worker CLI loads.
"""

from __future__ import annotations

import asyncio

import kernos


@kernos.agent("bench_noop")
async def bench_noop(ctx: kernos.RunContext, n: int) -> int:
    """Warms a worker up: one step, then done."""
    await ctx.step("noop", _tick_now, n)
    return n


@kernos.agent("bench_chain")
async def bench_chain(ctx: kernos.RunContext, n: int) -> int:
    """``n`` trivial steps: the scale-out benchmark's unit of work."""
    for i in range(n):
        await ctx.step("s", _tick_now, i)
    return n


@kernos.agent("bench_sleeper")
async def bench_sleeper(ctx: kernos.RunContext, n: int) -> int:
    """Parks on a one-hour timer (held in the store, not in the worker)."""
    await ctx.sleep(3600)
    return n


@kernos.agent("bench_waiter")
async def bench_waiter(ctx: kernos.RunContext, n: int) -> int:
    """Parks waiting for a message that never comes."""
    await ctx.wait_for_message("x")
    return n


async def _tick_now(i: int) -> int:
    return i


async def _tick(i: int) -> int:
    await asyncio.sleep(0.02)
    return i


@kernos.agent("bench_ticker")
async def bench_ticker(ctx: kernos.RunContext, n: int) -> int:
    """Makes progress all the time: a step every ~20 ms, for the recovery benchmark."""
    for i in range(n):
        await ctx.step("tick", _tick, i)
    return n
