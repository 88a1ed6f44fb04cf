"""Choosing and opening a store from a URL."""

from __future__ import annotations

from kernos.errors import ConfigError
from kernos.store._dialect import Dialect
from kernos.store._sql import DEFAULT_MAX_PAYLOAD, SqlStore
from kernos.store._sqlite import SqliteDialect

DEFAULT_URL = "sqlite:///.kernos/kernos.db"


def open_store(
    url: str = DEFAULT_URL,
    *,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
    pool_size: int = 8,
    io_timeout: float | None = None,
) -> SqlStore:
    """Open (without migrating) the database at ``url``.

    ``sqlite:///relative/path.db`` and ``sqlite:////absolute/path.db`` pick SQLite;
    ``postgresql://...`` (or ``postgres://``) picks PostgreSQL. Call ``await store.migrate()``
    before use; ``kernos.connect`` does both. ``io_timeout`` (PostgreSQL): seconds one
    transaction may go unanswered before its connection is cut and ``StoreUnavailable`` raised.
    """
    dialect: Dialect
    if url.startswith("sqlite:///"):
        dialect = SqliteDialect(url.removeprefix("sqlite:///"))
    elif url.startswith(("postgresql://", "postgres://")):
        # Imported here: psycopg costs a third of a second that SQLite users need not pay.
        from kernos.store._postgres import PostgresDialect

        dialect = PostgresDialect(url, pool_size=pool_size, io_timeout=io_timeout)
    else:
        raise ConfigError(
            f"unsupported database URL {url.split('://')[0]}://...: KERNOS_DATABASE_URL must be "
            f"sqlite:///path/to/file.db or postgresql://user@host:5432/dbname"
        )
    return SqlStore(dialect, threads=pool_size, max_payload=max_payload)
