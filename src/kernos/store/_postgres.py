"""The PostgreSQL dialect: the distributed engine (DESIGN.md, Storage).

Many workers on many hosts claim with ``FOR UPDATE SKIP LOCKED`` and sleep on ``LISTEN``; an
append holds ``FOR KEY SHARE`` on its run's row, so a re-claim (which locks the row ``FOR
UPDATE``) cannot slip between an append's fencing check and its commit.

A database that stops answering must not hang a worker: TCP keepalives and ``tcp_user_timeout``
catch a dead peer, but a hung server (or a proxy that stopped forwarding) still acknowledges
every packet, so each operation also has a deadline of its own, ``io_timeout`` (pgjdbc's
``socketTimeout``): past it the connection is cut, the caller gets ``StoreUnavailable``, and the
server, told by ``idle_in_transaction_session_timeout``, drops the transaction the cut left
open, with its row locks, so that other workers can take the runs over. ``io_timeout`` may be
set in the URL as ``?kernos_io_timeout=SECONDS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import select
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import errors as pgerrors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

from kernos.errors import ConfigError, InvalidInput, StoreFull, StoreUnavailable
from kernos.store._commit import Committer
from kernos.store._dialect import Params, Row, TextSearch, Tx, json_path
from kernos.store._fenced import unnest_insert
from kernos.store._loop_commit import LoopCommitter
from kernos.store._memory import Scalar

CHANNEL = "kernos_wake"
#: the URL query parameter that sets ``io_timeout``; kernos' own, removed before libpq sees it
IO_TIMEOUT_PARAM = "kernos_io_timeout"
DEFAULT_IO_TIMEOUT = 30.0
#: the text search configuration of memories' tsvector column (migration 4); queries must match
TEXT_CONFIG = "english"
#: a committer connection idle longer than this (seconds) is checked before its next statement
_VALIDATE_AFTER_IDLE = 0.5


@lru_cache(maxsize=512)
def _pg(sql: str) -> str:
    return sql.replace("?", "%s")


class _Cursor:
    __slots__ = ("_cur",)

    def __init__(self, cur: psycopg.Cursor[Any]) -> None:
        self._cur = cur

    def execute(self, sql: str, params: Params = ()) -> int:
        self._cur.execute(_pg(sql), params)
        return self._cur.rowcount

    def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        self._cur.executemany(_pg(sql), rows)

    def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return self._cur.execute(_pg(sql), params).fetchall()

    def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        return self._cur.execute(_pg(sql), params).fetchone()


def _redact(url: str) -> str:
    try:
        parts = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://<unparseable url>"
    host = str(parts.get("host") or "localhost")
    port = str(parts.get("port") or "5432")
    user = str(parts.get("user") or "")
    db = str(parts.get("dbname") or "")
    return f"postgresql://{user + '@' if user else ''}{host}:{port}/{db}"


def _split_io_timeout(url: str) -> tuple[str, float | None]:
    """Take ``kernos_io_timeout`` out of the URL's query (libpq rejects unknown parameters)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    values = [v for k, v in query if k == IO_TIMEOUT_PARAM]
    if not values:
        return url, None
    try:
        seconds = float(values[-1])
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ConfigError(
            f"{IO_TIMEOUT_PARAM}={values[-1]!r} in the database URL is not a positive number of "
            f"seconds; e.g. postgresql://host/db?{IO_TIMEOUT_PARAM}=10"
        )
    rest = urlencode([(k, v) for k, v in query if k != IO_TIMEOUT_PARAM])
    return urlunsplit(parts._replace(query=rest)), seconds


class _Watchdog:
    """Cuts the connection of an operation that outlived its deadline.

    One thread for all connections (an operation costs a dict insert and delete). Cutting is a
    ``shutdown()`` of the socket: the driver, blocked on it, wakes with "server closed the
    connection", marks the connection broken, and the pool discards it. The lock held while
    cutting and while disarming guarantees a connection is never cut after its operation ended
    (so never a socket number reused by something else).
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._cond = threading.Condition()
        self._armed: dict[int, tuple[float, psycopg.Connection[Any]]] = {}
        self._next = 0
        self._thread: threading.Thread | None = None
        self._closed = False

    @contextmanager
    def guard(self, conn: psycopg.Connection[Any]) -> Iterator[_Guard]:
        guard = _Guard()
        with self._cond:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._loop, name="kernos-pg-watchdog", daemon=True
                )
                self._thread.start()
            self._next += 1
            key = self._next
            self._armed[key] = (time.monotonic() + self.timeout, conn)
            self._cond.notify()
        try:
            yield guard
        finally:
            with self._cond:
                if self._armed.pop(key, None) is None:
                    guard.fired = True

    def _loop(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                expired = [k for k, (deadline, _) in self._armed.items() if deadline <= now]
                for key in expired:
                    _, conn = self._armed.pop(key)
                    _cut(conn)
                wait = min((d for d, _ in self._armed.values()), default=now + 60.0) - now
                self._cond.wait(timeout=max(wait, 0.01))

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)


class _Guard:
    __slots__ = ("fired",)

    def __init__(self) -> None:
        self.fired = False


def _cut(conn: psycopg.Connection[Any]) -> None:
    try:
        fd = os.dup(conn.pgconn.socket)
    except (OSError, psycopg.OperationalError):
        return  # closed already: nothing is waiting on it
    with socket.socket(fileno=fd) as sock:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _has_input(conn: psycopg.AsyncConnection[Any]) -> bool:
    """Whether an idle connection has something to read: the server's goodbye, or EOF."""
    try:
        readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    except (OSError, ValueError, psycopg.OperationalError):
        return True
    return bool(readable)


