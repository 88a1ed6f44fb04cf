"""The hot path's one statement: appends inserted only where their fencing tokens still hold.

A batch of appends (from many runs) becomes a single ``INSERT ... SELECT ... WHERE EXISTS
(fence) RETURNING run_id, seq``: one statement, so one round trip and, run in autocommit, one
commit, however many runs share it. The rows come from ``VALUES`` on SQLite and from
``unnest`` of one array per column on PostgreSQL: a statement text that never changes, so the
server prepares it once and the driver never re-parses a thousand placeholders. The fence (``lease_token`` still ours,
``running``, no pending control request) is checked per row against the run's row, which
PostgreSQL share-locks (``FOR KEY SHARE``) so that a re-claim waits for the insert to commit.
What comes back says which appends went in; an append whose fence failed wrote nothing, and its
caller looks closer (lost lease, or a pause or cancel waiting to be acted on).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from kernos.store._commit import Append
from kernos.store._dialect import Row, Tx

#: the journal's columns: ``_event_params``' nine, then the lease token of the owner that wrote
#: the event (the append's fencing token; NULL for what no lease holder wrote)
EVENT_COLUMNS = "run_id, seq, type, step, name, attempt, payload, created_at, duration, lease_token"
_WIDTH = 10  # the 9 event columns and the append's fencing token
# The first row types the VALUES list (PostgreSQL infers the others from it); SQLite applies
# the same affinities. Later rows stay bare to keep the statement short.
_FIRST_ROW = (
    "(CAST(? AS TEXT), CAST(? AS INTEGER), CAST(? AS TEXT), CAST(? AS INTEGER), CAST(? AS TEXT),"
    " CAST(? AS INTEGER), CAST(? AS TEXT), CAST(? AS DOUBLE PRECISION),"
    " CAST(? AS DOUBLE PRECISION), CAST(? AS BIGINT))"
)
_ROW = "(" + ", ".join("?" * _WIDTH) + ")"
#: bound parameters per statement, under SQLite's 32,766 and PostgreSQL's 65,535
_MAX_PARAMS = 30_000


@dataclass(frozen=True, slots=True)
class FencedInsert:
    """One statement and the appends it carries."""

    appends: Sequence[Append]
    sql: str
    params: tuple[Any, ...]

    def outcomes(self, returned: Sequence[Row]) -> list[bool]:
        """Per append, whether it went in (its first row came back)."""
        inserted = {(r[0], int(r[1])) for r in returned}
        return [(a.run_id, int(a.rows[0][1])) in inserted for a in self.appends]


def values_inserts(batch: Sequence[Append], lock_fence: str) -> list[FencedInsert]:
    """SQLite: the statements for a batch; one, unless it is too large to bind at once."""
    statements: list[FencedInsert] = []
    chunk: list[Append] = []
    width = 0
    for append in batch:
        rows = len(append.rows) * _WIDTH
        if chunk and width + rows > _MAX_PARAMS:
            statements.append(_statement(chunk, lock_fence))
            chunk, width = [], 0
        chunk.append(append)
        width += rows
    if chunk:
        statements.append(_statement(chunk, lock_fence))
    return statements


_UNNEST_INSERT = (
    f"INSERT INTO kernos_journal ({EVENT_COLUMNS}) "
    "SELECT v.run_id, v.seq, v.type, v.step, v.name, v.attempt, v.payload, v.created_at,"
    " v.duration, v.token FROM unnest(CAST(? AS TEXT[]), CAST(? AS INTEGER[]), CAST(? AS TEXT[]),"
    " CAST(? AS INTEGER[]), CAST(? AS TEXT[]), CAST(? AS INTEGER[]), CAST(? AS TEXT[]),"
    " CAST(? AS DOUBLE PRECISION[]), CAST(? AS DOUBLE PRECISION[]), CAST(? AS BIGINT[]))"
    " AS v(run_id, seq, type, step, name, attempt, payload, created_at, duration, token) "
    "WHERE EXISTS (SELECT 1 FROM kernos_runs r WHERE r.id = v.run_id"
    " AND r.lease_token = v.token AND r.state = 'running' AND r.control IS NULL{lock_fence})"
    " RETURNING run_id, seq"
)


#: up to this many rows, PostgreSQL gets VALUES too (cheaper than ten arrays for a lone run)
_FEW_ROWS = 4


def unnest_insert(batch: Sequence[Append], lock_fence: str) -> list[FencedInsert]:
    """PostgreSQL: the whole batch as one statement of ten array parameters."""
    if sum(len(a.rows) for a in batch) <= _FEW_ROWS:
        return [_statement(batch, lock_fence)]
    columns: list[list[Any]] = [[] for _ in range(_WIDTH)]
    for append in batch:
        for row in append.rows:
            for column, value in zip(columns, (*row, append.token), strict=True):
                column.append(value)
    return [FencedInsert(batch, _UNNEST_INSERT.format(lock_fence=lock_fence), tuple(columns))]


def _statement(appends: Sequence[Append], lock_fence: str) -> FencedInsert:
    params: list[Any] = []
    for append in appends:
        for row in append.rows:
            params.extend(row)
            params.append(append.token)
    return FencedInsert(appends, _values_sql(len(params) // _WIDTH, lock_fence), tuple(params))


@lru_cache(maxsize=256)
def _values_sql(rows: int, lock_fence: str) -> str:
    """The statement for ``rows`` rows (made once per size: the hot path reuses its text, and
    the driver's statement cache its plan)."""
    values = _FIRST_ROW + (", " + _ROW) * (rows - 1)
    return (
        f"INSERT INTO kernos_journal ({EVENT_COLUMNS}) "
        "SELECT v.column1, v.column2, v.column3, v.column4, v.column5, v.column6, v.column7,"
        f" v.column8, v.column9, v.column10 FROM (VALUES {values}) AS v "
        "WHERE EXISTS (SELECT 1 FROM kernos_runs r WHERE r.id = v.column1"
        " AND r.lease_token = v.column10 AND r.state = 'running' AND r.control IS NULL"
        f"{lock_fence}) RETURNING run_id, seq"
    )


def insert_batch(tx: Tx, batch: Sequence[Append], lock_fence: str) -> list[bool]:
    """Run a batch's statements in an open transaction; per append, whether it went in."""
    outcomes: list[bool] = []
    for statement in values_inserts(batch, lock_fence):
        outcomes.extend(statement.outcomes(tx.fetchall(statement.sql, statement.params)))
    return outcomes
