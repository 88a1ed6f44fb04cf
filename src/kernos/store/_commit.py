"""Group commit: appends from many concurrent runs share one transaction and one fsync.

One thread owns one connection. While it commits a batch, new appends queue up; the next batch
takes all of them. No append waits on a timer, and none is acknowledged before its commit, so
durability is unchanged: a step counts as done only once its event is committed (issue #4, (b)).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass

from kernos.store._dialect import Tx
from kernos.store._records import Event

_MAX_BATCH = 512


@dataclass(slots=True)
class _Append:
    run_id: str
    token: int
    events: Sequence[Event]
    done: Future[bool]


class GroupCommitter:
    """Commits fenced appends in batches on a dedicated thread.

    ``open_tx`` gives a transaction on the committer's own connection; ``insert`` writes one
    append inside it and tells whether the fencing token still held (False → the caller raises
    ``LeaseLost``). A failed transaction fails every append of its batch, with nothing written.
    """

    def __init__(
        self,
        open_tx: Callable[[], AbstractContextManager[Tx]],
        insert: Callable[[Tx, str, int, Sequence[Event]], bool],
        translate: Callable[[BaseException], BaseException],
        name: str,
    ) -> None:
        self._open_tx = open_tx
        self._insert = insert
        self._translate = translate
        self._queue: queue.SimpleQueue[_Append | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._started = False
        self._lock = threading.Lock()

    def submit(self, run_id: str, token: int, events: Sequence[Event]) -> Future[bool]:
        with self._lock:
            if not self._started:
                self._thread.start()
                self._started = True
        done: Future[bool] = Future()
        self._queue.put(_Append(run_id, token, events, done))
        return done

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
            batch = [first]
            stop = False
            while len(batch) < _MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[_Append]) -> None:
        # An append whose waiter was cancelled (its run's task stopped) is dropped; the rest
        # can no longer be cancelled, so setting their results below cannot raise.
        batch = [a for a in batch if a.done.set_running_or_notify_cancel()]
        if not batch:
            return
        try:
            with self._open_tx() as cur:
                results = [self._insert(cur, a.run_id, a.token, a.events) for a in batch]
        except BaseException as exc:  # every append of the batch fails with the same cause
            error = self._translate(exc)
            for item in batch:
                item.done.set_exception(error)
            return
        for item, ok in zip(batch, results, strict=True):
            item.done.set_result(ok)
