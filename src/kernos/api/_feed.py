"""Following a run's journal live, for server-sent events.

The store has no push for journal appends: PostgreSQL's NOTIFY (``Store.wait_for_work``) is
sent when *work* appears (a run created, woken, released), not per appended event, and adding
one per append would put a notification, and PostgreSQL's commit-time lock on the
notification queue, on the hottest write path there is. ``wait_for_work`` also blocks a store
thread for its whole timeout. So the API polls, and polls cheaply:

* one poller per followed run, however many clients follow it (a dashboard open in fifty
  browsers costs one query per interval, not fifty), with the latest events kept in memory so
  that each client is served from there;
* ``load_journal(after_seq=...)`` reads only the new rows (an index range scan);
* every ``poll_fast`` seconds while events arrive, backing off by half again per empty poll to
  ``poll_slow`` while the run is quiet (a run waiting for a person costs two small queries a
  second); the run's state is read only when the journal is quiet, to notice that it ended.

A run ends in the same transaction that writes its final event, so once its state reads
terminal one more read of the journal has everything, and the stream can end.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from kernos.errors import InfrastructureError
from kernos.store import Event, Run, Store

log = logging.getLogger("kernos.api")

#: events kept in memory per followed run; a client further behind reads the store
WINDOW = 2048


class _Tail:
    """The end of one run's journal, polled while anyone follows it."""

    def __init__(self, store: Store, run_id: str, start: int, fast: float, slow: float) -> None:
        self.store = store
        self.run_id = run_id
        self.fast = fast
        self.slow = slow
        #: the highest seq read so far; ``recent`` holds every event after ``base`` up to it
        self.seq = start
        self.base = start
        self.recent: list[Event] = []
        self._seqs: list[int] = []
        self.ended = False
        self.error: BaseException | None = None
        self.followers = 0
        self._changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def since(self, after: int) -> list[Event] | None:
        """Events after ``after`` from memory, or None when memory no longer reaches back."""
        if after < self.base:
            return None
        return self.recent[bisect.bisect_right(self._seqs, after) :]

    async def wait(self, after: int, timeout: float) -> None:
        """Until there is news after ``after`` (or the run ended), or ``timeout`` passes."""
        changed = self._changed
        if self.seq > after or self.ended or self.error is not None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), timeout)

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _add(self, events: list[Event]) -> None:
        self.recent.extend(events)
        self._seqs.extend(e.seq for e in events)
        self.seq = events[-1].seq
        if len(self.recent) > WINDOW:
            cut = len(self.recent) - WINDOW // 2
            self.base = self._seqs[cut - 1]
            del self.recent[:cut]
            del self._seqs[:cut]

    async def poll(self) -> None:
        interval = self.fast
        checked_state = 0.0
        try:
            while True:
                events: list[Event] = []
                try:
                    events = await self.store.load_journal(self.run_id, after_seq=self.seq)
                    if events:
                        self._add(events)
                        self._notify()
                        interval = self.fast
                    elif time.monotonic() - checked_state >= self.slow or interval >= self.slow:
                        checked_state = time.monotonic()
                        run = await self.store.get_run(self.run_id)
                        if run.state.terminal:
                            await self._finish()
                            return
                except InfrastructureError as exc:
                    # a blip of the database must not end every stream: keep trying, slowly
                    log.warning("following run %s: %s", self.run_id, exc)
                    interval = self.slow
                if not events:
                    interval = min(interval * 1.5, self.slow)
                await asyncio.sleep(interval)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.error = exc
            self._notify()
            raise

    async def _finish(self) -> None:
        last = await self.store.load_journal(self.run_id, after_seq=self.seq)
        if last:
            self._add(last)
        self.ended = True
        self._notify()


class JournalFeed:
    """Live journal events of runs, for any number of followers."""

    def __init__(self, store: Store, *, fast: float, slow: float) -> None:
        self.store = store
        self.fast = fast
        self.slow = slow
        self._tails: dict[str, _Tail] = {}

    async def follow(
        self, run: Run, *, after: int = 0, keepalive: float = 15.0
    ) -> AsyncIterator[Event | None]:
        """The run's events after seq ``after``: those journaled so far, then each one as it
        is committed, ending after the run's final event. ``None`` is yielded when nothing
        happened for ``keepalive`` seconds (a chance to keep the connection alive)."""
        if run.state.terminal:
            for ev in await self.store.load_journal(run.id, after_seq=after):
                yield ev
            return
        tail = self._join(run.id, after)
        try:
            pos = after
            while True:
                batch = tail.since(pos)
                if batch is None:
                    batch = await self.store.load_journal(run.id, after_seq=pos)
                for ev in batch:
                    yield ev
                    pos = ev.seq
                if batch:
                    continue
                if tail.error is not None:
                    raise tail.error
                if tail.ended:
                    return
                before = tail.seq
                await tail.wait(pos, keepalive)
                if tail.seq == before and not tail.ended and tail.error is None:
                    yield None
        finally:
            self._leave(tail)

    def _join(self, run_id: str, after: int) -> _Tail:
        tail = self._tails.get(run_id)
        if tail is None or tail.error is not None:
            tail = _Tail(self.store, run_id, after, self.fast, self.slow)
            tail.task = asyncio.create_task(tail.poll(), name=f"kernos-api-tail-{run_id}")
            tail.task.add_done_callback(_reap)
            self._tails[run_id] = tail
        tail.followers += 1
        return tail

    def _leave(self, tail: _Tail) -> None:
        tail.followers -= 1
        if tail.followers > 0:
            return
        if self._tails.get(tail.run_id) is tail:
            del self._tails[tail.run_id]
        if tail.task is not None:
            tail.task.cancel()

    async def close(self) -> None:
        tasks = [t.task for t in self._tails.values() if t.task is not None]
        self._tails.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def followed(self) -> int:
        """How many runs are being polled now (for tests and metrics)."""
        return len(self._tails)


def _reap(task: asyncio.Task[None]) -> None:
    """Retrieve a poller's outcome so that asyncio does not report it as never retrieved (its
    followers have already been handed the error)."""
    if not task.cancelled():
        task.exception()
