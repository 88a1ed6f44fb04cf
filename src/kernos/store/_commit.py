"""Group commit: appends of concurrent runs share one commit, and none is acknowledged before it.

No append waits on a timer: while one commit is in flight the next appends gather, and the next
commit takes all of them. Durability is unchanged: a step counts as done only once its event is
committed (issue #4, (b)). Two implementations, chosen by the dialect: a thread with an inline
fast path for SQLite (``_thread_commit``), an asyncio task for PostgreSQL (``_loop_commit``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

Row = tuple[Any, ...]


@dataclass(slots=True)
class Append:
    """One run's events, as insert parameters, and the future its caller awaits."""

    run_id: str
    token: int
    rows: Sequence[Row]
    loop: asyncio.AbstractEventLoop | None  # None: committed synchronously (commit_now)
    done: asyncio.Future[bool] | None


@dataclass(frozen=True, slots=True)
class CommitStats:
    """What the committer did since it started: for metrics, and for tests of grouping."""

    #: commits (statements or transactions) made by the committer, inline ones included
    commits: int
    #: appends they carried; appends / commits is the grouping factor
    appends: int
    #: of ``commits``, those made on the caller's thread (a lone run, SQLite)
    inline: int


class Committer(Protocol):
    """Commits fenced appends; each resolves to whether its fencing token still held."""

    def commit_now(self, run_id: str, token: int, rows: Sequence[Row]) -> bool | None:
        """Commit synchronously if that is cheaper than submitting; None when not done."""
        ...

    def submit(self, run_id: str, token: int, rows: Sequence[Row]) -> asyncio.Future[bool]: ...

    def stats(self) -> CommitStats: ...

    async def aclose(self) -> None: ...


def resolve(items: Sequence[tuple[Append, bool | BaseException]]) -> None:
    """Hand each append its outcome (on the loop that awaits it)."""
    for item, outcome in items:
        if item.done is None or item.done.done():  # committed inline, or its waiter is gone
            continue
        if isinstance(outcome, BaseException):
            item.done.set_exception(outcome)
        else:
            item.done.set_result(outcome)
