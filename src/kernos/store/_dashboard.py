"""Read-only queries the dashboard asks of the journal and the runs table.

Each is one read transaction, bounded by a ``limit``, and projects the journal (DESIGN.md: the
journal is the one record; these are views of it). The functions here build and run the SQL
and return rows or small records; ``SqlStore``'s thin methods turn run and event rows into
``Run`` and ``Event`` with the converters the rest of the store uses.

What they cost, so that nobody is surprised on a large database:

- ``select_runs_page``: a keyset page (``id < ?`` newest first, or ``id > ?`` going back), an
  index range on the primary key or ``(tenant, id)``, whatever the page number.
- ``select_journal_page`` and ``journal_extent``: a range of the journal's primary key
  ``(run_id, seq)``: a page of a 10,000-event run reads that page, not the run.
- ``sum_run_events``: the journals of the runs named (a page of the runs list).
- ``select_event_fields`` and ``sum_events_over_time``: a scan of the journal's events since
  ``since`` (no index covers ``type, created_at``; these serve a dashboard that asks every few
  seconds at most, from one process-wide cache).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kernos.errors import InvalidInput
from kernos.store._dialect import Dialect, Row, Tx, placeholders
from kernos.store._records import JsonPath, RunState

#: what a waiting run's ``waiting_for`` starts with, by the kind of thing it waits for
WAIT_KINDS = ("approval", "message", "timer", "child", "provider", "budget")


@dataclass(frozen=True, slots=True, kw_only=True)
class RunQuery:
    """A page of runs: filters, and a keyset bound. ``before``: runs with smaller ids (older),
    newest first; ``after``: runs with larger ids (newer), the ones just above it. One of
    them at most; neither: the newest runs."""

    state: RunState | None = None
    agent: str | None = None
    tenant: str | None = None
    #: a kind of ``WAIT_KINDS``: runs whose ``waiting_for`` is of that kind
    waiting: str | None = None
    created_after: float | None = None
    before: str | None = None
    after: str | None = None
    limit: int = 50


@dataclass(frozen=True, slots=True)
class EventFields:
    """Chosen payload fields of one event (as text, None when absent), its type and time."""

    type: str
    at: float
    run_id: str
    fields: dict[str, str | None]


@dataclass(frozen=True, slots=True)
class TimedTotals:
    """Sums of one group in one time bucket (``start``: the bucket's first second)."""

    start: float
    key: str
    events: int
    sums: dict[str, float]


def _coalesce(expressions: Sequence[str]) -> str:
    return expressions[0] if len(expressions) == 1 else f"COALESCE({', '.join(expressions)})"


def select_runs_page(tx: Tx, columns: str, q: RunQuery) -> list[Row]:
    """Rows of ``columns`` of the runs ``q`` asks for, newest first."""
    if q.before is not None and q.after is not None:
        raise InvalidInput("a page of runs is either before one run or after one, not both")
    where: list[str] = []
    params: list[Any] = []
    if q.tenant is not None:
        where.append("tenant = ?")
        params.append(q.tenant)
    if q.state is not None:
        where.append("state = ?")
        params.append(q.state.value)
    if q.agent is not None:
        where.append("agent = ?")
        params.append(q.agent)
    if q.waiting is not None:
        if q.waiting not in WAIT_KINDS:
            raise InvalidInput(f"unknown kind of wait {q.waiting!r}: one of {WAIT_KINDS}")
        where.append("(waiting_for = ? OR waiting_for LIKE ?)")
        params.extend((q.waiting, f"{q.waiting}:%"))
    if q.created_after is not None:
        where.append("created_at >= ?")
        params.append(q.created_after)
    order = "DESC"
    if q.before is not None:
        where.append("id < ?")
        params.append(q.before)
    elif q.after is not None:
        where.append("id > ?")
        params.append(q.after)
        order = "ASC"
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    rows = tx.fetchall(
        f"SELECT {columns} FROM kernos_runs{clause} ORDER BY id {order} LIMIT ?",
        (*params, q.limit),
    )
    return rows[::-1] if order == "ASC" else rows


def select_journal_page(tx: Tx, columns: str, run_id: str, after_seq: int, limit: int) -> list[Row]:
    """At most ``limit`` events of one run after ``after_seq``, in order."""
    return tx.fetchall(
        f"SELECT {columns} FROM kernos_journal WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?",
        (run_id, after_seq, limit),
    )


def journal_extent(tx: Tx, run_id: str) -> tuple[int, int]:
    """How many events one run's journal holds, and its last seq (0, 0 when empty)."""
    row = tx.fetchone(
        "SELECT COUNT(*), COALESCE(MAX(seq), 0) FROM kernos_journal WHERE run_id = ?", (run_id,)
    )
    return (int(row[0]), int(row[1])) if row else (0, 0)


def _parsed(d: Dialect, columns: str, condition: str) -> str:
    """The journal rows matching ``condition``, their payload parsed once each: PostgreSQL
    would parse the text as ``jsonb`` again for every field an aggregate reads (``OFFSET 0``
    keeps the planner from folding the parse back into each reference)."""
    if d.name == "postgresql":
        return (
            f"(SELECT {columns}, payload::jsonb AS payload FROM kernos_journal "
            f"WHERE {condition} OFFSET 0)"
        )
    return f"(SELECT {columns}, payload FROM kernos_journal WHERE {condition})"


def _sum_expressions(d: Dialect, sums: Mapping[str, Sequence[JsonPath]]) -> list[str]:
    return [
        f"SUM(COALESCE({_coalesce([d.json_number('j.payload', p) for p in paths])}, 0))"
        for paths in sums.values()
    ]


def sum_run_events(
    tx: Tx,
    d: Dialect,
    run_ids: Sequence[str],
    types: Sequence[str],
    sums: Mapping[str, Sequence[JsonPath]],
) -> dict[str, dict[str, float]]:
    """Sums of payload fields over the events of ``types`` of each run named (runs without
    such events are left out)."""
    if not run_ids or not types or not sums:
        return {}
    names = list(sums)
    source = _parsed(
        d,
        "run_id",
        f"run_id IN ({placeholders(len(run_ids))}) AND type IN ({placeholders(len(types))})",
    )
    rows = tx.fetchall(
        f"SELECT j.run_id, {', '.join(_sum_expressions(d, sums))} FROM {source} j "
        "GROUP BY j.run_id",
        (*run_ids, *types),
    )
    return {str(r[0]): {n: float(r[1 + i] or 0) for i, n in enumerate(names)} for r in rows}


def _scope(since: float | None, tenant: str | None) -> tuple[str, list[Any], str]:
    """Conditions on the time and tenant of events (``j``, joined to their run ``r``)."""
    where: list[str] = []
    params: list[Any] = []
    join = ""
    if since is not None:
        where.append("j.created_at >= ?")
        params.append(since)
    if tenant is not None:
        join = " JOIN kernos_runs r ON r.id = j.run_id"
        where.append("r.tenant = ?")
        params.append(tenant)
    return "".join(f" AND {w}" for w in where), params, join


def select_event_fields(
    tx: Tx,
    d: Dialect,
    *,
    types: Sequence[str],
    fields: Mapping[str, Sequence[JsonPath]],
    since: float | None,
    tenant: str | None,
    limit: int,
) -> list[EventFields]:
    """The newest ``limit`` events of ``types`` (since ``since``, of ``tenant``'s runs), each
    with the payload fields asked for: the first of a field's paths that is present."""
    if not types:
        return []
    names = list(fields)
    columns = [_coalesce([d.json_text("j.payload", p) for p in fields[n]]) for n in names]
    condition, params, join = _scope(since, tenant)
    rows = tx.fetchall(
        f"SELECT j.type, j.created_at, j.run_id{''.join(', ' + c for c in columns)} "
        f"FROM kernos_journal j{join} WHERE j.type IN ({placeholders(len(types))}){condition} "
        "ORDER BY j.created_at DESC LIMIT ?",
        (*types, *params, limit),
    )
    return [
        EventFields(
            type=str(r[0]),
            at=float(r[1]),
            run_id=str(r[2]),
            fields={n: None if r[3 + i] is None else str(r[3 + i]) for i, n in enumerate(names)},
        )
        for r in rows
    ]


def _bucket(d: Dialect) -> str:
    """SQL for the start of an event's time bucket of ``?`` seconds (the parameter comes
    twice): floor division, which SQLite's CAST does for positive times."""
    if d.name == "postgresql":
        return "(FLOOR(j.created_at / ?) * ?)"
    return "(CAST(j.created_at / ? AS INTEGER) * ?)"


def sum_events_over_time(
    tx: Tx,
    d: Dialect,
    *,
    types: Sequence[str],
    sums: Mapping[str, Sequence[JsonPath]],
    group_by: str | Sequence[Sequence[JsonPath]],
    bucket: float,
    since: float,
    tenant: str | None,
    limit: int,
) -> list[TimedTotals]:
    """``sum_events`` per time bucket of ``bucket`` seconds since ``since``: for spend over
    time. ``group_by`` is ``agent``, ``tenant`` or payload fields (joined with ``:``)."""
    if not bucket > 0:
        raise InvalidInput(f"a time bucket must be a positive number of seconds, not {bucket}")
    if not types or not sums:
        return []
    if isinstance(group_by, str):
        columns = {"agent": "r.agent", "tenant": "r.tenant"}
        if group_by not in columns:
            raise InvalidInput(f"cannot group by {group_by!r} over time: use agent or tenant")
        key = columns[group_by]
    else:
        parts = [_coalesce([d.json_text("j.payload", p) for p in alts]) for alts in group_by]
        key = " || ':' || ".join(f"COALESCE({p}, '-')" for p in parts)
    names = list(sums)
    source = _parsed(
        d, "run_id, created_at", f"type IN ({placeholders(len(types))}) AND created_at >= ?"
    )
    params: list[Any] = [*types, since]
    where = ""
    if tenant is not None:
        where = " WHERE r.tenant = ?"
        params.append(tenant)
    start = _bucket(d)
    rows = tx.fetchall(
        f"SELECT {start} AS b, {key} AS k, COUNT(*), {', '.join(_sum_expressions(d, sums))} "
        f"FROM {source} j JOIN kernos_runs r ON r.id = j.run_id{where} "
        "GROUP BY b, k ORDER BY b, k LIMIT ?",
        (bucket, bucket, *params, limit),
    )
    return [
        TimedTotals(
            start=float(r[0]),
            key=str(r[1]),
            events=int(r[2]),
            sums={n: float(r[3 + i] or 0) for i, n in enumerate(names)},
        )
        for r in rows
    ]
