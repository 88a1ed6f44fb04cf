"""What differs between SQLite and PostgreSQL, behind one small interface.

The store's SQL is written once with ``?`` placeholders; a dialect runs it on its own driver,
opens transactions its own way (SQLite: ``BEGIN IMMEDIATE`` takes the write lock up front;
PostgreSQL: row locks, ``SKIP LOCKED``, advisory locks) and translates driver errors into kernos
errors by their codes, never by their text.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from kernos.store._commit import Committer
from kernos.store._memory import Scalar

Row = tuple[Any, ...]
Params = Sequence[Any]


class WouldBlock(Exception):
    """A write could not start without waiting (another process holds the lock).

    Raised by SQLite's inline transaction so that a caller on an event loop hands the write to
    the committer's thread, which may wait, instead of blocking the loop.
    """


class Tx(Protocol):
    """A cursor inside an open transaction."""

    def execute(self, sql: str, params: Params = ()) -> int:
        """Run a statement; returns the affected row count."""
        ...

    def executemany(self, sql: str, rows: Sequence[Params]) -> None: ...

    def fetchall(self, sql: str, params: Params = ()) -> list[Row]: ...

    def fetchone(self, sql: str, params: Params = ()) -> Row | None: ...


@dataclass(frozen=True, slots=True)
class TextSearch:
    """A full-text query as the pieces of one SELECT over ``kernos_memories`` aliased ``m``:
    ``SELECT ..., {score} FROM {source} WHERE {condition} AND ...``. ``params`` belong to
    ``source`` then ``condition``, in that order; ``score`` takes none and is higher for a
    better match."""

    source: str
    condition: str
    score: str
    params: tuple[Any, ...]


class Dialect(Protocol):
    name: str
    display_url: str
    #: appended to a SELECT that must lock the rows it reads until the transaction ends
    lock_rows: str
    #: appended to a claim's candidate SELECT: lock, and skip rows another claim holds
    lock_skip: str
    #: appended inside the fencing sub-SELECT of an append (blocks a concurrent re-claim)
    lock_fence: str
    ddl_types: ClassVar[dict[str, str]]

    def write(self) -> AbstractContextManager[Tx]:
        """A transaction that will write: serialised against other writers where needed."""
        ...

    def read(self) -> AbstractContextManager[Tx]: ...

    def committer(self) -> Committer:
        """The group committer of appends, made the way that suits this database."""
        ...

    def now(self, tx: Tx) -> float:
        """The time (epoch seconds) on the clock that all workers of this database share."""
        ...

    def json_text(self, column: str, path: Sequence[str]) -> str:
        """SQL for the text at ``path`` in a JSON column (NULL when absent)."""
        ...

    def json_number(self, column: str, path: Sequence[str]) -> str:
        """SQL for the number at ``path`` in a JSON column (NULL when absent)."""
        ...

    def json_key_equals(self, column: str, key: str, value: Scalar) -> tuple[str, list[Any]]:
        """SQL (and its parameters) true when the JSON object in ``column`` holds ``key``
        equal to ``value``: numbers by value, never across JSON types. Nothing interpolated."""
        ...

    def text_search(self, terms: Sequence[str]) -> TextSearch:
        """Memories holding any of ``terms`` (literal words, at least one), ranked."""
        ...

    def lock_migrations(self, tx: Tx) -> None: ...

    def lock_agent(self, tx: Tx, agent: str) -> None:
        """Serialise claims of one agent across the fleet (for its concurrency limit)."""
        ...

    def lock_tenants(self, tx: Tx, tenants: Sequence[str]) -> None:
        """Serialise claims of these tenants across the fleet (for their concurrency limits),
        taking the locks in one global order so that two claims never wait on each other."""
        ...

    def table_exists(self, tx: Tx, table: str) -> bool: ...

    def notify(self, tx: Tx) -> None:
        """Tell sleeping workers that work may be ready (delivered at commit)."""
        ...

    def wait_for_notify(self, timeout: float) -> bool:
        """Block up to ``timeout`` for a notification; False when none came (or none exist)."""
        ...

    def translate(self, exc: BaseException) -> BaseException: ...

    def close(self) -> None: ...


def placeholders(count: int) -> str:
    return ", ".join("?" * count)


def iter_chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def json_path(path: Sequence[str]) -> str:
    """``("response", "cost")`` as ``$.response.cost``; keys are checked, never interpolated
    blindly into SQL."""
    for key in path:
        if not _KEY.match(key):
            raise ValueError(f"not a plain JSON key: {key!r}")
    return "$." + ".".join(path)
