"""The floor: one INSERT and COMMIT of a journal-like row, with kernos' durability settings.

SQLite: ``journal_mode=WAL`` and ``synchronous=FULL`` (as kernos opens it), one connection,
``BEGIN IMMEDIATE; INSERT; COMMIT`` per row. PostgreSQL: one psycopg connection, default
``synchronous_commit=on``, ``INSERT; COMMIT`` per row (the driver's default transaction: BEGIN,
INSERT and COMMIT, three round trips), and a stricter one-statement floor (autocommit, one round
trip) that kernos is also printed against, since it commits an append as one statement. The row is shaped like a kernos journal
event (run id, seq, type, step, name, attempt, JSON payload, timestamps) with a primary key on
(run_id, seq). No kernos import: the peer benchmark measures its floor with this same code.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from dataclasses import dataclass

_DDL = """CREATE TABLE IF NOT EXISTS floor_journal (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    step INTEGER,
    name TEXT,
    attempt INTEGER NOT NULL DEFAULT 0,
    payload TEXT NOT NULL,
    created_at {float} NOT NULL,
    duration {float},
    PRIMARY KEY (run_id, seq)
)"""
_INSERT = (
    "INSERT INTO floor_journal (run_id, seq, type, step, name, attempt, payload, created_at, "
    "duration) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p})"
)


@dataclass(frozen=True, slots=True)
class Floor:
    backend: str
    commits: int
    seconds: float

    @property
    def latency_ms(self) -> float:
        return self.seconds / self.commits * 1000

    @property
    def rate(self) -> float:
        return self.commits / self.seconds


def _params(run_id: str, i: int) -> tuple[object, ...]:
    payload = json.dumps({"result": i}, separators=(",", ":"))
    return (run_id, i, "step_completed", i, "s", 1, payload, time.time(), 1e-5)


def sqlite_floor(path: str, n: int = 1000) -> Floor:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(_DDL.format(float="REAL"))
        sql = _INSERT.format(p="?")
        run_id = uuid.uuid4().hex
        for i in range(20):  # warm-up: the first commits grow the WAL file
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(sql, _params(run_id, -1 - i))
            conn.execute("COMMIT")
        start = time.perf_counter()
        for i in range(n):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(sql, _params(run_id, i))
            conn.execute("COMMIT")
        return Floor("sqlite", n, time.perf_counter() - start)
    finally:
        conn.close()


def postgres_floor(conninfo: str, n: int = 1000) -> Floor:
    import psycopg

    with psycopg.connect(conninfo) as conn:
        conn.execute(_DDL.format(float="DOUBLE PRECISION"))
        conn.commit()
        sql = _INSERT.format(p="%s")
        run_id = uuid.uuid4().hex
        for i in range(20):
            conn.execute(sql, _params(run_id, -1 - i))
            conn.commit()
        start = time.perf_counter()
        for i in range(n):
            conn.execute(sql, _params(run_id, i))
            conn.commit()
        return Floor("postgresql", n, time.perf_counter() - start)


def postgres_autocommit_floor(conninfo: str, n: int = 1000) -> Floor:
    """The stricter PostgreSQL floor: one autocommitted INSERT, one round trip per row.

    The driver's default transaction (above) costs three round trips (BEGIN, INSERT, COMMIT);
    kernos commits an append as one statement, so it is printed against this floor too.
    """
    import psycopg

    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(_DDL.format(float="DOUBLE PRECISION"))
        sql = _INSERT.format(p="%s")
        run_id = uuid.uuid4().hex
        for i in range(20):
            conn.execute(sql, _params(run_id, -1 - i))
        start = time.perf_counter()
        for i in range(n):
            conn.execute(sql, _params(run_id, i))
        return Floor("postgresql", n, time.perf_counter() - start)


def measure_floor(
    backend: str,
    *,
    path: str | None = None,
    conninfo: str | None = None,
    n: int = 1000,
    autocommit: bool = False,
) -> Floor:
    """The floor of the targets (one INSERT and COMMIT, issue #4); ``autocommit`` gives the
    stricter one-statement floor on PostgreSQL (on SQLite the two are the same)."""
    if backend == "sqlite":
        assert path is not None
        return sqlite_floor(path, n)
    assert conninfo is not None
    if autocommit:
        return postgres_autocommit_floor(conninfo, n)
    return postgres_floor(conninfo, n)
