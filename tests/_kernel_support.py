"""Helpers shared by the kernel tests."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from kernos.kernel import Client, Registry, Worker
from kernos.store import Run, RunState
from kernos.testing import wait_until

WorkerFactory = Callable[..., AbstractAsyncContextManager[Worker]]
#: the ``app_client_for`` fixture: a client knowing an app module's agents
ClientFor = Callable[[Registry], AbstractAsyncContextManager[Client]]


async def until(predicate: Callable[[], object], timeout: float = 15.0) -> None:
    """Poll an async or sync condition until true; fail after ``timeout``."""
    await wait_until(predicate, timeout=timeout)


def a_run(**fields: Any) -> Run:
    """A ``Run`` record for tests that need one without a database (any field overridable)."""
    values: dict[str, Any] = {
        "id": "01M8B4J48F0Q7RPH9YWHPBCRTY",
        "agent": "a",
        "agent_version": "1",
        "state": RunState.RUNNING,
        "waiting_for": None,
        "control": None,
        "input": "null",
        "output": None,
        "error": None,
        "priority": 0,
        "parent_id": None,
        "schedule": None,
        "created_at": 0.0,
        "updated_at": 0.0,
        "run_at": 0.0,
        "lease_owner": None,
        "lease_token": 1,
        "lease_expires_at": None,
        "claims": 1,
    }
    return Run(**{**values, **fields})
