"""Helpers shared by the kernel tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from kernos.kernel import Worker

WorkerFactory = Callable[..., AbstractAsyncContextManager[Worker]]


async def until(predicate: Callable[[], object], timeout: float = 15.0) -> None:
    """Poll an async or sync condition until true; fail after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)
