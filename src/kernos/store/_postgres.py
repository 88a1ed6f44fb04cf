"""The PostgreSQL dialect: the distributed engine (DESIGN.md, Storage).

Many workers on many hosts claim with ``FOR UPDATE SKIP LOCKED`` and sleep on ``LISTEN``; an
append holds ``FOR KEY SHARE`` on its run's row, so a re-claim (which locks the row ``FOR
UPDATE``) cannot slip between an append's fencing check and its commit.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

from kernos.errors import ConfigError, StoreFull, StoreUnavailable
from kernos.store._dialect import Params, Row, Tx

CHANNEL = "kernos_wake"


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


class PostgresDialect:
    name = "postgresql"
    lock_rows = " FOR UPDATE"
    lock_skip = " FOR UPDATE SKIP LOCKED"
    lock_fence = " FOR KEY SHARE"
    ddl_types = {
        "float": "DOUBLE PRECISION",
        "bigint": "BIGINT",
        "serial_pk": "BIGSERIAL PRIMARY KEY",
    }

    def __init__(self, url: str, *, pool_size: int = 8, connect_timeout: float = 10.0) -> None:
        self.display_url = _redact(url)
        try:
            params = conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            raise ConfigError(
                f"KERNOS_DATABASE_URL is not a valid PostgreSQL URL ({exc}); expected "
                f"postgresql://user@host:5432/dbname"
            ) from exc
        params.setdefault("connect_timeout", str(int(connect_timeout)))
        params.setdefault("application_name", "kernos")
        # Notice a dead server or a stalled network within seconds rather than hours.
        params.setdefault("keepalives", "1")
        params.setdefault("keepalives_idle", "5")
        params.setdefault("keepalives_interval", "2")
        params.setdefault("keepalives_count", "3")
        self._conninfo = make_conninfo("", **params)
        self._pool = ConnectionPool(
            self._conninfo,
            min_size=1,
            max_size=pool_size,
            open=False,
            timeout=connect_timeout * 3,
            check=ConnectionPool.check_connection,
            name="kernos",
        )
        self._pool_opened = False
        self._open_lock = threading.Lock()
        self._committer: psycopg.Connection[Any] | None = None
        self._listener: psycopg.Connection[Any] | None = None

    def _open_pool(self) -> ConnectionPool:
        with self._open_lock:
            if not self._pool_opened:
                try:
                    self._pool.open(wait=True, timeout=self._pool.timeout)
                except PoolTimeout as exc:
                    raise self.translate(exc) from exc
                self._pool_opened = True
        return self._pool

    @contextmanager
    def write(self) -> Iterator[Tx]:
        pool = self._open_pool()
        try:
            with pool.connection() as conn, conn.cursor() as cur:
                yield _Cursor(cur)
        except (psycopg.Error, PoolTimeout) as exc:
            raise self.translate(exc) from exc

    read = write

    @contextmanager
    def committer_tx(self) -> Iterator[Tx]:
        try:
            if self._committer is None or self._committer.closed or self._committer.broken:
                self._committer = psycopg.connect(self._conninfo)
            conn = self._committer
            with conn.transaction(), conn.cursor() as cur:
                yield _Cursor(cur)
        except psycopg.Error as exc:
            if self._committer is not None and self._committer.broken:
                self._committer = None
            raise self.translate(exc) from exc

    def lock_migrations(self, tx: Tx) -> None:
        tx.execute("SELECT pg_advisory_xact_lock(hashtext(current_schema() || ':kernos:migrate'))")

    def lock_agent(self, tx: Tx, agent: str) -> None:
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext(current_schema() || ':kernos:agent:' || ?))",
            (agent,),
        )

    def table_exists(self, tx: Tx, table: str) -> bool:
        row = tx.fetchone("SELECT to_regclass(?) IS NOT NULL", (table,))
        return bool(row and row[0])

    def notify(self, tx: Tx) -> None:
        tx.execute("SELECT pg_notify(?, '')", (CHANNEL,))

    def wait_for_notify(self, timeout: float) -> bool:
        try:
            if self._listener is None or self._listener.closed or self._listener.broken:
                self._listener = psycopg.connect(self._conninfo, autocommit=True)
                self._listener.execute(f"LISTEN {CHANNEL}")
            for _ in self._listener.notifies(timeout=timeout, stop_after=1):
                return True
        except psycopg.Error:
            self._listener = None
        return False

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
        if isinstance(exc, psycopg.OperationalError):
            return StoreUnavailable(
                f"the PostgreSQL server at {self.display_url} is unavailable ({exc}); is it "
                f"running and is KERNOS_DATABASE_URL right?"
            )
        return exc

    def close(self) -> None:
        if self._pool_opened:
            self._pool.close()
        for conn in (self._committer, self._listener):
            if conn is not None:
                conn.close()
        self._committer = None
        self._listener = None
