"""Helpers shared by the kernel tests."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from kernos.kernel import Client, Registry, Worker
from kernos.testing import wait_until

WorkerFactory = Callable[..., AbstractAsyncContextManager[Worker]]
#: the ``app_client_for`` fixture: a client knowing an app module's agents
ClientFor = Callable[[Registry], AbstractAsyncContextManager[Client]]


async def until(predicate: Callable[[], object], timeout: float = 15.0) -> None:
    """Poll an async or sync condition until true; fail after ``timeout``."""
    await wait_until(predicate, timeout=timeout)
