"""The SQLite dialect: one file in WAL mode, safe for several worker processes on one machine.

Writers take the database's write lock at ``BEGIN IMMEDIATE``, so every write transaction is
serialised across threads and processes; that is what makes claiming safe without row locks.
``synchronous=FULL``: a commit is on disk before it is acknowledged.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from kernos.errors import ConfigError, StoreFull, StoreUnavailable
from kernos.store._commit import Committer
from kernos.store._dialect import Params, Row, TextSearch, Tx, WouldBlock, json_path
from kernos.store._fenced import insert_batch
from kernos.store._memory import Scalar, fts5_query
from kernos.store._thread_commit import ThreadCommitter

_BUSY_TIMEOUT_MS = 30_000
_FULL_CODES = {sqlite3.SQLITE_FULL}
_UNAVAILABLE_CODES = {
    sqlite3.SQLITE_BUSY,
    sqlite3.SQLITE_LOCKED,
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_READONLY,
}


class _Cursor:
    __slots__ = ("_cur",)

    def __init__(self, cur: sqlite3.Cursor) -> None:
        self._cur = cur

    def execute(self, sql: str, params: Params = ()) -> int:
        self._cur.execute(sql, params)
        return self._cur.rowcount

    def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        self._cur.executemany(sql, rows)

    def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return self._cur.execute(sql, params).fetchall()

    def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        row: Row | None = self._cur.execute(sql, params).fetchone()
        return row


class SqliteDialect:
    name = "sqlite"
    lock_rows = ""
    lock_skip = ""
    lock_fence = ""
    ddl_types: ClassVar[dict[str, str]] = {
        "float": "REAL",
        "bigint": "INTEGER",
        "blob": "BLOB",
        "serial_pk": "INTEGER PRIMARY KEY AUTOINCREMENT",
    }

    def __init__(self, path: str, *, max_page_count: int | None = None) -> None:
        if path in ("", ":memory:"):
            raise ConfigError(
                "an in-memory SQLite database cannot be shared by kernos' connections and "
                "workers; give a file path, e.g. sqlite:///.kernos/kernos.db"
            )
        self.path = Path(path)
        self.display_url = f"sqlite:///{path}"
        self._max_page_count = max_page_count
        self._pool: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._committer: sqlite3.Connection | None = None
        self._inline: sqlite3.Connection | None = None
        # Writers of this process queue here, woken at once, rather than in SQLite's busy
        # handler, which sleeps 1-100 ms between tries: with a committer, an inline writer and a
        # pool all writing, that sleep cost more than the commits. Other processes still meet
        # the busy handler.
        self._write_lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the directory of the SQLite database {self.path}: {exc} "
                f"(set KERNOS_DATABASE_URL=sqlite:///a/writable/path.db)"
            ) from exc

    def _connect(self, busy_timeout_ms: int = _BUSY_TIMEOUT_MS) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30
            )
            conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            self._enable_wal(conn)
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=OFF")
            if self._max_page_count is not None:
                conn.execute(f"PRAGMA max_page_count={int(self._max_page_count)}")
        except sqlite3.Error as exc:
            raise self.translate(exc) from exc
        with self._lock:
            self._all.append(conn)
        return conn

    @staticmethod
    def _enable_wal(conn: sqlite3.Connection) -> None:
        """Switch to WAL; processes opening a new file at once may see SQLITE_BUSY here,
        which the busy handler does not cover, so retry for a while."""
        deadline = time.monotonic() + _BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorcode", 0) & 0xFF != sqlite3.SQLITE_BUSY:
                    raise
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _acquire(self) -> sqlite3.Connection:
        try:
            return self._pool.get_nowait()
        except queue.Empty:
            return self._connect()

    @contextmanager
    def _transaction(self, conn: sqlite3.Connection, begin: str) -> Iterator[Tx]:
        try:
            conn.execute(begin)
            try:
                yield _Cursor(conn.cursor())
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise self.translate(exc) from exc

    @contextmanager
    def write(self) -> Iterator[Tx]:
        conn = self._acquire()
        try:
            with self._write_lock, self._transaction(conn, "BEGIN IMMEDIATE") as tx:
                yield tx
        finally:
            self._pool.put(conn)

    @contextmanager
    def read(self) -> Iterator[Tx]:
        conn = self._acquire()
        try:
            with self._transaction(conn, "BEGIN") as tx:
                yield tx
        finally:
            self._pool.put(conn)

    def committer(self) -> Committer:
        """A thread, and inline commits for a lone run (a local file: a commit is an fsync)."""
        return ThreadCommitter(
            self._committer_tx,
            lambda tx, batch: insert_batch(tx, batch, self.lock_fence),
            self.translate,
            "kernos-commit",
            inline_tx=self._inline_tx,
        )

    @contextmanager
    def _committer_tx(self) -> Iterator[Tx]:
        if self._committer is None:
            self._committer = self._connect()
        with self._write_lock, self._transaction(self._committer, "BEGIN IMMEDIATE") as tx:
            yield tx

    @contextmanager
    def _inline_tx(self) -> Iterator[Tx]:
        """On a connection that never waits for the write lock: a lone append commits on the
        event loop's thread (no hand-off to the committer thread and back, which costs as much
        as the commit itself), unless another process is writing."""
        if not self._write_lock.acquire(blocking=False):
            raise WouldBlock("another write of this process is in progress")
        try:
            if self._inline is None:
                self._inline = self._connect(busy_timeout_ms=0)
            try:
                self._inline.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY:
                    raise WouldBlock(str(exc)) from exc
                raise self.translate(exc) from exc
            try:
                yield _Cursor(self._inline.cursor())
                self._inline.execute("COMMIT")
            except BaseException as exc:
                if self._inline.in_transaction:
                    self._inline.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise self.translate(exc) from exc
                raise
        finally:
            self._write_lock.release()

    def set_max_page_count(self, pages: int | None) -> None:
        """Cap the file's size (tests use it to fill the disk); None lifts the cap."""
        self._max_page_count = pages
        value = pages if pages is not None else 1073741823
        with self._lock:
            conns = list(self._all)
        for conn in conns:
            conn.execute(f"PRAGMA max_page_count={int(value)}")

    def now(self, tx: Tx) -> float:
        """One machine, one clock: every SQLite worker shares this host's."""
        return time.time()

    def json_text(self, column: str, path: Sequence[str]) -> str:
        return f"json_extract({column}, '{json_path(path)}')"

    def json_number(self, column: str, path: Sequence[str]) -> str:
        return f"CAST(json_extract({column}, '{json_path(path)}') AS REAL)"

    def json_key_equals(self, column: str, key: str, value: Scalar) -> tuple[str, list[Any]]:
        """``json_type`` tells JSON's types apart (``true`` from ``1``, ``"1"`` from ``1``),
        which ``json_extract`` alone does not; the path is a bound parameter."""
        path = f'$."{key}"'
        if value is None:
            return f"json_type({column}, ?) = 'null'", [path]
        if isinstance(value, bool):
            return f"json_type({column}, ?) = ?", [path, "true" if value else "false"]
        kinds = "'text'" if isinstance(value, str) else "'integer', 'real'"
        return (
            f"json_type({column}, ?) IN ({kinds}) AND json_extract({column}, ?) = ?",
            [path, path, value],
        )

    def text_search(self, terms: Sequence[str]) -> TextSearch:
        """FTS5 drives the query (its index finds the matches), joined to the rows by key;
        ``bm25`` is lower for a better match, so the score is its negation."""
        return TextSearch(
            source="kernos_memories_fts "
            "JOIN kernos_memories m ON m.seq = kernos_memories_fts.rowid",
            condition="kernos_memories_fts MATCH ?",
            score="-bm25(kernos_memories_fts)",
            params=(fts5_query(terms),),
        )

    def lock_migrations(self, tx: Tx) -> None:
        """``BEGIN IMMEDIATE`` already holds the database's only write lock."""

    def lock_agent(self, tx: Tx, agent: str) -> None:
        """Claims run under the write lock, which already serialises them."""

    def lock_tenants(self, tx: Tx, tenants: Sequence[str]) -> None:
        """Claims run under the write lock, which already serialises them."""

    def table_exists(self, tx: Tx, table: str) -> bool:
        row = tx.fetchone("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (table,))
        return row is not None

    def notify(self, tx: Tx) -> None:
        """SQLite has no notifications; workers poll (and wake at once in-process)."""

    def wait_for_notify(self, timeout: float) -> bool:
        return False

    def translate(self, exc: BaseException) -> BaseException:
        if not isinstance(exc, sqlite3.Error):
            return exc
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None:
            code &= 0xFF  # primary result code of an extended code
        if code in _FULL_CODES:
            return StoreFull(
                f"the SQLite database {self.path} is full ({exc}); nothing of the failed write "
                f"was kept. Free disk space (or raise max_page_count) and retry."
            )
        if code in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
            return ConfigError(
                f"{self.path} is not a usable kernos database ({exc}); point "
                f"KERNOS_DATABASE_URL at a kernos SQLite file, or at a new path to create one"
            )
        if code in _UNAVAILABLE_CODES:
            return StoreUnavailable(
                f"the SQLite database {self.path} is not usable right now ({exc}); check the "
                f"file's permissions and that the disk is healthy, then retry"
            )
        return exc

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
        self._committer = None
        self._inline = None
