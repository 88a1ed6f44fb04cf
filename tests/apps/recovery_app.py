"""Agents that tests/test_recovery.py runs in real worker processes (``--app`` points here).

Every step records its effect outside kernos' database, where a SIGKILL cannot take it back:
one JSON line appended with a single ``O_APPEND`` write (atomic, and in the order the effects
happened), carrying the step's ``kernos.idempotency_key()``, the step's name and the pid of the
process that ran it. A step's result carries that pid too, so the journal shows which process
committed each step.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import kernos


def record(path: str, run_id: str, step: str, **extra: Any) -> str:
    """Append one effect line; returns the idempotency key it carries."""
    key = kernos.idempotency_key()
    line = json.dumps(
        {"key": key, "run": run_id, "step": step, "pid": os.getpid(), "t": time.time(), **extra}
    )
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)
    return key


def chain_value(seed: int, i: int) -> int:
    return seed * 1000 + i * i


def chain_seconds(seed: int, i: int, low: float, high: float) -> float:
    return random.Random(seed * 7919 + i).uniform(low, high)


# -- 1. many runs, many kills ---------------------------------------------------------------


async def chain_step(
    path: str, run_id: str, name: str, value: int, seconds: float
) -> dict[str, Any]:
    """The effect happens first (an API call), then the step takes its time before returning:
    a kill anywhere in that window leaves an effect whose result was never committed."""
    record(path, run_id, name)
    await asyncio.sleep(seconds)
    return {"v": value, "pid": os.getpid()}


@kernos.agent("chain", version="1")
async def chain(ctx: kernos.RunContext, inp: dict[str, Any]) -> dict[str, Any]:
    total = 0
    for i in range(1, inp["steps"] + 1):
        name = f"step-{i}"
        seconds = chain_seconds(inp["seed"], i, inp["low"], inp["high"])
        r = await ctx.step(
            name, chain_step, inp["effects"], ctx.run_id, name, chain_value(inp["seed"], i), seconds
        )
        total += r["v"]
    return {"seed": inp["seed"], "total": total}


# -- 2. fencing -----------------------------------------------------------------------------


async def gated_step(path: str, run_id: str, name: str, gates: str) -> dict[str, Any]:
    """Effect, then block until the test opens this process's gate (``<gates>/<pid>``)."""
    record(path, run_id, name)
    gate = Path(gates) / str(os.getpid())
    while not gate.exists():  # noqa: ASYNC110 - the gate is a file the test process creates
        await asyncio.sleep(0.01)
    return {"pid": os.getpid()}


async def quick_step(path: str, run_id: str, name: str) -> dict[str, Any]:
    record(path, run_id, name)
    return {"pid": os.getpid()}


@kernos.agent("fenced", version="1")
async def fenced(ctx: kernos.RunContext, inp: dict[str, Any]) -> dict[str, Any]:
    before = await ctx.step("before", quick_step, inp["effects"], ctx.run_id, "before")
    slow = await ctx.step("slow", gated_step, inp["effects"], ctx.run_id, "slow", inp["gates"])
    return {"before_pid": before["pid"], "slow_pid": slow["pid"]}


# -- 3. two workers draining many runs -------------------------------------------------------


@kernos.agent("drain", version="1")
async def drain(ctx: kernos.RunContext, inp: dict[str, Any]) -> dict[str, Any]:
    pids = []
    for name in ("fetch", "decide", "act"):
        r = await ctx.step(name, quick_step, inp["effects"], ctx.run_id, name)
        pids.append(r["pid"])
    return {"n": inp["n"], "pids": pids}


# -- 4. timers and messages across restarts; waiting costs nothing ---------------------------


@kernos.agent("waiter", version="1")
async def waiter(ctx: kernos.RunContext, inp: dict[str, Any]) -> dict[str, Any]:
    await ctx.step("a", quick_step, inp["effects"], ctx.run_id, "a")
    await ctx.sleep(inp["sleep"])
    await ctx.step("b", quick_step, inp["effects"], ctx.run_id, "b")
    message = await ctx.wait_for_message("go")
    await ctx.step("c", quick_step, inp["effects"], ctx.run_id, "c")
    return {"message": message}


@kernos.agent("park_timer", version="1")
async def park_timer(ctx: kernos.RunContext, inp: Any) -> str:
    await ctx.sleep(3600)
    return "woke"


@kernos.agent("park_message", version="1")
async def park_message(ctx: kernos.RunContext, inp: Any) -> Any:
    return await ctx.wait_for_message("wake")


# -- 5. a crash between a step's effect and its commit ---------------------------------------


def charge(effects: str, ledger: str, run_id: str, amount: int) -> dict[str, Any]:
    """A payment provider that deduplicates by idempotency key (as Stripe does).

    The raw call is counted in ``effects``; the effect itself is a row in a separate SQLite
    file, inserted at most once per key.
    """
    key = record(effects, run_id, "charge")
    with sqlite3.connect(ledger, timeout=30) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS charges (key TEXT PRIMARY KEY, run TEXT, amount INT)"
        )
        conn.execute(
            "INSERT INTO charges (key, run, amount) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            (key, run_id, amount),
        )
    conn.close()
    return {"key": key, "amount": amount, "pid": os.getpid()}


@kernos.agent("payment", version="1")
async def payment(ctx: kernos.RunContext, inp: dict[str, Any]) -> dict[str, Any]:
    await ctx.step("reserve", quick_step, inp["effects"], ctx.run_id, "reserve")
    receipt = await ctx.step(
        "charge", charge, inp["effects"], inp["ledger"], ctx.run_id, inp["amount"]
    )
    await ctx.step("notify", quick_step, inp["effects"], ctx.run_id, "notify")
    return {"receipt": receipt}
