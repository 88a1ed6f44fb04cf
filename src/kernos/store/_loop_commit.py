"""Group commit as an asyncio task (PostgreSQL): no thread between a run and its commit.

A commit to a server is a network round trip; with a committer thread, each also paid two
thread hand-offs (queue, wake, GIL, and back), as much again as the round trip. Here each event
loop has one task and one connection (autocommit): appends made while a statement is in flight
gather, and the next statement carries all of them, committed by the server as one statement.
The loop is never blocked: it awaits the socket like any other I/O. The dialect's ``fetch`` owns
the connection, its deadline (io_timeout) and its replacement after a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from kernos.errors import StoreUnavailable
from kernos.store._commit import Append, CommitStats, resolve
from kernos.store._dialect import Params, Row
from kernos.store._fenced import FencedInsert

#: runs ``sql`` as one autocommitted statement on this loop's committer connection
Fetch = Callable[[str, Params], Awaitable[list[Row]]]
Statements = Callable[[Sequence[Append]], list[FencedInsert]]


@dataclass(slots=True)
class _LoopState:
    pending: list[Append] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class LoopCommitter:
    """Commits fenced appends in batches from a task on the caller's event loop."""

    def __init__(
        self,
        fetch: Fetch,
        statements: Statements,
        translate: Callable[[BaseException], BaseException],
        close_loop: Callable[[], Awaitable[None]],
    ) -> None:
        self._fetch = fetch
        self._statements = statements
        self._translate = translate
        self._close_loop = close_loop
        self._loops: dict[asyncio.AbstractEventLoop, _LoopState] = {}
        self._commits = self._appends = 0

    def commit_now(self, run_id: str, token: int, rows: Sequence[Row]) -> bool | None:
        """Never: a round trip must not block the loop."""
        return None

    def submit(self, run_id: str, token: int, rows: Sequence[Row]) -> asyncio.Future[bool]:
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None or state.task is None or state.task.done():
            state = self._loops[loop] = _LoopState()
            state.task = loop.create_task(self._run(state), name="kernos-commit")
        done: asyncio.Future[bool] = loop.create_future()
        state.pending.append(Append(run_id, token, rows, loop, done))
        state.wake.set()
        return done

    async def _run(self, state: _LoopState) -> None:
        try:
            while True:
                await state.wake.wait()
                state.wake.clear()
                batch, state.pending = state.pending, []
                if batch:
                    await self._commit(batch)
        except asyncio.CancelledError:
            closed = StoreUnavailable("the store was closed before this append was committed")
            resolve([(a, closed) for a in state.pending])
            state.pending = []
            raise

    async def _commit(self, batch: list[Append]) -> None:
        try:
            for statement in self._statements(batch):
                outcomes: list[bool] | list[BaseException]
                try:
                    rows = await self._fetch(statement.sql, statement.params)
                    outcomes = statement.outcomes(rows)
                except Exception as exc:  # every append of the statement fails with its cause
                    outcomes = [self._translate(exc)] * len(statement.appends)
                self._commits += 1
                self._appends += len(statement.appends)
                resolve(list(zip(statement.appends, outcomes, strict=True)))
        except asyncio.CancelledError:
            closed = StoreUnavailable("the store was closed while this append was committing")
            resolve([(a, closed) for a in batch])  # those not resolved yet
            raise

    def stats(self) -> CommitStats:
        return CommitStats(self._commits, self._appends, 0)

    async def aclose(self) -> None:
        """Stop this loop's task (failing what it had not committed) and close its connection."""
        loop = asyncio.get_running_loop()
        state = self._loops.pop(loop, None)
        if state is not None and state.task is not None:
            state.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await state.task
        await self._close_loop()
