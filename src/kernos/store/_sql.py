"""``SqlStore``: the one implementation of ``Store``, on either dialect.

The SQL is written once. Each public coroutine runs one short transaction on a thread of the
store's own pool (the drivers block); appends go through the group committer instead, so that the
events of concurrent runs share a commit.

Races this code is written against (each has a conformance test):
- a message or a child's completion arriving while the run suspends: both sides lock the run's
  row first, so one of them always sees the other's write;
- a re-claim while a stale owner appends: the append holds a share lock on the run's row and is
  conditional on the fencing token;
- two processes migrating at once: a migration lock (advisory / write lock) serialises them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, TypeVar

from kernos.errors import (
    ApprovalNotFound,
    InvalidInput,
    InvalidState,
    LeaseLost,
    RunNotFound,
    ScheduleNotFound,
    SchemaMismatch,
)
from kernos.store._claims import (
    FAIR_WINDOW,
    MAX_WINDOWS,
    Allowance,
    TenantLimits,
    choose_in_order,
    choose_round_robin,
    count_running,
    limited_tenants,
    saturated,
    tenant_allowance,
)
from kernos.store._commit import CommitStats
from kernos.store._dashboard import (
    EventFields,
    RunQuery,
    TimedTotals,
    journal_extent,
    select_event_fields,
    select_journal_page,
    select_runs_page,
    sum_events_over_time,
    sum_run_events,
)
from kernos.store._dialect import Dialect, Row, Tx, iter_chunks, placeholders
from kernos.store._fenced import EVENT_COLUMNS
from kernos.store._fleet import (
    beat_worker,
    list_versions,
    list_workers,
    publish_gateway,
    read_gateway,
    refuse_retired,
    register_worker,
    schedule_version,
    set_retired,
    stop_worker,
    waiting_reasons,
)
from kernos.store._ids import new_run_id
from kernos.store._memory import (
    MAX_SEARCH_K,
    VECTOR_SCAN_LIMIT,
    check_embedding,
    check_filter,
    check_name,
    check_text,
    encode_metadata,
    fuse,
    nearest,
    norm,
    pack_embedding,
    query_terms,
    unpack_embedding,
)
from kernos.store._outbox import (
    claim_notifications,
    insert_notifications,
    list_notifications,
    settle_notification,
)
from kernos.store._oversight import (
    append_audit,
    decide_approval,
    escalate_approval,
    find_api_key,
    get_approval,
    held_budget,
    insert_api_key,
    insert_approval,
    last_audit,
    list_api_keys,
    list_approvals,
    list_audit,
    list_budget_usage,
    release_run_holds,
    reserve_budget,
    settle_budget,
    verify_audit,
)
from kernos.store._pins import (
    accept_change,
    check_definitions,
    list_pins,
    record_listing,
    statuses_if_recorded,
)
from kernos.store._protocol import Heartbeat, Timer
from kernos.store._records import (
    AgentVersion,
    ApiKey,
    Approval,
    ApprovalState,
    ApprovalWait,
    AuditCheck,
    AuditEntry,
    BudgetCharge,
    BudgetUsage,
    BudgetVerdict,
    ChildWait,
    Claim,
    Control,
    Event,
    EventTotals,
    FleetGateway,
    FleetStatus,
    GatewayReport,
    JsonPath,
    Memory,
    MemoryHit,
    Message,
    MessageWait,
    NewApproval,
    NewMemory,
    NewRun,
    Notification,
    PinStatus,
    Run,
    RunState,
    Schedule,
    SchemaStatus,
    SuspendResult,
    ToolDefinition,
    ToolPin,
    VersionStatus,
    WakeCheck,
    WorkerRecord,
    WorkerRegistration,
)
from kernos.store._schema import LATEST_VERSION, MIGRATIONS

T = TypeVar("T")

_RUN_COLUMNS = (
    "id, agent, agent_version, state, waiting_for, control, input, output, error, priority, "
    "parent_id, schedule, created_at, updated_at, run_at, lease_owner, lease_token, "
    "lease_expires_at, claims, tenant, principal"
)
#: a run committing without suspending yields to its event loop at least this often (seconds)
_YIELD_EVERY = 0.005
_JOURNAL_COLUMNS = "seq, type, step, name, attempt, payload, created_at, duration, lease_token"
_INSERT_EVENT = (
    f"INSERT INTO kernos_journal ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_OWN = (
    "UPDATE kernos_runs SET updated_at = ? WHERE id = ? AND lease_token = ? AND state = 'running'"
)
DEFAULT_MAX_PAYLOAD = 1024 * 1024
_MEMORY_COLUMNS = (
    "m.seq, m.id, m.namespace, m.text, m.metadata, m.tenant, m.run_id, m.embedding, m.created_at"
)


def _run(row: Row) -> Run:
    return Run(
        id=row[0],
        agent=row[1],
        agent_version=row[2],
        state=RunState(row[3]),
        waiting_for=row[4],
        control=Control(row[5]) if row[5] else None,
        input=row[6],
        output=row[7],
        error=row[8],
        priority=row[9],
        parent_id=row[10],
        schedule=row[11],
        created_at=row[12],
        updated_at=row[13],
        run_at=row[14],
        lease_owner=row[15],
        lease_token=row[16],
        lease_expires_at=row[17],
        claims=row[18],
        tenant=row[19],
        principal=row[20],
    )


def _event(row: Row) -> Event:
    return Event(
        seq=row[0],
        type=row[1],
        step=row[2],
        name=row[3],
        attempt=row[4],
        payload=json.loads(row[5]),
        created_at=row[6],
        duration=row[7],
        token=row[8],
    )


def _event_params(run_id: str, ev: Event, now: float) -> tuple[Any, ...]:
    return (
        run_id,
        ev.seq,
        ev.type,
        ev.step,
        ev.name,
        ev.attempt,
        ev.payload_json or json.dumps(ev.payload, separators=(",", ":")),
        ev.created_at or now,
        ev.duration,
    )


def _memory(row: Row) -> Memory:
    """A row of ``_MEMORY_COLUMNS`` (its first column, ``seq``, is the store's own)."""
    return Memory(
        id=row[1],
        namespace=row[2],
        text=row[3],
        metadata=json.loads(row[4]),
        tenant=row[5],
        run_id=row[6],
        embedding=unpack_embedding(row[7]) if row[7] is not None else None,
        created_at=row[8],
    )


def _coalesce(expressions: Sequence[str]) -> str:
    return expressions[0] if len(expressions) == 1 else f"COALESCE({', '.join(expressions)})"


def _with_reason(events: Sequence[Event], type_: str, reason: str | None) -> list[Event]:
    """Put a person's stated reason into the event that carries out their request."""
    if not reason:
        return list(events)
    return [
        replace(e, payload={**e.payload, "reason": reason}) if e.type == type_ else e
        for e in events
    ]


class SqlStore:
    """A kernos database on SQLite or PostgreSQL. Create with ``open_store``."""

    def __init__(
        self, dialect: Dialect, *, threads: int = 8, max_payload: int = DEFAULT_MAX_PAYLOAD
    ) -> None:
        self._d = dialect
        self._max_payload = max_payload
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kernos-store")
        self._committer = dialect.committer()
        self._closed = False
        self._yielded_at = 0.0

    # -- plumbing -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self._d.display_url

    @property
    def backend(self) -> str:
        return self._d.name

    @property
    def dialect(self) -> Dialect:
        return self._d

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn, *args)

    def commit_stats(self) -> CommitStats:
        """How appends were committed so far (grouping factor, inline share)."""
        return self._committer.stats()

    def check_size(self, what: str, text: str) -> None:
        """Raise ``InvalidInput`` if ``text`` is over the payload limit (nothing is written)."""
        if len(text) > self._max_payload:
            raise InvalidInput(
                f"{what} is {len(text)} bytes, over the limit of {self._max_payload} bytes; "
                f"store large data elsewhere and pass a reference (or raise "
                f"KERNOS_MAX_PAYLOAD_BYTES)"
            )

    def _check_events(self, events: Sequence[Event]) -> None:
        for ev in events:
            size = len(json.dumps(ev.payload, separators=(",", ":")))
            if size > self._max_payload:
                raise InvalidInput(
                    f"the {ev.type} event of step {ev.name!r} is {size} bytes, over the limit of "
                    f"{self._max_payload} bytes; return a smaller value (or a reference to it)"
                )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._committer.aclose()
        self._pool.shutdown(wait=True)
        self._d.close()

    # -- schema ---------------------------------------------------------------------------

    def _current_version(self, tx: Tx) -> int:
        if not self._d.table_exists(tx, "kernos_schema"):
            return 0
        row = tx.fetchone("SELECT COALESCE(MAX(version), 0) FROM kernos_schema")
        return int(row[0]) if row else 0

    def _status(self, current: int) -> SchemaStatus:
        pending = [f"{m.version}: {m.description}" for m in MIGRATIONS if m.version > current]
        return SchemaStatus(current=current, latest=LATEST_VERSION, pending=pending)

    def _refuse_newer(self, current: int) -> None:
        if current > LATEST_VERSION:
            raise SchemaMismatch(
                f"the database {self.url} has schema version {current}, newer than the "
                f"{LATEST_VERSION} this kernos knows; upgrade kernos (every worker and client) "
                f"before using this database"
            )

    def _schema_status(self) -> SchemaStatus:
        with self._d.read() as tx:
            return self._status(self._current_version(tx))

    async def schema_status(self) -> SchemaStatus:
        return await self._call(self._schema_status)

    def _migrate(self) -> SchemaStatus:
        with self._d.write() as tx:
            self._d.lock_migrations(tx)
            tx.execute(
                "CREATE TABLE IF NOT EXISTS kernos_schema (version INTEGER PRIMARY KEY, "
                f"description TEXT NOT NULL, applied_at {self._d.ddl_types['float']} NOT NULL)"
            )
            current = self._current_version(tx)
            self._refuse_newer(current)
            for migration in MIGRATIONS:
                if migration.version <= current:
                    continue
                for statement in migration.statements_for(self._d.name):
                    tx.execute(statement.format(**self._d.ddl_types))
                tx.execute(
                    "INSERT INTO kernos_schema (version, description, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.description, time.time()),
                )
                current = migration.version
            return self._status(current)

    async def migrate(self) -> SchemaStatus:
        """Apply pending migrations; idempotent, and safe when processes start at once."""
        return await self._call(self._migrate)

    # -- agents ---------------------------------------------------------------------------

    def _register_agents(self, agents: Sequence[tuple[str, str]]) -> None:
        with self._d.read() as tx:
            known = {(r[0], r[1]) for r in tx.fetchall("SELECT name, version FROM kernos_agents")}
        missing = [a for a in agents if a not in known]
        if not missing:
            return
        with self._d.write() as tx:
            now = time.time()
            for name, version in missing:
                tx.execute(
                    "INSERT INTO kernos_agents (name, version, registered_at) VALUES (?, ?, ?) "
                    "ON CONFLICT DO NOTHING",
                    (name, version, now),
                )

    async def register_agents(self, agents: Sequence[tuple[str, str]]) -> None:
        await self._call(self._register_agents, list(agents))

    def _list_agents(self) -> list[AgentVersion]:
        with self._d.read() as tx:
            rows = tx.fetchall(
                "SELECT name, version, registered_at FROM kernos_agents "
                "ORDER BY name, registered_at"
            )
        return [AgentVersion(r[0], r[1], r[2]) for r in rows]

    async def list_agents(self) -> list[AgentVersion]:
        return await self._call(self._list_agents)

    # -- runs -----------------------------------------------------------------------------

    def _insert_run(self, tx: Tx, new: NewRun, now: float) -> Run:
        run_at = new.run_at if new.run_at is not None else now
        tx.execute(
            f"INSERT INTO kernos_runs ({_RUN_COLUMNS}) VALUES "
            "(?, ?, ?, 'queued', NULL, NULL, ?, NULL, NULL, ?, ?, ?, ?, ?, ?, NULL, 0, NULL, 0, ?, ?)",
            (
                new.id,
                new.agent,
                new.agent_version,
                new.input,
                new.priority,
                new.parent_id,
                new.schedule,
                now,
                now,
                run_at,
                new.tenant,
                new.principal,
            ),
        )
        self._d.notify(tx)
        return Run(
            id=new.id,
            agent=new.agent,
            agent_version=new.agent_version,
            state=RunState.QUEUED,
            waiting_for=None,
            control=None,
            input=new.input,
            output=None,
            error=None,
            priority=new.priority,
            parent_id=new.parent_id,
            schedule=new.schedule,
            created_at=now,
            updated_at=now,
            run_at=run_at,
            lease_owner=None,
            lease_token=0,
            lease_expires_at=None,
            claims=0,
            tenant=new.tenant,
            principal=new.principal,
        )

    def _create_run(self, new: NewRun) -> Run:
        self.check_size(f"the input of run {new.id}", new.input)
        with self._d.write() as tx:
            # both checks in one round trip: the id is new, the version is not retired
            row = tx.fetchone(
                "SELECT (SELECT 1 FROM kernos_runs WHERE id = ?), (SELECT retired_at FROM "
                "kernos_agents WHERE name = ? AND version = ?)",
                (new.id, new.agent, new.agent_version),
            )
            if row is not None and row[0] is not None:
                raise InvalidInput(f"a run with id {new.id} exists already; ids must be unique")
            if row is not None and row[1] is not None:
                refuse_retired(tx, new.agent, new.agent_version)
            return self._insert_run(tx, new, time.time())

    async def create_run(self, new: NewRun) -> Run:
        """Create a queued run; ``VersionRetired`` (nothing written) if its version is retired."""
        return await self._call(self._create_run, new)

    def _get(self, tx: Tx, run_id: str, lock: str = "") -> Run:
        row = tx.fetchone(f"SELECT {_RUN_COLUMNS} FROM kernos_runs WHERE id = ?{lock}", (run_id,))
        if row is None:
            raise RunNotFound(
                f"run {run_id} not found in {self.url} (is KERNOS_DATABASE_URL pointing at the "
                f"right database? `kernos runs` lists the runs it holds)"
            )
        return _run(row)

    def _get_run(self, run_id: str) -> Run:
        with self._d.read() as tx:
            return self._get(tx, run_id)

    async def get_run(self, run_id: str) -> Run:
        return await self._call(self._get_run, run_id)

    def _list_runs(
        self, state: RunState | None, agent: str | None, limit: int, tenant: str | None = None
    ) -> list[Run]:
        where, params = [], []
        if tenant is not None:
            where.append("tenant = ?")
            params.append(tenant)
        if state is not None:
            where.append("state = ?")
            params.append(state.value)
        if agent is not None:
            where.append("agent = ?")
            params.append(agent)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        with self._d.read() as tx:
            rows = tx.fetchall(
                f"SELECT {_RUN_COLUMNS} FROM kernos_runs{clause} ORDER BY id DESC LIMIT ?",
                (*params, limit),
            )
        return [_run(r) for r in rows]

    async def list_runs(
        self,
        *,
        state: RunState | None = None,
        agent: str | None = None,
        limit: int = 100,
        tenant: str | None = None,
    ) -> list[Run]:
        return await self._call(self._list_runs, state, agent, limit, tenant)

    def _sum_events(
        self,
        types: Sequence[str],
        sums: Mapping[str, Sequence[JsonPath]],
        group_by: str | Sequence[Sequence[JsonPath]],
        since: float | None,
        limit: int,
    ) -> list[EventTotals]:
        d = self._d
        if isinstance(group_by, str):
            columns = {"run": "j.run_id", "agent": "r.agent", "tenant": "r.tenant"}
            if group_by not in columns:
                raise InvalidInput(f"cannot group by {group_by!r}: use run, agent or tenant")
            key = columns[group_by]
        else:
            parts = [_coalesce([d.json_text("j.payload", p) for p in alts]) for alts in group_by]
            key = " || ':' || ".join(f"COALESCE({p}, '-')" for p in parts)
        names = list(sums)
        totals = [
            f"SUM(COALESCE({_coalesce([d.json_number('j.payload', p) for p in sums[n]])}, 0))"
            for n in names
        ]
        where = [f"j.type IN ({placeholders(len(types))})"]
        params: list[Any] = list(types)
        if since is not None:
            where.append("j.created_at >= ?")
            params.append(since)
        order = f"{totals[0]} DESC, " if totals else ""
        sql = (
            f"SELECT {key} AS k, COUNT(*), {', '.join(totals) or '0'} "
            "FROM kernos_journal j JOIN kernos_runs r ON r.id = j.run_id "
            f"WHERE {' AND '.join(where)} GROUP BY {key} ORDER BY {order}k LIMIT ?"
        )
        with d.read() as tx:
            rows = tx.fetchall(sql, (*params, limit))
        return [
            EventTotals(
                key=str(row[0]),
                events=int(row[1]),
                sums={n: float(row[2 + i] or 0) for i, n in enumerate(names)},
            )
            for row in rows
        ]

    async def sum_events(
        self,
        *,
        types: Sequence[str],
        sums: Mapping[str, Sequence[JsonPath]],
        group_by: str | Sequence[Sequence[JsonPath]],
        since: float | None = None,
        limit: int = 1000,
    ) -> list[EventTotals]:
        return await self._call(self._sum_events, types, sums, group_by, since, limit)

    def _count_runs(self) -> dict[RunState, int]:
        with self._d.read() as tx:
            rows = tx.fetchall("SELECT state, COUNT(*) FROM kernos_runs GROUP BY state")
        return {RunState(r[0]): int(r[1]) for r in rows}

    async def count_runs(self) -> dict[RunState, int]:
        return await self._call(self._count_runs)

    def _load_journal(self, run_id: str, after_seq: int) -> list[Event]:
        with self._d.read() as tx:
            rows = tx.fetchall(
                f"SELECT {_JOURNAL_COLUMNS} "
                "FROM kernos_journal WHERE run_id = ? AND seq > ? ORDER BY seq",
                (run_id, after_seq),
            )
        return [_event(r) for r in rows]

    async def load_journal(self, run_id: str, *, after_seq: int = 0) -> list[Event]:
        return await self._call(self._load_journal, run_id, after_seq)

    # -- read-only views for the dashboard (the SQL is in _dashboard.py) -------------------

    def _list_runs_page(self, query: RunQuery) -> list[Run]:
        with self._d.read() as tx:
            return [_run(r) for r in select_runs_page(tx, _RUN_COLUMNS, query)]

    async def list_runs_page(self, query: RunQuery) -> list[Run]:
        """A keyset page of runs, newest first: ``query.before`` (older) or ``query.after``
        (newer) than a run's id, each page one index range however deep."""
        return await self._call(self._list_runs_page, query)

    def _journal_page(self, run_id: str, after_seq: int, limit: int) -> list[Event]:
        with self._d.read() as tx:
            rows = select_journal_page(tx, _JOURNAL_COLUMNS, run_id, after_seq, limit)
        return [_event(r) for r in rows]

    async def journal_page(self, run_id: str, *, after_seq: int, limit: int) -> list[Event]:
        """At most ``limit`` events of a run after ``after_seq``: a page of a long journal
        without reading the rest of it."""
        return await self._call(self._journal_page, run_id, after_seq, limit)

    def _journal_extent(self, run_id: str) -> tuple[int, int]:
        with self._d.read() as tx:
            return journal_extent(tx, run_id)

    async def journal_extent(self, run_id: str) -> tuple[int, int]:
        """How many events a run's journal holds, and its last seq ((0, 0): none)."""
        return await self._call(self._journal_extent, run_id)

    def _sum_run_events(
        self,
        run_ids: Sequence[str],
        types: Sequence[str],
        sums: Mapping[str, Sequence[JsonPath]],
    ) -> dict[str, dict[str, float]]:
        with self._d.read() as tx:
            return sum_run_events(tx, self._d, run_ids, types, sums)

    async def sum_run_events(
        self,
        run_ids: Sequence[str],
        *,
        types: Sequence[str],
        sums: Mapping[str, Sequence[JsonPath]],
    ) -> dict[str, dict[str, float]]:
        """Sums of payload fields over each named run's events of ``types`` (a page of the
        runs list's costs in one query); runs without such events are left out."""
        return await self._call(self._sum_run_events, list(run_ids), list(types), dict(sums))

    def _event_fields(
        self,
        types: Sequence[str],
        fields: Mapping[str, Sequence[JsonPath]],
        since: float | None,
        tenant: str | None,
        limit: int,
    ) -> list[EventFields]:
        with self._d.read() as tx:
            return select_event_fields(
                tx, self._d, types=types, fields=fields, since=since, tenant=tenant, limit=limit
            )

    async def event_fields(
        self,
        *,
        types: Sequence[str],
        fields: Mapping[str, Sequence[JsonPath]],
        since: float | None = None,
        tenant: str | None = None,
        limit: int = 10_000,
    ) -> list[EventFields]:
        """The newest ``limit`` events of ``types`` since ``since`` (of ``tenant``'s runs),
        each with the payload fields asked for, as text: the first of a field's paths that is
        present. A projection of the journal (provider health)."""
        return await self._call(self._event_fields, list(types), dict(fields), since, tenant, limit)

    def _sum_events_over_time(
        self,
        types: Sequence[str],
        sums: Mapping[str, Sequence[JsonPath]],
        group_by: str | Sequence[Sequence[JsonPath]],
        bucket: float,
        since: float,
        tenant: str | None,
        limit: int,
    ) -> list[TimedTotals]:
        with self._d.read() as tx:
            return sum_events_over_time(
                tx,
                self._d,
                types=types,
                sums=sums,
                group_by=group_by,
                bucket=bucket,
                since=since,
                tenant=tenant,
                limit=limit,
            )

    async def sum_events_over_time(
        self,
        *,
        types: Sequence[str],
        sums: Mapping[str, Sequence[JsonPath]],
        group_by: str | Sequence[Sequence[JsonPath]],
        bucket: float,
        since: float,
        tenant: str | None = None,
        limit: int = 10_000,
    ) -> list[TimedTotals]:
        """``sum_events`` per time bucket of ``bucket`` seconds since ``since``, grouped by
        ``agent``, ``tenant`` or payload fields, oldest bucket first (spend over time)."""
        return await self._call(
            self._sum_events_over_time,
            list(types),
            dict(sums),
            group_by,
            bucket,
            since,
            tenant,
            limit,
        )

    # -- claiming and leases --------------------------------------------------------------

    def _claim(
        self,
        worker_id: str,
        agents: Sequence[tuple[str, str]],
        limit: int,
        lease_ttl: float,
        agent_limits: dict[str, int],
        tenants: TenantLimits | None,
    ) -> list[Claim]:
        if limit <= 0 or not agents:
            return []
        keys = [f"{name}@{version}" for name, version in agents]
        with self._d.write() as tx:
            now = self._d.now(tx)  # leases live on the database's clock, not each worker's
            allowance = Allowance(agents=self._agent_allowance(tx, now, agent_limits))
            if tenants is None:
                rows = self._candidates(tx, now, keys, allowance.blocked_agents(), set(), limit)
                chosen = choose_in_order(rows, limit, allowance)
            else:
                chosen = self._choose_fairly(tx, now, keys, limit, allowance, tenants)
            if not chosen:
                return []
            expires = now + lease_ttl
            ids = [r.id for r in chosen]
            tx.execute(
                "UPDATE kernos_runs SET state = 'running', waiting_for = NULL, lease_owner = ?, "
                "lease_token = lease_token + 1, lease_expires_at = ?, claims = claims + 1, "
                f"updated_at = ? WHERE id IN ({placeholders(len(ids))})",
                (worker_id, expires, now, *ids),
            )
        claims = []
        for r in chosen:
            token = r.lease_token + 1
            owned = Run(
                **{
                    **{f: getattr(r, f) for f in Run.__slots__},
                    "state": RunState.RUNNING,
                    "waiting_for": None,
                    "lease_owner": worker_id,
                    "lease_token": token,
                    "lease_expires_at": expires,
                    "claims": r.claims + 1,
                    "updated_at": now,
                }
            )
            claims.append(Claim(run=owned, token=token))
        return claims

    def _agent_allowance(self, tx: Tx, now: float, agent_limits: dict[str, int]) -> dict[str, int]:
        """What each limited agent may still start, counted under its lock (sorted: agents'
        locks are taken before tenants', each kind in one order, so claims never deadlock)."""
        allowance: dict[str, int] = {}
        for agent in sorted(agent_limits):
            self._d.lock_agent(tx, agent)
            row = tx.fetchone(
                "SELECT COUNT(*) FROM kernos_runs WHERE agent = ? AND state = 'running' "
                "AND lease_expires_at >= ?",
                (agent, now),
            )
            allowance[agent] = agent_limits[agent] - int(row[0] if row else 0)
        return allowance

    def _candidates(
        self,
        tx: Tx,
        now: float,
        keys: Sequence[str],
        skip_agents: set[str],
        skip_tenants: set[str],
        window: int,
        after: Run | None = None,
    ) -> list[Run]:
        """Up to ``window`` claimable runs in the claim order, locked (skipping rows another
        claim holds), leaving out ``skip_*`` and, when ``after`` is given, every run up to it."""
        sql = (
            f"SELECT {_RUN_COLUMNS} FROM kernos_runs "
            "WHERE ((state = 'queued' AND run_at <= ?) "
            "OR (state = 'running' AND lease_expires_at < ?)) "
            f"AND agent || '@' || agent_version IN ({placeholders(len(keys))})"
        )
        params: list[Any] = [now, now, *keys]
        if skip_agents:
            sql += f" AND agent NOT IN ({placeholders(len(skip_agents))})"
            params += sorted(skip_agents)
        if skip_tenants:
            sql += f" AND tenant NOT IN ({placeholders(len(skip_tenants))})"
            params += sorted(skip_tenants)
        if after is not None:
            sql += (
                " AND (priority < ? OR (priority = ? AND (run_at > ? OR (run_at = ? AND id > ?))))"
            )
            params += [after.priority, after.priority, after.run_at, after.run_at, after.id]
        sql += f" ORDER BY priority DESC, run_at, id LIMIT ?{self._d.lock_skip}"
        return [_run(row) for row in tx.fetchall(sql, (*params, window))]

    def _choose_fairly(
        self,
        tx: Tx,
        now: float,
        keys: Sequence[str],
        limit: int,
        allowance: Allowance,
        tenants: TenantLimits,
    ) -> list[Run]:
        """The runs a claim takes with ``[tenants]`` configured: round-robin across tenants
        within each priority, no tenant over its limit across the fleet.

        1. Count each limited tenant's running runs (unlocked: an estimate) and leave out the
           tenants at their limit: a flooding tenant's runs beyond its limit are never read.
        2. Read candidates in windows of ``FAIR_WINDOW`` x ``limit`` rows (at most
           ``MAX_WINDOWS`` of them): a window that is full and holds all a tenant could get
           is followed by one that leaves that tenant out, to reach the tenants queued behind it.
        3. Lock the limited tenants among the candidates (after the agents' locks, in one
           order) and count them again: that count, under the lock, is the one that holds.
        """
        running = (
            count_running(tx, now, None if tenants.default is not None else sorted(tenants.limits))
            if tenants.limited
            else {}
        )
        full = {t for t, left in tenant_allowance(running, running, tenants).items() if left <= 0}
        candidates = self._fair_candidates(tx, now, keys, limit, allowance, tenants, running, full)
        locked = limited_tenants(candidates, tenants)
        if locked:
            self._d.lock_tenants(tx, locked)
            allowance.tenants = tenant_allowance(locked, count_running(tx, now, locked), tenants)
        return choose_round_robin(candidates, limit, allowance)

    def _fair_candidates(
        self,
        tx: Tx,
        now: float,
        keys: Sequence[str],
        limit: int,
        allowance: Allowance,
        tenants: TenantLimits,
        running: dict[str, int],
        full: set[str],
    ) -> list[Run]:
        window = FAIR_WINDOW * limit
        skip_agents, skip_tenants = allowance.blocked_agents(), set(full)
        candidates: list[Run] = []
        for _ in range(MAX_WINDOWS):
            after = candidates[-1] if candidates else None
            page = self._candidates(tx, now, keys, skip_agents, skip_tenants, window, after)
            candidates += page
            if len(page) < window:
                break  # nothing more is claimable
            estimate = Allowance(
                agents=dict(allowance.agents),
                tenants=tenant_allowance({r.tenant for r in candidates}, running, tenants),
            )
            agents, tenants_full = saturated(candidates, limit, estimate)
            if agents <= skip_agents and tenants_full <= skip_tenants:
                break  # another window would only bring more of the same tenants
            skip_agents |= agents
            skip_tenants |= tenants_full
        return candidates

    async def claim(
        self,
        *,
        worker_id: str,
        agents: Sequence[tuple[str, str]],
        limit: int,
        lease_ttl: float,
        agent_limits: dict[str, int],
        tenant_limits: TenantLimits | None = None,
    ) -> list[Claim]:
        return await self._call(
            self._claim,
            worker_id,
            list(agents),
            limit,
            lease_ttl,
            dict(agent_limits),
            tenant_limits,
        )

    def _heartbeat(self, worker_id: str, leases: dict[str, int], lease_ttl: float) -> Heartbeat:
        if not leases:
            return Heartbeat(lost=frozenset(), control={})
        with self._d.write() as tx:
            return self._renew_leases(tx, self._d.now(tx), worker_id, leases, lease_ttl)

    def _renew_leases(
        self, tx: Tx, now: float, worker_id: str, leases: dict[str, int], lease_ttl: float
    ) -> Heartbeat:
        held: dict[str, tuple[int, str | None]] = {}
        for chunk in iter_chunks(sorted(leases), 500):
            rows = tx.fetchall(
                "UPDATE kernos_runs SET lease_expires_at = ? WHERE lease_owner = ? "
                f"AND state = 'running' AND id IN ({placeholders(len(chunk))}) "
                "RETURNING id, lease_token, control",
                (now + lease_ttl, worker_id, *chunk),
            )
            held.update({r[0]: (int(r[1]), r[2]) for r in rows})
        lost = frozenset(rid for rid, token in leases.items() if held.get(rid, (-1,))[0] != token)
        control = {
            rid: Control(c) if c else None for rid, (_, c) in held.items() if rid not in lost
        }
        return Heartbeat(lost=lost, control=control)

    async def heartbeat(
        self, *, worker_id: str, leases: dict[str, int], lease_ttl: float
    ) -> Heartbeat:
        return await self._call(self._heartbeat, worker_id, dict(leases), lease_ttl)

    # -- appending (the hot path) ---------------------------------------------------------

    async def append(self, run_id: str, token: int, events: Sequence[Event]) -> Control | None:
        """Commit events to the run's journal, or raise ``LeaseLost`` and write nothing.

        Returns the pending control request (pause, cancel) if a person made one, so that the
        owner acts on it at the next step boundary; the events are committed either way.
        """
        now = time.time()
        rows = [_event_params(run_id, ev, now) for ev in events]  # payloads encoded once
        for ev, row in zip(events, rows, strict=True):
            if len(row[6]) > self._max_payload:
                self._check_events([ev])
        held = self._committer.commit_now(run_id, token, rows)
        if held is None:
            held = await self._committer.submit(run_id, token, rows)
        elif time.monotonic() - self._yielded_at > _YIELD_EVERY:
            # committed without a suspension point: a run of quick steps must not starve the
            # loop (heartbeats, other runs, signals)
            self._yielded_at = time.monotonic()
            await asyncio.sleep(0)
        if held:
            return None
        return await self._call(self._append_with_control, run_id, token, list(events))

    def _append_with_control(
        self, run_id: str, token: int, events: Sequence[Event]
    ) -> Control | None:
        """The quiet fence failed: the lease is lost, or a control request is pending."""
        with self._d.write() as tx:
            control, _ = self._lock_owned(tx, run_id, token)
            self._insert_events(tx, run_id, events, token)
            return control

    def _lock_owned(self, tx: Tx, run_id: str, token: int) -> tuple[Control | None, str | None]:
        """Lock the run's row if ``token`` still owns it; its pending request and reason."""
        row = tx.fetchone(
            "SELECT lease_token, state, control, control_reason FROM kernos_runs "
            f"WHERE id = ?{self._d.lock_rows}",
            (run_id,),
        )
        if row is None or row[0] != token or row[1] != "running":
            raise LeaseLost(run_id)
        return (Control(row[2]) if row[2] else None), row[3]

    def _own(self, tx: Tx, run_id: str, token: int) -> None:
        if tx.execute(_OWN, (time.time(), run_id, token)) != 1:
            raise LeaseLost(run_id)

    def _insert_events(
        self, tx: Tx, run_id: str, events: Sequence[Event], token: int | None = None
    ) -> None:
        """Insert events in an open transaction; ``token`` is the writing owner's lease (None
        for a write no lease holder makes: a person's control, a message, the store's own)."""
        now = time.time()
        for ev in events:
            tx.execute(_INSERT_EVENT, (*_event_params(run_id, ev, now), token))

    def _wake_parent(self, tx: Tx, child_id: str, parent_id: str) -> None:
        # Lock the parent's row whatever its state: a parent suspending on this child at the
        # same moment then either sees the child ended or is woken here (see module docstring).
        row = tx.fetchone(
            f"SELECT state, waiting_for FROM kernos_runs WHERE id = ?{self._d.lock_rows}",
            (parent_id,),
        )
        if row and row[0] == "waiting" and row[1] == f"child:{child_id}":
            tx.execute(
                "UPDATE kernos_runs SET state = 'queued', waiting_for = NULL, run_at = ?, "
                "updated_at = ? WHERE id = ?",
                (time.time(), time.time(), parent_id),
            )
            self._d.notify(tx)

    def _finish(
        self,
        run_id: str,
        token: int,
        state: RunState,
        events: Sequence[Event],
        output: str | None,
        error: str | None,
    ) -> None:
        now = time.time()
        with self._d.write() as tx:
            reason_row = tx.fetchone(
                "SELECT control_reason FROM kernos_runs WHERE id = ?", (run_id,)
            )
            row = tx.fetchone(
                "UPDATE kernos_runs SET state = ?, output = ?, error = ?, waiting_for = NULL, "
                "control = NULL, control_reason = NULL, lease_owner = NULL, "
                "lease_expires_at = NULL, updated_at = ? "
                "WHERE id = ? AND lease_token = ? AND state = 'running' RETURNING parent_id",
                (state.value, output, error, now, run_id, token),
            )
            if row is None:
                raise LeaseLost(run_id)
            if state == RunState.CANCELLED and reason_row is not None:
                events = _with_reason(events, "run_cancelled", reason_row[0])
            self._insert_events(tx, run_id, events, token)
            if state != RunState.COMPLETED:
                self._cancel_children(tx, run_id, f"parent run {run_id} ended {state.value}")
            tx.execute("DELETE FROM kernos_timers WHERE run_id = ?", (run_id,))
            release_run_holds(tx, run_id, now, self._d.lock_rows)
            if row[0] is not None:
                self._wake_parent(tx, run_id, row[0])

    async def finish(
        self,
        run_id: str,
        token: int,
        *,
        state: RunState,
        events: Sequence[Event],
        output: str | None = None,
        error: str | None = None,
    ) -> None:
        if output is not None:
            self.check_size(f"the output of run {run_id}", output)
        self._check_events(events)
        await self._call(self._finish, run_id, token, state, list(events), output, error)

    def _suspend(
        self,
        run_id: str,
        token: int,
        waiting_for: str,
        events: Sequence[Event],
        timer: Timer | None,
        wake_check: WakeCheck,
        cancel_delivered: bool,
    ) -> SuspendResult:
        now = time.time()
        with self._d.write() as tx:
            control, reason = self._lock_owned(tx, run_id, token)
            if control == Control.CANCEL and not cancel_delivered:
                return SuspendResult.CANCEL_PENDING
            if self._wake_pending(tx, run_id, wake_check):
                return SuspendResult.WAKE_PENDING
            paused = control == Control.PAUSE
            tx.execute(
                "UPDATE kernos_runs SET state = ?, waiting_for = ?, control = NULL, "
                "control_reason = NULL, lease_owner = NULL, lease_expires_at = NULL, updated_at = ? WHERE id = ?",
                ("paused" if paused else "waiting", waiting_for, now, run_id),
            )
            self._insert_events(tx, run_id, events, token)
            if paused:
                # The owner's last act: no append can race this one.
                self._control_event(tx, run_id, "run_paused", reason)
            tx.execute("DELETE FROM kernos_timers WHERE run_id = ?", (run_id,))
            if timer is not None:
                tx.execute(
                    "INSERT INTO kernos_timers (run_id, step, fire_at) VALUES (?, ?, ?)",
                    (run_id, timer.step, timer.fire_at),
                )
            return SuspendResult.PAUSED if paused else SuspendResult.SUSPENDED

    def _wake_pending(self, tx: Tx, run_id: str, wake_check: WakeCheck) -> bool:
        if isinstance(wake_check, ApprovalWait):
            found = get_approval(tx, wake_check.approval_id)
            return found is not None and found.state != ApprovalState.PENDING
        if isinstance(wake_check, MessageWait):
            return (
                tx.fetchone(
                    "SELECT 1 FROM kernos_messages WHERE run_id = ? AND topic = ? "
                    "AND consumed_step IS NULL LIMIT 1",
                    (run_id, wake_check.topic),
                )
                is not None
            )
        if isinstance(wake_check, ChildWait):
            row = tx.fetchone("SELECT state FROM kernos_runs WHERE id = ?", (wake_check.child_id,))
            return row is not None and RunState(row[0]).terminal
        return False

    async def suspend(
        self,
        run_id: str,
        token: int,
        *,
        waiting_for: str,
        events: Sequence[Event],
        timer: Timer | None,
        wake_check: WakeCheck,
        cancel_delivered: bool = False,
    ) -> SuspendResult:
        """Park the run until woken; holds nothing in the worker afterwards (guarantee 4).

        Returns without parking when what it would wait for is there already, or when a cancel
        is pending that the agent has not been given yet (``cancel_delivered`` False).
        """
        self._check_events(events)
        return await self._call(
            self._suspend,
            run_id,
            token,
            waiting_for,
            list(events),
            timer,
            wake_check,
            cancel_delivered,
        )

    def _release(self, run_id: str, token: int, state: RunState, events: Sequence[Event]) -> None:
        now = time.time()
        with self._d.write() as tx:
            control, reason = self._lock_owned(tx, run_id, token)
            if state == RunState.PAUSED and control != Control.PAUSE:
                # Resumed before the worker acted on the pause: hand the run back instead.
                state = RunState.QUEUED
                events = [
                    replace(e, type="run_released", payload={"why": "pause withdrawn"})
                    if e.type == "run_paused"
                    else e
                    for e in events
                ]
            if state == RunState.PAUSED:
                events = _with_reason(events, "run_paused", reason)
            tx.execute(
                "UPDATE kernos_runs SET state = ?, lease_owner = NULL, lease_expires_at = NULL, "
                "run_at = ?, updated_at = ?"
                + (", control = NULL, control_reason = NULL" if state == RunState.PAUSED else "")
                + " WHERE id = ?",
                (state.value, now, now, run_id),
            )
            self._insert_events(tx, run_id, events, token)
            if state == RunState.QUEUED:
                self._d.notify(tx)

    async def release(
        self, run_id: str, token: int, *, state: RunState, events: Sequence[Event]
    ) -> None:
        """Give the run back: ``queued`` (a draining worker) or ``paused`` (a person asked)."""
        await self._call(self._release, run_id, token, state, list(events))

    def _take_message(
        self,
        run_id: str,
        token: int,
        topic: str,
        step: int,
        before: Sequence[Event],
        make_event: Callable[[Message], Event],
    ) -> Message | None:
        # An agent looks at its mailbox every turn and almost always finds it empty: a read
        # says so without the write transaction (SQLite's write lock, PostgreSQL's row locks).
        with self._d.read() as tx:
            waiting = tx.fetchone(
                "SELECT 1 FROM kernos_messages WHERE run_id = ? AND topic = ? "
                "AND consumed_step IS NULL LIMIT 1",
                (run_id, topic),
            )
        if waiting is None:
            return None
        with self._d.write() as tx:
            self._own(tx, run_id, token)
            row = tx.fetchone(
                "SELECT id, run_id, topic, payload, sender, created_at, consumed_step "
                "FROM kernos_messages WHERE run_id = ? AND topic = ? AND consumed_step IS NULL "
                f"ORDER BY id LIMIT 1{self._d.lock_rows}",
                (run_id, topic),
            )
            if row is None:
                return None
            message = Message(row[0], row[1], row[2], row[3], row[4], row[5], step)
            tx.execute("UPDATE kernos_messages SET consumed_step = ? WHERE id = ?", (step, row[0]))
            self._insert_events(tx, run_id, [*before, make_event(message)], token)
            return message

    def _waiting_topics(self, run_id: str) -> frozenset[str]:
        with self._d.read() as tx:
            rows = tx.fetchall(
                "SELECT DISTINCT topic FROM kernos_messages WHERE run_id = ? "
                "AND consumed_step IS NULL",
                (run_id,),
            )
        return frozenset(str(r[0]) for r in rows)

    async def waiting_topics(self, run_id: str) -> frozenset[str]:
        """The topics on which unconsumed messages wait for ``run_id`` (one cheap read: an
        agent looks at several topics every turn, and they are almost always empty)."""
        return await self._call(self._waiting_topics, run_id)

    async def take_message(
        self,
        run_id: str,
        token: int,
        *,
        topic: str,
        step: int,
        before: Sequence[Event] = (),
        make_event: Callable[[Message], Event],
    ) -> Message | None:
        """Consume the oldest message on ``topic`` and journal it, in one transaction.

        ``before`` are events committed in the same transaction ahead of the message's own;
        when no message is waiting, nothing at all is written.
        """
        return await self._call(
            self._take_message, run_id, token, topic, step, list(before), make_event
        )

    def _spawn(self, run_id: str, token: int, events: Sequence[Event], child: NewRun) -> Run:
        with self._d.write() as tx:
            self._own(tx, run_id, token)
            existing = tx.fetchone(
                f"SELECT {_RUN_COLUMNS} FROM kernos_runs WHERE id = ?", (child.id,)
            )
            self._insert_events(tx, run_id, events, token)
            if existing is not None:
                return _run(existing)
            return self._insert_run(tx, child, time.time())

    async def spawn(
        self, run_id: str, token: int, *, events: Sequence[Event], child: NewRun
    ) -> Run:
        """Create a child run and journal that in the parent, atomically."""
        self.check_size(f"the input of child run {child.id}", child.input)
        self._check_events(events)
        return await self._call(self._spawn, run_id, token, list(events), child)

    def _fire_timers(self) -> int:
        now = time.time()
        with self._d.read() as tx:
            any_due = tx.fetchone("SELECT 1 FROM kernos_timers WHERE fire_at <= ? LIMIT 1", (now,))
        if any_due is None:
            return 0
        with self._d.write() as tx:
            # Delete first and wake exactly what was deleted: a timer committed in between is
            # left for the next round instead of being dropped unseen.
            due = sorted(
                {
                    r[0]
                    for r in tx.fetchall(
                        "DELETE FROM kernos_timers WHERE fire_at <= ? RETURNING run_id", (now,)
                    )
                }
            )
            woken = 0
            for chunk in iter_chunks(due, 500):
                woken += tx.execute(
                    "UPDATE kernos_runs SET state = 'queued', waiting_for = NULL, run_at = ?, "
                    f"updated_at = ? WHERE state = 'waiting' AND id IN ({placeholders(len(chunk))})",
                    (now, now, *chunk),
                )
            if woken:
                self._d.notify(tx)
            return woken

    async def fire_timers(self) -> int:
        """Wake every waiting run whose timer is due; each timer fires once fleet-wide."""
        return await self._call(self._fire_timers)

    # -- people and other runs acting on a run --------------------------------------------

    def _control_event(self, tx: Tx, run_id: str, kind: str, reason: str | None) -> None:
        """Journal a control action on a run no worker owns (so no append can race it)."""
        row = tx.fetchone(
            "SELECT COALESCE(MAX(seq), 0) FROM kernos_journal WHERE run_id = ?", (run_id,)
        )
        seq = int(row[0] if row else 0) + 1
        payload = {"reason": reason} if reason else {}
        self._insert_events(tx, run_id, [Event(seq=seq, type=kind, payload=payload)])

    def _send_message(self, run_id: str, topic: str, payload: str, sender: str | None) -> Message:
        with self._d.write() as tx:
            message = self._deliver(tx, run_id, topic, payload, sender)
            run = self._get(tx, run_id)
            self._audit_control(tx, sender, "run.message", run, {"topic": topic, "id": message.id})
            return message

    def _deliver(
        self, tx: Any, run_id: str, topic: str, payload: str, sender: str | None
    ) -> Message:
        """Insert a message for ``run_id`` and wake it if it waits for ``topic``."""
        now = time.time()
        run = self._get(tx, run_id, self._d.lock_rows)
        if run.state.terminal:
            raise InvalidState(
                f"run {run_id} is {run.state.value}; a message to it would never be read"
            )
        row = tx.fetchone(
            "INSERT INTO kernos_messages (run_id, topic, payload, sender, created_at) "
            "VALUES (?, ?, ?, ?, ?) RETURNING id",
            (run_id, topic, payload, sender, now),
        )
        assert row is not None
        if run.state == RunState.WAITING and run.waiting_for == f"message:{topic}":
            tx.execute(
                "UPDATE kernos_runs SET state = 'queued', waiting_for = NULL, run_at = ?, "
                "updated_at = ? WHERE id = ?",
                (now, now, run_id),
            )
            self._d.notify(tx)
        return Message(int(row[0]), run_id, topic, payload, sender, now, None)

    def _send_from_run(
        self, run_id: str, token: int, events: Sequence[Event], to: str, topic: str, payload: str
    ) -> Message:
        with self._d.write() as tx:
            self._own(tx, run_id, token)
            self._insert_events(tx, run_id, events, token)
            return self._deliver(tx, to, topic, payload, run_id)

    async def send_from_run(
        self,
        run_id: str,
        token: int,
        *,
        events: Sequence[Event],
        to: str,
        topic: str,
        payload: str,
    ) -> Message:
        """A run's message to another run, journaled in the sender in the same transaction:
        sent exactly once, however often the sender is replayed."""
        self.check_size(f"the message from run {run_id} to run {to}", payload)
        self._check_events(events)
        return await self._call(
            self._send_from_run, run_id, token, list(events), to, topic, payload
        )

    async def send_message(
        self, run_id: str, topic: str, payload: str, *, sender: str | None = None
    ) -> Message:
        """Put a message in the run's mailbox for ``topic``; wakes the run if it waits on it."""
        self.check_size(f"the message to run {run_id}", payload)
        return await self._call(self._send_message, run_id, topic, payload, sender)

    def _audit_control(
        self, tx: Tx, by: str | None, action: str, run: Run, details: dict[str, Any]
    ) -> None:
        """A person's action on a run, in the audit log (same transaction as the action)."""
        append_audit(
            tx,
            postgres=self._d.name == "postgresql",
            actor=by or "unknown",
            action=action,
            tenant=run.tenant,
            target=run.id,
            details={k: v for k, v in details.items() if v is not None},
        )

    def _pause(self, run_id: str, reason: str | None, by: str | None) -> Run:
        now = time.time()
        with self._d.write() as tx:
            run = self._get(tx, run_id, self._d.lock_rows)
            self._audit_control(tx, by, "run.pause", run, {"reason": reason})
            if run.state.terminal or run.state == RunState.PAUSED:
                raise InvalidState(f"run {run_id} is {run.state.value}; only a live run pauses")
            if run.state == RunState.RUNNING:
                tx.execute(
                    "UPDATE kernos_runs SET control = 'pause', control_reason = ?, updated_at = ? "
                    "WHERE id = ?",
                    (reason, now, run_id),
                )
            else:
                tx.execute(
                    "UPDATE kernos_runs SET state = 'paused', updated_at = ? WHERE id = ?",
                    (now, run_id),
                )
                self._control_event(tx, run_id, "run_paused", reason)
            return self._get(tx, run_id)

    async def pause(self, run_id: str, *, reason: str | None = None, by: str | None = None) -> Run:
        """Pause now if no worker runs it, else at its next step boundary (audited as ``by``)."""
        return await self._call(self._pause, run_id, reason, by)

    def _resume(self, run_id: str, reason: str | None, by: str | None) -> Run:
        now = time.time()
        with self._d.write() as tx:
            run = self._get(tx, run_id, self._d.lock_rows)
            self._audit_control(tx, by, "run.resume", run, {"reason": reason})
            if run.state == RunState.RUNNING and run.control == Control.PAUSE:
                tx.execute(
                    "UPDATE kernos_runs SET control = NULL, control_reason = NULL, updated_at = ? "
                    "WHERE id = ?",
                    (now, run_id),
                )
            elif run.state == RunState.PAUSED:
                tx.execute(
                    "UPDATE kernos_runs SET state = 'queued', waiting_for = NULL, run_at = ?, "
                    "updated_at = ? WHERE id = ?",
                    (now, now, run_id),
                )
                self._control_event(tx, run_id, "run_resumed", reason)
                self._d.notify(tx)
            else:
                raise InvalidState(
                    f"run {run_id} is {run.state.value}, not paused; there is nothing to resume"
                )
            return self._get(tx, run_id)

    async def resume(self, run_id: str, *, reason: str | None = None, by: str | None = None) -> Run:
        return await self._call(self._resume, run_id, reason, by)

    def _cancel(self, run_id: str, reason: str | None, by: str | None) -> Run:
        with self._d.write() as tx:
            run = self._get(tx, run_id, self._d.lock_rows)
            if run.state.terminal:
                raise InvalidState(f"run {run_id} is {run.state.value} already")
            self._audit_control(tx, by, "run.cancel", run, {"reason": reason})
            self._cancel_in(tx, run, reason)
            return self._get(tx, run_id)

    def _cancel_children(self, tx: Tx, parent_id: str, reason: str) -> None:
        """A parent that ends failed or cancelled takes its unfinished children with it."""
        rows = tx.fetchall(
            f"SELECT {_RUN_COLUMNS} FROM kernos_runs WHERE parent_id = ? "
            "AND state NOT IN ('completed', 'failed', 'cancelled')",
            (parent_id,),
        )
        for child in map(_run, rows):
            if child.control != Control.CANCEL:
                self._cancel_in(tx, child, reason)

    def _cancel_in(self, tx: Tx, run: Run, reason: str | None) -> None:
        now = time.time()
        run_id = run.id
        if run.state == RunState.RUNNING:
            tx.execute(
                "UPDATE kernos_runs SET control = 'cancel', control_reason = ?, "
                "updated_at = ? WHERE id = ?",
                (reason, now, run_id),
            )
        elif run.claims == 0:
            tx.execute(
                "UPDATE kernos_runs SET state = 'cancelled', control = NULL, "
                "waiting_for = NULL, updated_at = ? WHERE id = ?",
                (now, run_id),
            )
            self._control_event(tx, run_id, "run_cancelled", reason)
            if run.parent_id is not None:
                self._wake_parent(tx, run_id, run.parent_id)
        else:
            # The agent started: wake it so it gets Cancelled where it waits, and cleans up.
            tx.execute(
                "UPDATE kernos_runs SET state = 'queued', control = 'cancel', "
                "control_reason = ?, run_at = ?, updated_at = ? WHERE id = ?",
                (reason, now, now, run_id),
            )
            self._control_event(tx, run_id, "cancel_requested", reason)
            self._d.notify(tx)

    async def cancel(self, run_id: str, *, reason: str | None = None, by: str | None = None) -> Run:
        return await self._call(self._cancel, run_id, reason, by)

    # -- schedules ------------------------------------------------------------------------

    def _add_schedule(self, s: Schedule) -> Schedule:
        self.check_size(f"the input of schedule {s.name}", s.input)
        with self._d.write() as tx:
            if tx.fetchone("SELECT 1 FROM kernos_schedules WHERE name = ?", (s.name,)):
                raise InvalidInput(
                    f"a schedule named {s.name!r} exists already; remove it first "
                    f"(kernos schedule remove {s.name})"
                )
            tx.execute(
                "INSERT INTO kernos_schedules (name, agent, cron, input, priority, next_fire_at, "
                "created_at, tenant) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    s.name,
                    s.agent,
                    s.cron,
                    s.input,
                    s.priority,
                    s.next_fire_at,
                    s.created_at,
                    s.tenant,
                ),
            )
        return s

    async def add_schedule(self, schedule: Schedule) -> Schedule:
        return await self._call(self._add_schedule, schedule)

    def _list_schedules(self) -> list[Schedule]:
        with self._d.read() as tx:
            rows = tx.fetchall(
                "SELECT name, agent, cron, input, priority, next_fire_at, created_at, tenant "
                "FROM kernos_schedules ORDER BY name"
            )
        return [Schedule(*r) for r in rows]

    async def list_schedules(self) -> list[Schedule]:
        return await self._call(self._list_schedules)

    def _remove_schedule(self, name: str) -> None:
        with self._d.write() as tx:
            if tx.execute("DELETE FROM kernos_schedules WHERE name = ?", (name,)) != 1:
                raise ScheduleNotFound(
                    f"no schedule named {name!r} (kernos schedule list shows them)"
                )

    async def remove_schedule(self, name: str) -> None:
        await self._call(self._remove_schedule, name)

    def _fire_schedules(
        self, versions: dict[str, str], next_fire: Callable[[str, float], float]
    ) -> list[Run]:
        now = time.time()
        with self._d.read() as tx:
            due = [
                Schedule(*r)
                for r in tx.fetchall(
                    "SELECT name, agent, cron, input, priority, next_fire_at, created_at, tenant "
                    "FROM kernos_schedules WHERE next_fire_at <= ?",
                    (now,),
                )
            ]
            # a retired version is not fired on: the newest one that is not, else none
            chosen = {
                s.name: schedule_version(tx, s.agent, versions[s.agent])
                for s in due
                if s.agent in versions
            }
        fired: list[Run] = []
        for s in due:
            version = chosen.get(s.name)
            if version is None:
                continue
            with self._d.write() as tx:
                # Conditional on the tick read above: of all workers, exactly one advances it.
                if (
                    tx.execute(
                        "UPDATE kernos_schedules SET next_fire_at = ? "
                        "WHERE name = ? AND next_fire_at = ?",
                        (next_fire(s.cron, now), s.name, s.next_fire_at),
                    )
                    != 1
                ):
                    continue
                new = NewRun(
                    id=new_run_id(),
                    agent=s.agent,
                    agent_version=version,
                    input=s.input,
                    priority=s.priority,
                    schedule=s.name,
                    tenant=s.tenant,
                )
                fired.append(self._insert_run(tx, new, now))
        return fired

    async def fire_schedules(
        self, *, versions: dict[str, str], next_fire: Callable[[str, float], float]
    ) -> list[Run]:
        """Start a run for every due schedule of an agent in ``versions``, once per tick."""
        return await self._call(self._fire_schedules, dict(versions), next_fire)

    # -- long-term memory -----------------------------------------------------------------

    def _check_memory(self, new: NewMemory) -> tuple[str, list[float] | None]:
        """Everything a put can get wrong, found before the transaction: a bad put writes
        nothing. Returns the metadata as JSON and the embedding as floats."""
        check_name("namespace", new.namespace)
        if new.tenant is not None:
            check_name("tenant", new.tenant)
        if not isinstance(new.text, str) or not new.text.strip():
            raise InvalidInput(f"a memory's text must be a non-empty string, not {new.text!r}")
        self.check_size(f"the text of a memory in {new.namespace!r}", new.text)
        check_text(f"the text of a memory in {new.namespace!r}", new.text)
        if new.run_id is not None:
            check_text("the run id of a memory", new.run_id)
        metadata = encode_metadata(new.metadata)
        self.check_size(f"the metadata of a memory in {new.namespace!r}", metadata)
        if new.embedding is None:
            return metadata, None
        vector = check_embedding(new.embedding)
        if 8 * len(vector) > self._max_payload:
            raise InvalidInput(
                f"an embedding of {len(vector)} dimensions is {8 * len(vector)} bytes, over "
                f"the limit of {self._max_payload} bytes"
            )
        return metadata, vector

    def _put_memory(self, new: NewMemory) -> Memory:
        metadata, vector = self._check_memory(new)
        memory = Memory(
            id=new.id or new_run_id(),
            namespace=new.namespace,
            text=new.text,
            metadata=json.loads(metadata),
            tenant=new.tenant,
            run_id=new.run_id,
            embedding=vector,
            created_at=time.time(),
        )
        with self._d.write() as tx:
            tx.execute(
                "INSERT INTO kernos_memories (id, namespace, tenant, text, metadata, run_id, "
                "embedding, dimensions, norm, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO NOTHING",
                (
                    memory.id,
                    memory.namespace,
                    memory.tenant,
                    memory.text,
                    metadata,
                    memory.run_id,
                    pack_embedding(vector) if vector is not None else None,
                    len(vector) if vector is not None else None,
                    norm(vector) if vector is not None else None,
                    memory.created_at,
                ),
            )
        return memory

    async def put_memory(self, memory: NewMemory) -> Memory:
        """Store a memory in one short transaction (its text indexed for search in the same
        one); ``InvalidInput`` for an empty namespace or text, text over the payload limit,
        metadata that is not a JSON object, or a malformed embedding, and then nothing is
        stored."""
        return await self._call(self._put_memory, memory)

    def _scope(
        self, namespace: str, tenant: str | None, pairs: Sequence[tuple[str, Any]] = ()
    ) -> tuple[str, list[Any]]:
        """The WHERE conditions that keep a search inside one namespace, tenant and filter
        (``tenant IS NULL`` for ``None``, which ``= ?`` would never match)."""
        where = ["m.namespace = ?", "m.tenant IS NULL" if tenant is None else "m.tenant = ?"]
        params: list[Any] = [namespace] if tenant is None else [namespace, tenant]
        for key, value in pairs:
            sql, values = self._d.json_key_equals("m.metadata", key, value)
            where.append(sql)
            params.extend(values)
        return " AND ".join(where), params

    def _search_memory(
        self,
        namespace: str,
        query: str,
        k: int,
        tenant: str | None,
        embedding: list[float] | None,
        metadata: Mapping[str, Any] | None,
    ) -> list[MemoryHit]:
        check_name("namespace", namespace)
        if tenant is not None:
            check_name("tenant", tenant)
        if not isinstance(query, str):
            raise InvalidInput(f"a memory search's query must be a string, not {type(query)}")
        if not isinstance(k, int) or not 1 <= k <= MAX_SEARCH_K:
            raise InvalidInput(f"k={k!r}: a memory search returns 1 to {MAX_SEARCH_K} hits")
        pairs = check_filter(metadata) if metadata else []
        vector = check_embedding(embedding) if embedding is not None else None
        scope, params = self._scope(namespace, tenant, pairs)
        terms = query_terms(query)
        # Fusion ranks more candidates from each side than it returns.
        pool = k if vector is None else max(4 * k, 20)
        text_rows: list[Row] = []
        vector_rows: list[Row] = []
        with self._d.read() as tx:
            if terms:
                ts = self._d.text_search(terms)
                text_rows = tx.fetchall(
                    f"SELECT {_MEMORY_COLUMNS}, {ts.score} AS score FROM {ts.source} "
                    f"WHERE {ts.condition} AND {scope} ORDER BY score DESC, m.seq DESC LIMIT ?",
                    (*ts.params, *params, pool),
                )
            if vector is not None:
                vector_rows = tx.fetchall(
                    f"SELECT m.seq, m.embedding, m.norm FROM kernos_memories m WHERE {scope} "
                    "AND m.dimensions = ? ORDER BY m.seq DESC LIMIT ?",
                    (*params, len(vector), VECTOR_SCAN_LIMIT),
                )
        if vector is None:
            return [MemoryHit(_memory(r), float(r[-1])) for r in text_rows]
        near = nearest(vector, [(int(r[0]), r[1], float(r[2])) for r in vector_rows], pool)
        return self._fuse(text_rows, near, k)

    def _fuse(
        self, text_rows: Sequence[Row], near: Sequence[tuple[int, float]], k: int
    ) -> list[MemoryHit]:
        """Rank by RRF; fetch the rows only the vector side found (deleted since: skipped)."""
        rows = {int(r[0]): r for r in text_rows}
        fused = fuse([list(rows), [seq for seq, _ in near]], k)
        missing = [seq for seq, _ in fused if seq not in rows]
        if missing:
            with self._d.read() as tx:
                for r in tx.fetchall(
                    f"SELECT {_MEMORY_COLUMNS} FROM kernos_memories m "
                    f"WHERE m.seq IN ({placeholders(len(missing))})",
                    missing,
                ):
                    rows[int(r[0])] = r
        return [MemoryHit(_memory(rows[seq]), score) for seq, score in fused if seq in rows]

    async def search_memory(
        self,
        namespace: str,
        query: str,
        *,
        k: int = 5,
        tenant: str | None = None,
        embedding: list[float] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> list[MemoryHit]:
        """The memories of ``namespace`` (and ``tenant``: ``None`` is a tenant of its own)
        that best match ``query``, best first, at most ``k`` (1 to ``MAX_SEARCH_K``).

        ``query`` is user text, never syntax (see ``kernos.store._memory``): no query raises,
        one without words finds nothing. ``metadata`` keeps only memories whose top-level keys
        equal the given scalars. With ``embedding``, full-text and cosine rankings are fused
        (RRF) and a memory with no word in common but a near embedding can be found; scores
        are then RRF scores. Full text uses the index; the vector side reads at most
        ``VECTOR_SCAN_LIMIT`` embeddings.
        """
        return await self._call(
            self._search_memory, namespace, query, k, tenant, embedding, metadata
        )

    def _delete_memory(self, memory_id: str) -> bool:
        check_text("a memory id", memory_id)
        with self._d.write() as tx:
            return tx.execute("DELETE FROM kernos_memories WHERE id = ?", (memory_id,)) == 1

    async def delete_memory(self, memory_id: str) -> bool:
        """Forget a memory (and its index entries); False when no memory has that id."""
        return await self._call(self._delete_memory, memory_id)

    def _count_memories(self, namespace: str, tenant: str | None) -> int:
        check_name("namespace", namespace)
        if tenant is not None:
            check_name("tenant", tenant)
        scope, params = self._scope(namespace, tenant)
        with self._d.read() as tx:
            row = tx.fetchone(f"SELECT COUNT(*) FROM kernos_memories m WHERE {scope}", params)
        return int(row[0]) if row else 0

    async def count_memories(self, namespace: str, tenant: str | None = None) -> int:
        """How many memories ``namespace`` holds for ``tenant`` (``None``: the memories put
        without a tenant, not all of them)."""
        return await self._call(self._count_memories, namespace, tenant)

    # -- oversight: approvals, the audit log, API keys ------------------------------------

    def _request_approval(
        self,
        run_id: str,
        token: int,
        events: Sequence[Event],
        new: NewApproval,
        notify: Sequence[Notification],
    ) -> Approval:
        now = time.time()
        with self._d.write() as tx:
            self._own(tx, run_id, token)
            self._insert_events(tx, run_id, events, token)
            insert_notifications(tx, notify, now)
            return insert_approval(tx, new, now)

    async def request_approval(
        self,
        run_id: str,
        token: int,
        *,
        events: Sequence[Event],
        approval: NewApproval,
        notify: Sequence[Notification] = (),
    ) -> Approval:
        """Create a pending approval for a run's step and journal it, atomically (fenced: only
        the run's owner asks), with the notifications that announce it (``notify``, queued
        in the outbox). Asking again for the same step returns the same approval."""
        self._check_events(events)
        self.check_size(f"the approval request of run {run_id}", json.dumps(approval.details))
        return await self._call(
            self._request_approval, run_id, token, list(events), approval, list(notify)
        )

    def _escalate_approval(
        self,
        run_id: str,
        token: int,
        events: Sequence[Event],
        approval_id: str,
        expires_at: float | None,
        by: str,
        notify: Sequence[Notification],
    ) -> Approval:
        now = time.time()
        with self._d.write() as tx:
            self._own(tx, run_id, token)
            escalated = escalate_approval(
                tx, approval_id, expires_at=expires_at, lock=self._d.lock_rows, now=now
            )
            self._insert_events(tx, run_id, events, token)
            insert_notifications(tx, notify, now)
            append_audit(
                tx,
                postgres=self._d.name == "postgresql",
                actor=by,
                action="approval.escalate",
                tenant=escalated.tenant,
                target=approval_id,
                details={"run": run_id, "expires_at": expires_at},
                now=now,
            )
            return escalated

    async def escalate_approval(
        self,
        run_id: str,
        token: int,
        *,
        approval_id: str,
        events: Sequence[Event],
        expires_at: float | None,
        by: str,
        notify: Sequence[Notification] = (),
    ) -> Approval:
        """Nobody decided by the deadline, and the deadline escalates: mark the approval
        escalated with its new deadline, journal it, audit it and queue ``notify``, atomically
        (fenced). ``InvalidState`` when a person decided meanwhile: their decision stands."""
        self._check_events(events)
        return await self._call(
            self._escalate_approval,
            run_id,
            token,
            list(events),
            approval_id,
            expires_at,
            by,
            list(notify),
        )

    # -- the notification outbox -------------------------------------------------------------

    def _claim_notifications(self, limit: int, hold: float) -> list[Notification]:
        with self._d.write() as tx:
            return claim_notifications(
                tx, limit=limit, hold=hold, now=time.time(), lock_skip=self._d.lock_skip
            )

    async def claim_notifications(
        self, *, limit: int = 10, hold: float = 60.0
    ) -> list[Notification]:
        """Due notifications, each claimed for ``hold`` seconds (an attempt): a worker that
        dies holding them lets them go when the claim runs out."""
        return await self._call(self._claim_notifications, limit, hold)

    def _settle_notification(
        self, notification_id: str, delivered: bool, error: str | None, retry_at: float | None
    ) -> None:
        with self._d.write() as tx:
            settle_notification(
                tx,
                notification_id,
                delivered=delivered,
                error=error,
                retry_at=retry_at,
                now=time.time(),
            )

    async def settle_notification(
        self,
        notification_id: str,
        *,
        delivered: bool,
        error: str | None = None,
        retry_at: float | None = None,
    ) -> None:
        """An attempt's outcome: delivered; failed and to retry at ``retry_at``; or (neither)
        given up, with ``error`` kept for the operator."""
        await self._call(self._settle_notification, notification_id, delivered, error, retry_at)

    def _list_notifications(self, pending: bool, limit: int) -> list[Notification]:
        with self._d.read() as tx:
            return list_notifications(tx, pending=pending, limit=limit)

    async def list_notifications(
        self, *, pending: bool = False, limit: int = 100
    ) -> list[Notification]:
        """The outbox, oldest first (``pending``: only what is still to deliver)."""
        return await self._call(self._list_notifications, pending, limit)

    def _get_approval(self, approval_id: str, tenant: str | None) -> Approval:
        with self._d.read() as tx:
            found = get_approval(tx, approval_id)
        if found is None or (tenant is not None and found.tenant != tenant):
            raise ApprovalNotFound(approval_id)
        return found

    async def get_approval(self, approval_id: str, *, tenant: str | None = None) -> Approval:
        """One approval; ``ApprovalNotFound`` if there is none (in ``tenant``, if given)."""
        return await self._call(self._get_approval, approval_id, tenant)

    def _list_approvals(
        self, state: str | None, tenant: str | None, run_id: str | None, limit: int
    ) -> list[Approval]:
        with self._d.read() as tx:
            return list_approvals(tx, state=state, tenant=tenant, run_id=run_id, limit=limit)

    async def list_approvals(
        self,
        *,
        state: ApprovalState | str | None = ApprovalState.PENDING,
        tenant: str | None = None,
        run_id: str | None = None,
        limit: int = 100,
    ) -> list[Approval]:
        """Approvals, oldest first (default: the pending ones, every tenant)."""
        value = None if state is None else ApprovalState(state).value
        return await self._call(self._list_approvals, value, tenant, run_id, limit)

    def _decide_approval(
        self,
        approval_id: str,
        state: ApprovalState,
        by: str,
        reason: str | None,
        answer: Any,
        tenant: str | None,
    ) -> Approval:
        now = time.time()
        with self._d.write() as tx:
            asked = get_approval(tx, approval_id)
            if asked is not None:
                # Lock the run before the approval, in the order its suspension does: a run
                # suspending at this moment either sees the decision or is woken by it.
                tx.fetchone(
                    f"SELECT id FROM kernos_runs WHERE id = ?{self._d.lock_rows}", (asked.run_id,)
                )
            decided = decide_approval(
                tx,
                approval_id,
                state=state,
                by=by,
                reason=reason,
                answer=answer,
                tenant=tenant,
                lock=self._d.lock_rows,
                now=now,
            )
            append_audit(
                tx,
                postgres=self._d.name == "postgresql",
                actor=by,
                action=f"approval.{state.value}",
                tenant=decided.tenant,
                target=approval_id,
                details={
                    k: v
                    for k, v in {"reason": reason, "answer": answer, "run": decided.run_id}.items()
                    if v is not None
                },
                now=now,
            )
            updated = tx.execute(
                "UPDATE kernos_runs SET state = 'queued', waiting_for = NULL, run_at = ?, "
                "updated_at = ? WHERE id = ? AND state = 'waiting' AND waiting_for = ?",
                (now, now, decided.run_id, f"approval:{approval_id}"),
            )
            if updated:
                self._d.notify(tx)
            return decided

    async def decide_approval(
        self,
        approval_id: str,
        *,
        approve: bool,
        by: str,
        reason: str | None = None,
        answer: Any = None,
        tenant: str | None = None,
        expired: bool = False,
    ) -> Approval:
        """Approve or reject (with an answer, or edited arguments), exactly once; audited and
        the waiting run woken in the same transaction. A second decision raises
        ``InvalidState`` saying what was decided, by whom."""
        if not by or not isinstance(by, str):
            raise InvalidInput("a decision needs who made it (by=...)")
        if answer is not None:
            self.check_size(f"the answer to approval {approval_id}", json.dumps(answer))
        state = (
            ApprovalState.EXPIRED
            if expired
            else (ApprovalState.APPROVED if approve else ApprovalState.REJECTED)
        )
        return await self._call(
            self._decide_approval, approval_id, state, by, reason, answer, tenant
        )

    def _append_audit(
        self,
        actor: str,
        action: str,
        tenant: str | None,
        target: str | None,
        details: dict[str, Any] | None,
    ) -> AuditEntry:
        with self._d.write() as tx:
            return append_audit(
                tx,
                postgres=self._d.name == "postgresql",
                actor=actor,
                action=action,
                tenant=tenant,
                target=target,
                details=details,
            )

    async def append_audit(
        self,
        *,
        actor: str,
        action: str,
        tenant: str | None = None,
        target: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> AuditEntry:
        """Add an entry to the audit log (who did what, to what)."""
        return await self._call(self._append_audit, actor, action, tenant, target, details)

    def _list_audit(
        self, since: float | None, after_seq: int, tenant: str | None, limit: int
    ) -> list[AuditEntry]:
        with self._d.read() as tx:
            return list_audit(tx, since=since, after_seq=after_seq, tenant=tenant, limit=limit)

    async def list_audit(
        self,
        *,
        since: float | None = None,
        after_seq: int = 0,
        tenant: str | None = None,
        limit: int = 1000,
    ) -> list[AuditEntry]:
        """Audit entries in order (page with ``after_seq``: the last seq seen)."""
        return await self._call(self._list_audit, since, after_seq, tenant, limit)

    def _verify_audit(self) -> AuditCheck:
        with self._d.read() as tx:
            rows = tx.fetchall(
                "SELECT seq, at, actor, tenant, action, target, details, prev_hash, hash "
                "FROM kernos_audit ORDER BY seq",
                (),
            )
        return verify_audit(rows)

    def _last_audit(self, action: str, target: str) -> AuditEntry | None:
        with self._d.read() as tx:
            return last_audit(tx, action, target)

    async def last_audit(self, action: str, target: str) -> AuditEntry | None:
        """The newest audit entry of ``action`` on ``target`` (e.g. the config file last
        recorded), read through an index: None when there is none."""
        return await self._call(self._last_audit, action, target)

    async def verify_audit(self) -> AuditCheck:
        """Recompute the chain; the first modified, deleted, inserted or reordered entry."""
        return await self._call(self._verify_audit)

    def _create_api_key(
        self, name: str, tenant: str | None, role: str, by: str
    ) -> tuple[ApiKey, str]:
        with self._d.write() as tx:
            key, secret = insert_api_key(tx, name=name, tenant=tenant, role=role, now=time.time())
            append_audit(
                tx,
                postgres=self._d.name == "postgresql",
                actor=by,
                action="key.create",
                tenant=tenant,
                target=key.id,
                details={"name": name, "role": role},
            )
            return key, secret

    async def create_api_key(
        self, *, name: str, tenant: str | None, role: str, by: str = "cli"
    ) -> tuple[ApiKey, str]:
        """A new API key and its secret (``kn_<id>_<random>``), shown only now: only a hash of
        it is stored. Audited."""
        return await self._call(self._create_api_key, name, tenant, role, by)

    def _find_api_key(self, secret: str) -> ApiKey | None:
        with self._d.read() as tx:
            return find_api_key(tx, secret)

    async def find_api_key(self, secret: str) -> ApiKey | None:
        """The live key whose secret this is, or None (unknown, malformed or revoked)."""
        return await self._call(self._find_api_key, secret)

    def _list_api_keys(self, tenant: str | None) -> list[ApiKey]:
        with self._d.read() as tx:
            return list_api_keys(tx, tenant)

    async def list_api_keys(self, tenant: str | None = None) -> list[ApiKey]:
        return await self._call(self._list_api_keys, tenant)

    def _revoke_api_key(self, key_id: str, by: str) -> bool:
        with self._d.write() as tx:
            changed = tx.execute(
                "UPDATE kernos_api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (time.time(), key_id),
            )
            if changed:
                append_audit(
                    tx,
                    postgres=self._d.name == "postgresql",
                    actor=by,
                    action="key.revoke",
                    target=key_id,
                )
            return bool(changed)

    async def revoke_api_key(self, key_id: str, *, by: str = "cli") -> bool:
        """Revoke a key at once; False if no live key has that id. Audited."""
        return await self._call(self._revoke_api_key, key_id, by)

    def _reserve_budget(
        self, charges: Sequence[BudgetCharge], hold: str | None, run_id: str | None
    ) -> BudgetVerdict:
        with self._d.write() as tx:
            return reserve_budget(tx, charges, time.time(), self._d.lock_rows, hold, run_id)

    async def reserve_budget(
        self,
        charges: Sequence[BudgetCharge],
        *,
        hold: str | None = None,
        run_id: str | None = None,
    ) -> BudgetVerdict:
        """Reserve a call's estimated cost on every budget it counts against, atomically: all
        or none, the first budget it would exceed named. Concurrent calls on many workers
        serialise on the budget's row.

        ``hold`` names the call (``<run_id>:<position>``): the reservation is kept under it,
        replaces what an earlier attempt of the same call held (a killed worker's), and is
        given back when ``run_id`` ends if nobody settled it."""
        if not charges:
            return BudgetVerdict(True)
        return await self._call(self._reserve_budget, list(charges), hold, run_id)

    def _settle_budget(
        self, reserved: Sequence[BudgetCharge], usd: float, tokens: int, hold: str | None
    ) -> None:
        with self._d.write() as tx:
            settle_budget(tx, reserved, usd, tokens, time.time(), self._d.lock_rows, hold)

    async def settle_budget(
        self,
        reserved: Sequence[BudgetCharge],
        *,
        usd: float,
        tokens: int,
        hold: str | None = None,
    ) -> None:
        """The call is over: its reservations become its real cost (0 if it failed). With
        ``hold``, what is released is what the store holds under it (nothing, if the run's
        end gave it back already), so a reservation is never released twice."""
        if reserved:
            await self._call(self._settle_budget, list(reserved), usd, tokens, hold)

    def _held_budget(self, hold: str) -> list[BudgetCharge]:
        with self._d.read() as tx:
            return held_budget(tx, hold)

    async def held_budget(self, hold: str) -> list[BudgetCharge]:
        """What call ``hold`` reserved and has not settled: a successor taking over a call a
        killed worker had started settles it."""
        return await self._call(self._held_budget, hold)

    def _budget_usage(self, since: float) -> list[BudgetUsage]:
        with self._d.read() as tx:
            return list_budget_usage(tx, since)

    async def budget_usage(self, *, since: float = 0.0) -> list[BudgetUsage]:
        """Spend and reservations of every budget, key and period starting at ``since`` or
        later."""
        return await self._call(self._budget_usage, since)

    # -- MCP tool pins ---------------------------------------------------------------------

    def _observe_tools(
        self, server: str, definitions: Sequence[ToolDefinition], actor: str
    ) -> dict[str, PinStatus]:
        hashes = check_definitions(server, definitions)
        with self._d.read() as tx:
            known = statuses_if_recorded(list_pins(tx, server), hashes)
        if known is not None:
            return known
        with self._d.write() as tx:
            return record_listing(
                tx,
                server,
                definitions,
                hashes,
                actor=actor,
                postgres=self._d.name == "postgresql",
                now=time.time(),
            )

    async def observe_tools(
        self, server: str, definitions: Sequence[ToolDefinition], *, actor: str = "kernos"
    ) -> dict[str, PinStatus]:
        """Compare what MCP server ``server`` lists now with its pins: each tool's status.

        A tool seen for the first time is pinned (``NEW``, audited ``tool.pin`` by ``actor``);
        one whose definition differs from its pin is ``CHANGED`` (the new definition recorded
        as pending, audited ``tool.changed`` the first time it is seen) and must not be offered
        to a model. Nothing is written when every tool is as recorded, the common case.
        """
        return await self._call(self._observe_tools, server, list(definitions), actor)

    def _list_tool_pins(self, server: str | None) -> list[ToolPin]:
        with self._d.read() as tx:
            return list_pins(tx, server)

    async def list_tool_pins(self, server: str | None = None) -> list[ToolPin]:
        """The pins of one MCP server's tools (or of every server), by server and tool."""
        return await self._call(self._list_tool_pins, server)

    def _accept_tool_change(
        self, server: str, tool: str, by: str, expected_hash: str | None
    ) -> ToolPin:
        with self._d.write() as tx:
            return accept_change(
                tx,
                server,
                tool,
                by=by,
                expected_hash=expected_hash,
                postgres=self._d.name == "postgresql",
            )

    async def accept_tool_change(
        self, server: str, tool: str, *, by: str, expected_hash: str | None = None
    ) -> ToolPin:
        """Accept the definition pending for ``tool``: it becomes the pinned one, offered to
        models again from the next run (or replay) on, audited ``tool.accept`` with the old
        and new hash. ``InvalidState`` when nothing is pending, or when ``expected_hash`` (a
        prefix of the hash the admin reviewed) is no longer the pending one; ``InvalidInput``
        when the tool was never pinned."""
        if not by or not isinstance(by, str):
            raise InvalidInput("accepting a tool change needs who accepts it (by=...)")
        if expected_hash is not None and len(expected_hash) < 8:
            raise InvalidInput(
                f"give at least 8 characters of the pending hash you reviewed, not "
                f"{expected_hash!r} (kernos tools diff shows it)"
            )
        return await self._call(self._accept_tool_change, server, tool, by, expected_hash)

    async def wait_for_work(self, timeout: float) -> None:
        if self._d.name == "sqlite":
            await asyncio.sleep(timeout)
            return
        await self._call(self._d.wait_for_notify, timeout)

    # -- the fleet: workers, versions, retirement -------------------------------------------

    def _register_worker(self, reg: WorkerRegistration) -> None:
        with self._d.write() as tx:
            register_worker(tx, reg, self._d.now(tx))

    async def register_worker(self, registration: WorkerRegistration) -> None:
        """Record a starting worker: host, pid, the versions it executes, its concurrency.

        Rows of workers stopped or dead for more than a day are pruned here.
        """
        await self._call(self._register_worker, registration)

    def _worker_heartbeat(
        self,
        worker_id: str,
        leases: dict[str, int],
        lease_ttl: float,
        active: int,
        info: dict[str, Any],
    ) -> Heartbeat:
        with self._d.write() as tx:
            now = self._d.now(tx)
            beat_worker(tx, worker_id, now, active, info)
            if not leases:
                return Heartbeat(lost=frozenset(), control={})
            return self._renew_leases(tx, now, worker_id, leases, lease_ttl)

    async def worker_heartbeat(
        self,
        *,
        worker_id: str,
        leases: dict[str, int],
        lease_ttl: float,
        active: int,
        info: dict[str, Any] | None = None,
    ) -> Heartbeat:
        """``heartbeat`` that also refreshes the worker's row (its load and ``info``), in the
        same transaction: one commit per beat, whether or not the worker holds leases."""
        return await self._call(
            self._worker_heartbeat, worker_id, dict(leases), lease_ttl, active, dict(info or {})
        )

    def _stop_worker(self, worker_id: str) -> None:
        with self._d.write() as tx:
            stop_worker(tx, worker_id, self._d.now(tx))

    async def stop_worker(self, worker_id: str) -> None:
        """Mark a worker stopped (it drained and released its leases): not shown as dead."""
        await self._call(self._stop_worker, worker_id)

    def _list_workers(self) -> list[WorkerRecord]:
        with self._d.read() as tx:
            return list_workers(tx, self._d.now(tx))

    async def list_workers(self) -> list[WorkerRecord]:
        """Every worker row not yet pruned: alive, dead (silent for several lease TTLs) or
        stopped, as of the database's clock."""
        return await self._call(self._list_workers)

    def _publish_gateway(self, worker_id: str, report: GatewayReport) -> FleetGateway:
        with self._d.write() as tx:
            now = self._d.now(tx)
            publish_gateway(tx, worker_id, report, now)
            return read_gateway(tx, worker_id, now)

    async def publish_gateway(self, worker_id: str, report: GatewayReport) -> FleetGateway:
        """Replace what ``worker_id``'s gateway tells the fleet and read what the others say,
        in one transaction. The report's times (seconds from now) are stored on the database's
        clock; a stopped worker's row is not written."""
        return await self._call(self._publish_gateway, worker_id, report)

    def _fleet_gateway(self, worker_id: str) -> FleetGateway:
        with self._d.read() as tx:
            return read_gateway(tx, worker_id, self._d.now(tx))

    async def fleet_gateway(self, worker_id: str) -> FleetGateway:
        """What the other live workers' gateways say (one read): the workers sharing each
        provider's limits, and the longest pause and open breaker among them, in seconds from
        the read on the database's clock. Dead and stopped workers are left out."""
        return await self._call(self._fleet_gateway, worker_id)

    def _list_versions(self, agent: str | None) -> list[VersionStatus]:
        with self._d.read() as tx:
            now = self._d.now(tx)
            return list_versions(tx, now, list_workers(tx, now), agent)

    async def list_versions(self, agent: str | None = None) -> list[VersionStatus]:
        """Each agent version: retired or not, the live workers that execute it, and its live
        runs by state (counted in the database, not loaded)."""
        return await self._call(self._list_versions, agent)

    def _set_retired(
        self, agent: str, version: str, retire: bool, by: str, reason: str | None
    ) -> VersionStatus:
        with self._d.write() as tx:
            now = self._d.now(tx)
            set_retired(
                tx,
                agent=agent,
                version=version,
                retire=retire,
                by=by,
                reason=reason,
                now=now,
                postgres=self._d.name == "postgresql",
                lock_rows=self._d.lock_rows,
            )
            found = list_versions(tx, now, list_workers(tx, now), agent)
        return next(v for v in found if v.version == version)

    async def retire_version(
        self, agent: str, version: str, *, by: str, reason: str | None = None
    ) -> VersionStatus:
        """Refuse new runs of ``agent@version`` (``VersionRetired``); the runs it has go on.

        Audited ``agent.retire`` in the same transaction. Retiring a retired version changes
        nothing; ``AgentNotFound`` for a version no worker has registered. Returns the
        version's status: its ``live`` runs are what is left to drain.
        """
        if not by:
            raise InvalidInput("retiring a version needs who retires it (by=...)")
        return await self._call(self._set_retired, agent, version, True, by, reason)

    async def unretire_version(
        self, agent: str, version: str, *, by: str, reason: str | None = None
    ) -> VersionStatus:
        """Let ``agent@version`` take new runs again (audited ``agent.unretire``)."""
        if not by:
            raise InvalidInput("un-retiring a version needs who does it (by=...)")
        return await self._call(self._set_retired, agent, version, False, by, reason)

    def _fleet_status(self) -> FleetStatus:
        with self._d.read() as tx:
            now = self._d.now(tx)
            workers = list_workers(tx, now)
            versions = list_versions(tx, now, workers)
            runs = {
                RunState(r[0]): int(r[1])
                for r in tx.fetchall("SELECT state, COUNT(*) FROM kernos_runs GROUP BY state")
            }
            waiting = waiting_reasons(tx, self._d.name)
        return FleetStatus(now=now, workers=workers, versions=versions, runs=runs, waiting=waiting)

    async def fleet_status(self) -> FleetStatus:
        """Workers, versions, runs by state and what waiting runs wait for, read in one
        transaction (aggregates only) so the figures agree with each other."""
        return await self._call(self._fleet_status)
