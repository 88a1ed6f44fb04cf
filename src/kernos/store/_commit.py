"""Group commit: appends from many concurrent runs share one transaction and one fsync.

One thread owns one connection. While it commits a batch, new appends queue up; the next batch
takes all of them. No append waits on a timer, and none is acknowledged before its commit, so
durability is unchanged: a step counts as done only once its event is committed (issue #4, (b)).

Appends made in the same turn of an event loop are handed to the thread together (one queue put
per turn, scheduled with ``call_soon``): when a commit wakes a hundred runs, their next appends
are made in one turn and go out in one batch, rather than the thread grabbing the first and
committing it alone. Results return with one ``call_soon_threadsafe`` per batch and loop.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from kernos.store._dialect import Tx

_MAX_BATCH = 512

Row = tuple[Any, ...]


@dataclass(slots=True)
class Append:
    """One run's events, as insert parameters, and the future its caller awaits."""

    run_id: str
    token: int
    rows: Sequence[Row]
    loop: asyncio.AbstractEventLoop
    done: asyncio.Future[bool]


InsertBatch = Callable[[Tx, Sequence[Append]], list[bool]]


class GroupCommitter:
    """Commits fenced appends in batches on a dedicated thread.

    ``open_tx`` gives a transaction on the committer's own connection; ``insert`` writes a batch
    inside it and tells, per append, whether its fencing token still held (False → the caller
    looks closer). A failed transaction fails every append of its batch, with nothing written.
    """

    def __init__(
        self,
        open_tx: Callable[[], AbstractContextManager[Tx]],
        insert: InsertBatch,
        translate: Callable[[BaseException], BaseException],
        name: str,
    ) -> None:
        self._open_tx = open_tx
        self._insert = insert
        self._translate = translate
        self._queue: queue.SimpleQueue[list[Append] | None] = queue.SimpleQueue()
        self._gathering: dict[asyncio.AbstractEventLoop, list[Append]] = {}
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._started = False
        self._lock = threading.Lock()

    def submit(self, run_id: str, token: int, rows: Sequence[Row]) -> asyncio.Future[bool]:
        if not self._started:
            with self._lock:
                if not self._started:
                    self._thread.start()
                    self._started = True
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bool] = loop.create_future()
        turn = self._gathering.get(loop)
        if turn is None:
            turn = self._gathering[loop] = []
            loop.call_soon(self._hand_off, loop)
        turn.append(Append(run_id, token, rows, loop, done))
        return done

    def _hand_off(self, loop: asyncio.AbstractEventLoop) -> None:
        """End of the loop's turn: everything appended in it goes to the thread at once."""
        turn = self._gathering.pop(loop, None)
        if turn:
            self._queue.put(turn)

    def close(self) -> None:
        with self._lock:
            if not self._started:
                return
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = list(first)
            stop = False
            while len(batch) < _MAX_BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.extend(more)
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[Append]) -> None:
        outcomes: list[bool | BaseException]
        try:
            with self._open_tx() as tx:
                outcomes = list(self._insert(tx, batch))
        except BaseException as exc:  # every append of the batch fails with the same cause
            error = self._translate(exc)
            outcomes = [error] * len(batch)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Append, bool | BaseException]]] = {}
        for item, outcome in zip(batch, outcomes, strict=True):
            by_loop.setdefault(item.loop, []).append((item, outcome))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, items)
            except RuntimeError:  # that loop is closed: nobody waits any more
                continue


def _resolve(items: list[tuple[Append, bool | BaseException]]) -> None:
    for item, outcome in items:
        if item.done.done():  # its waiter was cancelled (the run's task was stopped)
            continue
        if isinstance(outcome, BaseException):
            item.done.set_exception(outcome)
        else:
            item.done.set_result(outcome)
