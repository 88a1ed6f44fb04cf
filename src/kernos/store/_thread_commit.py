"""Group commit on a thread (SQLite): appends of concurrent runs share a transaction and an fsync.

One thread owns one connection. While it commits a batch, new appends queue up; the next batch
takes all of them. No append waits on a timer, and none is acknowledged before its commit, so
durability is unchanged: a step counts as done only once its event is committed (issue #4, (b)).

Appends made in the same turn of an event loop are handed to the thread together (one queue put
per turn, scheduled with ``call_soon``): when a commit wakes a hundred runs, their next appends
are made in one turn and go out in one batch, rather than the thread grabbing the first and
committing it alone. Results return with one ``call_soon_threadsafe`` per batch and loop.

A turn that holds a single append, while the thread is idle, commits on the loop's own thread
when the dialect allows it (SQLite, a local file): the two thread hand-offs cost about as much
as the commit itself, and with one append there is nothing to group. It never waits for a lock
(``WouldBlock`` sends it to the thread), and a slow commit (a disk that stalls) turns the inline
path off for a while, so the loop is blocked at most for one commit's time.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

from kernos.store._commit import Append, CommitStats, resolve
from kernos.store._dialect import Row, Tx, WouldBlock

_MAX_BATCH = 512
#: an inline commit slower than this sends the next ones to the thread for _INLINE_PAUSE
_INLINE_SLOW = 0.005
_INLINE_PAUSE = 2.0

InsertBatch = Callable[[Tx, Sequence[Append]], list[bool]]


class ThreadCommitter:
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
        inline_tx: Callable[[], AbstractContextManager[Tx]] | None = None,
    ) -> None:
        self._open_tx = open_tx
        self._inline_tx = inline_tx
        self._inline_after = 0.0
        # held while a batch commits, on the thread or inline: one writer per committer
        self._busy = threading.Lock()
        self._insert = insert
        self._translate = translate
        self._queue: queue.SimpleQueue[list[Append] | None] = queue.SimpleQueue()
        self._gathering: dict[asyncio.AbstractEventLoop, list[Append]] = {}
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._started = False
        self._lock = threading.Lock()
        self._last_run: str | None = None
        self._commits = self._appends = self._inline = 0

    def commit_now(self, run_id: str, token: int, rows: Sequence[Row]) -> bool | None:
        """Commit a run's append here, synchronously, when that run is appending alone.

        "Alone": its previous append was also the last one made, and nothing else is waiting
        to commit, so there is nothing to group it with. Saves the loop turns and the future
        of ``submit``. None when not eligible: the caller submits instead. The caller must
        still yield to its loop now and then (see ``SqlStore.append``).
        """
        previous, self._last_run = self._last_run, run_id
        if self._inline_tx is None or previous != run_id or self._gathering:
            return None
        outcome = self._try_inline(Append(run_id, token, rows, None, None))
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def submit(self, run_id: str, token: int, rows: Sequence[Row]) -> asyncio.Future[bool]:
        if not self._started:
            with self._lock:
                if not self._started:
                    self._thread.start()
                    self._started = True
        self._last_run = run_id
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
        if not turn:
            return
        if len(turn) == 1 and self._inline_tx is not None:
            outcome = self._try_inline(turn[0])
            if outcome is not None:
                resolve([(turn[0], outcome)])
                return
        self._queue.put(turn)

    def _try_inline(self, item: Append) -> bool | BaseException | None:
        """Commit one append on this thread; None if it must go to the committer thread."""
        if time.monotonic() < self._inline_after or not self._queue.empty():
            return None
        if not self._busy.acquire(blocking=False):
            return None
        assert self._inline_tx is not None
        start = time.monotonic()
        outcome: bool | BaseException
        try:
            with self._inline_tx() as tx:
                outcome = self._insert(tx, [item])[0]
        except WouldBlock:
            return None
        except BaseException as exc:
            outcome = self._translate(exc)
        finally:
            self._busy.release()
        self._commits += 1
        self._appends += 1
        self._inline += 1
        if time.monotonic() - start > _INLINE_SLOW:
            self._inline_after = time.monotonic() + _INLINE_PAUSE
        return outcome

    def stats(self) -> CommitStats:
        return CommitStats(self._commits, self._appends, self._inline)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

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
            with self._busy, self._open_tx() as tx:
                outcomes = list(self._insert(tx, batch))
        except BaseException as exc:  # every append of the batch fails with the same cause
            error = self._translate(exc)
            outcomes = [error] * len(batch)
        self._commits += 1
        self._appends += len(batch)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Append, bool | BaseException]]] = {}
        for item, outcome in zip(batch, outcomes, strict=True):
            if item.loop is not None:
                by_loop.setdefault(item.loop, []).append((item, outcome))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(resolve, items)
            except RuntimeError:  # that loop is closed: nobody waits any more
                continue
