"""The journal feed behind server-sent events, on a store whose journal the test writes.

What HTTP tests cannot reach cheaply: a follower further behind than the poller's memory, a
database blip while following (the stream survives it), and a failure the poller cannot get
past (followers get the error instead of waiting forever).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import cast

import pytest
from _kernel_support import a_run

from kernos.api import _feed
from kernos.api._feed import JournalFeed
from kernos.errors import StoreUnavailable
from kernos.store import Event, Run, RunState, Store
from kernos.testing import wait_until


class FakeJournal:
    """The two store methods the feed uses, over a list the test appends to."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.state = RunState.RUNNING
        self.failures: list[BaseException] = []
        self.reads = 0

    def add(self, n: int) -> None:
        start = len(self.events)
        self.events += [
            Event(seq=start + i + 1, type="note", created_at=time.time()) for i in range(n)
        ]

    async def load_journal(self, run_id: str, *, after_seq: int = 0) -> list[Event]:
        self.reads += 1
        if self.failures:
            raise self.failures.pop(0)
        return [e for e in self.events if e.seq > after_seq]

    async def get_run(self, run_id: str) -> Run:
        return replace(RUN, state=self.state)


RUN = a_run(id="r1", lease_token=0, claims=0)


def seq_of(feed: JournalFeed) -> int:
    """The last seq the run's poller has read (-1 before it exists)."""
    tail = feed._tails.get("r1")
    return -1 if tail is None else tail.seq


async def collect(feed: JournalFeed, after: int = 0) -> list[int]:
    return [ev.seq async for ev in feed.follow(RUN, after=after, keepalive=5) if ev is not None]


async def test_a_follower_behind_the_pollers_memory_reads_the_store(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_feed, "WINDOW", 10)
    journal = FakeJournal()
    feed = JournalFeed(cast(Store, journal), fast=0.001, slow=0.01)
    journal.add(5)
    early = asyncio.create_task(collect(feed))
    await wait_until(lambda: feed.followed == 1 and seq_of(feed) == 5)
    journal.add(40)  # the poller keeps only the last few of these
    await wait_until(lambda: feed._tails["r1"].base > 3, what="the poller to forget seq 4")
    late = asyncio.create_task(collect(feed, after=3))
    journal.add(5)
    journal.state = RunState.COMPLETED
    assert await asyncio.wait_for(early, 5) == list(range(1, 51))
    assert await asyncio.wait_for(late, 5) == list(range(4, 51))
    assert feed.followed == 0


async def test_a_database_blip_does_not_end_the_stream() -> None:
    journal = FakeJournal()
    feed = JournalFeed(cast(Store, journal), fast=0.001, slow=0.01)
    follower = asyncio.create_task(collect(feed))
    journal.add(2)
    await wait_until(lambda: seq_of(feed) == 2)
    journal.failures = [StoreUnavailable("down"), StoreUnavailable("still down")]
    journal.add(2)
    await wait_until(lambda: not journal.failures, what="the poller to meet both failures")
    journal.state = RunState.FAILED
    assert await asyncio.wait_for(follower, 5) == [1, 2, 3, 4]


async def test_a_failure_the_poller_cannot_pass_reaches_every_follower() -> None:
    journal = FakeJournal()
    feed = JournalFeed(cast(Store, journal), fast=0.001, slow=0.01)
    journal.failures = [RuntimeError("a bug")]
    followers = [asyncio.create_task(collect(feed)) for _ in range(3)]
    for follower in followers:
        with pytest.raises(RuntimeError, match="a bug"):
            await asyncio.wait_for(follower, 5)
    assert feed.followed == 0


async def test_a_quiet_run_is_polled_less_often() -> None:
    """Slower machines poll less, never more: the bound holds under load."""
    journal = FakeJournal()
    feed = JournalFeed(cast(Store, journal), fast=0.001, slow=0.05)
    follower = asyncio.create_task(collect(feed))
    await asyncio.sleep(0.5)
    quiet_reads = journal.reads
    journal.state = RunState.COMPLETED
    await asyncio.wait_for(follower, 5)
    assert quiet_reads < 0.5 / 0.05 + 15  # backed off to slow, not 500 polls at fast