def _finish(conn: psycopg.AsyncConnection[Any]) -> None:
    """Close a connection's socket without a round trip (it may be stalled or dead)."""
    with contextlib.suppress(Exception):
        conn.pgconn.finish()


class PostgresDialect:
    name = "postgresql"
    lock_rows = " FOR UPDATE"
    lock_skip = " FOR UPDATE SKIP LOCKED"
    lock_fence = " FOR KEY SHARE"
    ddl_types: ClassVar[dict[str, str]] = {
        "float": "DOUBLE PRECISION",
        "bigint": "BIGINT",
        "blob": "BYTEA",
        "serial_pk": "BIGSERIAL PRIMARY KEY",
    }

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 8,
        connect_timeout: float = 10.0,
        io_timeout: float | None = None,
    ) -> None:
        """``io_timeout``: seconds an operation (one transaction) may go unanswered before its
        connection is cut; the URL's ``kernos_io_timeout`` overrides the default of 30."""
        url, url_io_timeout = _split_io_timeout(url)
        io_timeout = io_timeout or url_io_timeout or DEFAULT_IO_TIMEOUT
        self.display_url = _redact(url)
        try:
            params = conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            raise ConfigError(
                f"KERNOS_DATABASE_URL is not a valid PostgreSQL URL ({exc}); expected "
                f"postgresql://user@host:5432/dbname"
            ) from exc
        # Connecting is an operation too: a server that accepts but never answers must not
        # hold a caller longer than io_timeout (libpq counts whole seconds, 2 at least).
        connect_s = max(2, math.ceil(min(connect_timeout, io_timeout)))
        params.setdefault("connect_timeout", str(connect_s))
        params.setdefault("application_name", "kernos")
        # Notice a dead server or a stalled network within seconds rather than hours.
        params.setdefault("keepalives", "1")
        params.setdefault("keepalives_idle", "5")
        params.setdefault("keepalives_interval", "2")
        params.setdefault("keepalives_count", "3")
        # Unacknowledged data (a network that black-holes) fails the connection in io_timeout.
        params.setdefault("tcp_user_timeout", str(int(io_timeout * 1000)))
        # A transaction a cut connection left open is dropped by the server in io_timeout, with
        # its row locks: a stalled worker's runs must not stay locked against a takeover.
        options = str(params.get("options") or "")
        if "idle_in_transaction_session_timeout" not in options:
            params["options"] = (
                f"{options} -c idle_in_transaction_session_timeout={int(io_timeout * 1000)}"
            ).strip()
        self._watchdog = _Watchdog(io_timeout)
        self._conninfo = make_conninfo("", **params)
        self._pool = ConnectionPool(
            self._conninfo,
            min_size=1,
            max_size=pool_size,
            open=False,
            timeout=max(io_timeout, float(connect_s)),
            check=self._check,
            name="kernos",
        )
        self._pool_opened = False
        self._open_lock = threading.Lock()
        # the group committer's connection on each event loop (see ``committer``)
        self._loop_conns: dict[asyncio.AbstractEventLoop, psycopg.AsyncConnection[Any]] = {}
        self._loop_used: dict[asyncio.AbstractEventLoop, float] = {}
        self._listener: psycopg.Connection[Any] | None = None
        self._listen_lock = threading.Lock()

    def _open_pool(self) -> ConnectionPool:
        with self._open_lock:
            if not self._pool_opened:
                # One direct connection first: a refused or misconfigured server fails at
                # once with libpq's own reason, instead of after the pool's timeout.
                try:
                    psycopg.connect(self._conninfo).close()
                except psycopg.Error as exc:
                    raise self.translate(exc) from exc
                try:
                    self._pool.open(wait=True, timeout=self._pool.timeout)
                except PoolTimeout as exc:
                    raise self.translate(exc) from exc
                self._pool_opened = True
        return self._pool

    @property
    def io_timeout(self) -> float:
        return self._watchdog.timeout

    def _check(self, conn: psycopg.Connection[Any]) -> None:
        """The pool's check of a connection it hands out, under the same deadline."""
        with self._watchdog.guard(conn):
            ConnectionPool.check_connection(conn)

    def _timed_out(self, guard: _Guard) -> StoreUnavailable | None:
        if not guard.fired:
            return None
        return StoreUnavailable(
            f"the PostgreSQL server at {self.display_url} did not answer within "
            f"{self.io_timeout:g}s (kernos_io_timeout); the connection was closed and the "
            f"transaction's outcome is unknown to this process: retry once the server answers"
        )

    @contextmanager
    def write(self) -> Iterator[Tx]:
        pool = self._open_pool()
        guard = _Guard()
        try:
            with pool.connection() as conn, self._watchdog.guard(conn) as guard:
                with conn.cursor() as cur:
                    yield _Cursor(cur)
                conn.commit()  # inside the guard: a commit can hang like any statement
        except (psycopg.Error, PoolTimeout) as exc:
            raise self._timed_out(guard) or self.translate(exc) from exc

    read = write

    def committer(self) -> Committer:
        """An asyncio task per event loop, on a connection of its own (see ``_loop_commit``)."""
        return LoopCommitter(
            self._fetch_on_loop,
            lambda batch: unnest_insert(batch, self.lock_fence),
            self.translate,
            self._close_loop_connection,
        )

    async def _fetch_on_loop(self, sql: str, params: Params) -> list[Row]:
        """One autocommitted statement on this loop's committer connection, within io_timeout.

        A statement that fails on a dead connection has an unknown outcome (the server may
        have committed it), so the connection is made sure of *before* the statement: replaced
        if the server said goodbye on its idle socket, and, after an idle spell, checked with
        one round trip (what a middlebox that dropped the flow answers with a reset). Back-to-back
        appends skip the check (HikariCP's bypass window). A statement that still fails or
        times out loses its connection, and the caller learns ``StoreUnavailable``.
        """
        loop = asyncio.get_running_loop()
        conn = self._loop_conns.get(loop)
        try:
            async with asyncio.timeout(self.io_timeout):
                conn = await self._usable_loop_connection(loop, conn)
                cur = await conn.execute(_pg(sql), params)
                rows = await cur.fetchall()
                self._loop_used[loop] = time.monotonic()
                return rows
        except TimeoutError as exc:
            self._drop_loop_connection(loop)
            raise StoreUnavailable(
                f"the PostgreSQL server at {self.display_url} did not answer within "
                f"{self.io_timeout:g}s (kernos_io_timeout); the connection was closed and the "
                f"append's outcome is unknown to this process: retry once the server answers"
            ) from exc
        except psycopg.Error as exc:
            if conn is not None and (conn.broken or conn.closed):
                self._drop_loop_connection(loop)
            raise self.translate(exc) from exc

    async def _usable_loop_connection(
        self, loop: asyncio.AbstractEventLoop, conn: psycopg.AsyncConnection[Any] | None
    ) -> psycopg.AsyncConnection[Any]:
        if conn is not None and not (conn.closed or conn.broken or _has_input(conn)):
            if time.monotonic() - self._loop_used.get(loop, 0.0) < _VALIDATE_AFTER_IDLE:
                return conn
            try:
                await conn.execute("SELECT 1")
                return conn
            except psycopg.OperationalError:
                pass  # dead: nothing of the statement was sent on it
        if conn is not None:
            _finish(conn)
        conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
        self._loop_conns[loop] = conn
        return conn

    def _drop_loop_connection(self, loop: asyncio.AbstractEventLoop) -> None:
        conn = self._loop_conns.pop(loop, None)
        self._loop_used.pop(loop, None)
        if conn is not None:
            _finish(conn)

    async def _close_loop_connection(self) -> None:
        conn = self._loop_conns.pop(asyncio.get_running_loop(), None)
        self._loop_used.pop(asyncio.get_running_loop(), None)
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                async with asyncio.timeout(min(self.io_timeout, 5.0)):
                    await conn.close()
            _finish(conn)

    def now(self, tx: Tx) -> float:
        """The server's clock: workers on hosts whose clocks disagree still agree on leases."""
        row = tx.fetchone("SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8")
        assert row is not None
        return float(row[0])

    def json_text(self, column: str, path: Sequence[str]) -> str:
        json_path(path)  # validates the keys
        return f"({column}::jsonb #>> '{{{','.join(path)}}}')"

    def json_number(self, column: str, path: Sequence[str]) -> str:
        return f"CAST({self.json_text(column, path)} AS DOUBLE PRECISION)"

    def json_key_equals(self, column: str, key: str, value: Scalar) -> tuple[str, list[Any]]:
        """jsonb equality: by value for numbers, never across JSON types."""
        return f"({column}::jsonb -> ?::text) = ?::jsonb", [key, json.dumps(value)]

    def text_search(self, terms: Sequence[str]) -> TextSearch:
        """Any of the terms: one ``plainto_tsquery`` per word (plain text, no operators, so it
        never fails to parse), joined by ``||`` (OR). The GIN index on ``tsv`` finds matches;
        ``ts_rank_cd`` ranks them. A query of stop words only has no lexemes: the one-time
        ``numnode`` test skips the search (and the server's notice about it)."""
        query = " || ".join([f"plainto_tsquery('{TEXT_CONFIG}', ?)"] * len(terms))
        return TextSearch(
            source=f"(SELECT {query} AS query) q CROSS JOIN kernos_memories m",
            condition="numnode(q.query) > 0 AND m.tsv @@ q.query",
            score="ts_rank_cd(m.tsv, q.query)",
            params=tuple(terms),
        )

    def lock_migrations(self, tx: Tx) -> None:
        tx.execute("SELECT pg_advisory_xact_lock(hashtext(current_schema() || ':kernos:migrate'))")

    def lock_agent(self, tx: Tx, agent: str) -> None:
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext(current_schema() || ':kernos:agent:' || ?))",
            (agent,),
        )

    def lock_tenants(self, tx: Tx, tenants: Sequence[str]) -> None:
        # One round trip for all of them, in the order of the lock keys themselves: even two
        # names whose hashes collide are locked in the same order by every claim. (Since 9.6
        # a volatile function in the select list is evaluated after the ORDER BY's sort.)
        tx.execute(
            "SELECT pg_advisory_xact_lock(k) FROM (SELECT DISTINCT "
            "hashtext(current_schema() || ':kernos:tenant:' || t) AS k "
            "FROM unnest(?::text[]) AS t) AS keys ORDER BY k",
            (list(tenants),),
        )

    def table_exists(self, tx: Tx, table: str) -> bool:
        row = tx.fetchone("SELECT to_regclass(?) IS NOT NULL", (table,))
        return bool(row and row[0])

    def notify(self, tx: Tx) -> None:
        tx.execute("SELECT pg_notify(?, '')", (CHANNEL,))

    def wait_for_notify(self, timeout: float) -> bool:
        # One listening connection per store; a second waiter just naps (it is a hint only).
        if not self._listen_lock.acquire(blocking=False):
            time.sleep(min(timeout, 0.1))
            return False
        try:
            if self._listener is None or self._listener.closed or self._listener.broken:
                self._close_listener()
                self._listener = psycopg.connect(self._conninfo, autocommit=True)
                self._listener.execute(f"LISTEN {CHANNEL}")
            for _ in self._listener.notifies(timeout=timeout, stop_after=1):
                return True
        except psycopg.Error:
            self._close_listener()
        finally:
            self._listen_lock.release()
        return False

    def _close_listener(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(psycopg.Error):
                self._listener.close()
        self._listener = None

    def translate(self, exc: BaseException) -> BaseException:
        if isinstance(exc, PoolTimeout):
            return StoreUnavailable(
                f"no connection to {self.display_url} could be had in time ({exc}); is the "
                f"server up and KERNOS_DATABASE_URL right?"
            )
        if isinstance(exc, pgerrors.DiskFull):
            return StoreFull(
                f"the PostgreSQL server at {self.display_url} is out of disk space ({exc}); "
                f"nothing of the failed write was kept. Free space and retry."
            )
        if isinstance(exc, pgerrors.ProgramLimitExceeded):
            return InvalidInput(
                f"a value is over a limit of PostgreSQL ({exc}); nothing was written. Store "
                f"less at once (e.g. a long text as several memories)"
            )
        if isinstance(exc, psycopg.OperationalError):
            return StoreUnavailable(
                f"the PostgreSQL server at {self.display_url} is unavailable ({exc}); is it "
                f"running and is KERNOS_DATABASE_URL right?"
            )
        return exc

    def close(self) -> None:
        self._watchdog.close()
        if self._pool_opened:
            self._pool.close()
        for conn in self._loop_conns.values():
            _finish(conn)
        self._loop_conns.clear()
        with self._listen_lock:
            self._close_listener()
