"""What the routes share in one API process: made when the app starts, closed when it stops."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from kernos.governance import Budget
from kernos.kernel import Client
from kernos.store import SchemaStatus, Store

from ._auth import KeyCache
from ._config import ApiConfig
from ._feed import JournalFeed
from ._problems import ProblemError


class Readiness:
    """The readiness probe: a cheap query (the schema's version) with a deadline.

    One probe runs at a time however often ``/readyz`` is asked: when the database hangs, a
    query can hold a store thread until the driver gives up, and a probe per request would soon
    hold them all (and stall every other request with them).
    """

    def __init__(self, store: Store, timeout: float) -> None:
        self.store = store
        self.timeout = timeout
        self._probe: asyncio.Task[SchemaStatus] | None = None

    async def check(self) -> SchemaStatus:
        """The schema status; ``TimeoutError`` or a kernos error when the store is not ready."""
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self.store.schema_status())
            self._probe.add_done_callback(_retrieve)
        return await asyncio.wait_for(asyncio.shield(self._probe), self.timeout)

    async def close(self) -> None:
        if self._probe is not None and not self._probe.done():
            self._probe.cancel()
            with contextlib.suppress(BaseException):
                await self._probe


def _retrieve(task: asyncio.Task[SchemaStatus]) -> None:
    if not task.cancelled():
        task.exception()


@dataclass(frozen=True, slots=True)
class Services:
    """The store client and its companions, for one running app."""

    client: Client
    keys: KeyCache
    feed: JournalFeed
    readiness: Readiness
    config: ApiConfig
    #: ``[[budgets]]`` of kernos.toml, as read when the app was created
    budgets: tuple[Budget, ...] = ()


class ApiState:
    """Holds the ``Services`` while the app runs (``app.state.kernos``)."""

    def __init__(self, config: ApiConfig) -> None:
        self.config = config
        self.services: Services | None = None

    def get(self) -> Services:
        if self.services is None:
            raise ProblemError(
                503,
                "the API is starting or stopping; retry shortly",
                kind="unavailable",
                headers={"Retry-After": "1"},
            )
        return self.services

    def keys(self) -> KeyCache | None:
        return None if self.services is None else self.services.keys


def services(request: Request) -> Services:
    state = request.app.state.kernos
    assert isinstance(state, ApiState)
    return state.get()


Svc = Annotated[Services, Depends(services)]
