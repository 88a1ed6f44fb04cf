"""The ``Store`` protocol: everything the kernel asks of a database.

Two real implementations exist (SQLite and PostgreSQL, one schema, one conformance suite). Every
method is one short transaction; those that write for a run owned by a worker take the run's
fencing token and raise ``LeaseLost`` instead of writing when the token is stale (guarantee 3).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from kernos.store._claims import TenantLimits
from kernos.store._commit import CommitStats
from kernos.store._dashboard import EventFields, RunQuery, TimedTotals
from kernos.store._records import (
    AgentVersion,
    ApiKey,
    Approval,
    ApprovalState,
    AuditCheck,
    AuditEntry,
    BudgetCharge,
    BudgetUsage,
    BudgetVerdict,
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


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """What a heartbeat learned: runs whose lease was lost, and pending control requests."""

    lost: frozenset[str]
    control: dict[str, Control | None]


@dataclass(frozen=True, slots=True)
class Timer:
    step: int
    fire_at: float


class Store(Protocol):
    """A kernos database. Implementations: ``SqliteStore``-backed and ``PostgresStore``-backed."""

    @property
    def url(self) -> str:
        """The database URL with any password removed, for messages."""
        ...

    @property
    def backend(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        ...

    def check_size(self, what: str, text: str) -> None:
        """Raise ``InvalidInput`` when ``text`` is over the payload limit."""
        ...

    async def migrate(self) -> SchemaStatus: ...
    async def schema_status(self) -> SchemaStatus: ...
    async def close(self) -> None: ...

    async def register_agents(self, agents: Sequence[tuple[str, str]]) -> None: ...
    async def list_agents(self) -> list[AgentVersion]: ...

    async def create_run(self, new: NewRun) -> Run: ...
    async def get_run(self, run_id: str) -> Run: ...
    async def list_runs(
        self,
        *,
        state: RunState | None = None,
        agent: str | None = None,
        limit: int = 100,
        tenant: str | None = None,
    ) -> list[Run]: ...
    async def count_runs(self) -> dict[RunState, int]: ...
    async def load_journal(self, run_id: str, *, after_seq: int = 0) -> list[Event]: ...

    # -- read-only views for the dashboard (see _dashboard.py for what each costs) ---------

    async def list_runs_page(self, query: RunQuery) -> list[Run]:
        """A keyset page of runs, newest first, filtered as ``query`` says."""
        ...

    async def journal_page(self, run_id: str, *, after_seq: int, limit: int) -> list[Event]:
        """At most ``limit`` events of a run after ``after_seq``, in order."""
        ...

    async def journal_extent(self, run_id: str) -> tuple[int, int]:
        """How many events a run's journal holds, and its last seq."""
        ...

    async def sum_run_events(
        self,
        run_ids: Sequence[str],
        *,
        types: Sequence[str],
        sums: Mapping[str, Sequence[JsonPath]],
    ) -> dict[str, dict[str, float]]:
        """Sums of payload fields over events of ``types``, per run named."""
        ...

    async def event_fields(
        self,
        *,
        types: Sequence[str],
        fields: Mapping[str, Sequence[JsonPath]],
        since: float | None = None,
        tenant: str | None = None,
        limit: int = 10_000,
    ) -> list[EventFields]:
        """The newest events of ``types`` with chosen payload fields (for provider health)."""
        ...

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
        """``sum_events`` per time bucket (spend over time)."""
        ...

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
        """Lease up to ``limit`` runnable runs of ``agents`` to ``worker_id``: the highest
        priority first, then the oldest. No agent of ``agent_limits`` and no tenant limited by
        ``tenant_limits`` ends up with more runs running (with a live lease) than its limit,
        over every worker of the database. With ``tenant_limits`` (even one that limits no
        tenant), runs of equal priority are taken round-robin across tenants, each tenant's
        oldest first; without it, strictly in order."""
        ...

    async def append(self, run_id: str, token: int, events: Sequence[Event]) -> Control | None: ...

    async def sum_events(
        self,
        *,
        types: Sequence[str],
        sums: Mapping[str, Sequence[JsonPath]],
        group_by: str | Sequence[Sequence[JsonPath]],
        since: float | None = None,
        limit: int = 1000,
    ) -> list[EventTotals]:
        """Totals of numeric payload fields over events of ``types``, grouped by ``run``,
        ``agent``, ``tenant`` or payload fields; a projection of the journal (cost ledgers)."""
        ...

    def commit_stats(self) -> CommitStats:
        """Appends and the commits that carried them, since the store was opened."""
        ...

    async def heartbeat(
        self, *, worker_id: str, leases: dict[str, int], lease_ttl: float
    ) -> Heartbeat: ...
    async def finish(
        self,
        run_id: str,
        token: int,
        *,
        state: RunState,
        events: Sequence[Event],
        output: str | None = None,
        error: str | None = None,
    ) -> None: ...
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
    ) -> SuspendResult: ...
    async def release(
        self, run_id: str, token: int, *, state: RunState, events: Sequence[Event]
    ) -> None: ...
    async def waiting_topics(self, run_id: str) -> frozenset[str]: ...
    async def take_message(
        self,
        run_id: str,
        token: int,
        *,
        topic: str,
        step: int,
        before: Sequence[Event] = (),
        make_event: Callable[[Message], Event],
    ) -> Message | None: ...
    async def spawn(
        self, run_id: str, token: int, *, events: Sequence[Event], child: NewRun
    ) -> Run: ...
    async def fire_timers(self) -> int: ...

    async def send_message(
        self, run_id: str, topic: str, payload: str, *, sender: str | None = None
    ) -> Message: ...
    async def request_approval(
        self,
        run_id: str,
        token: int,
        *,
        events: Sequence[Event],
        approval: NewApproval,
        notify: Sequence[Notification] = (),
    ) -> Approval: ...
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
    ) -> Approval: ...
    async def claim_notifications(
        self, *, limit: int = 10, hold: float = 60.0
    ) -> list[Notification]: ...
    async def settle_notification(
        self,
        notification_id: str,
        *,
        delivered: bool,
        error: str | None = None,
        retry_at: float | None = None,
    ) -> None: ...
    async def list_notifications(
        self, *, pending: bool = False, limit: int = 100
    ) -> list[Notification]: ...
    async def get_approval(self, approval_id: str, *, tenant: str | None = None) -> Approval: ...
    async def list_approvals(
        self,
        *,
        state: ApprovalState | str | None = ApprovalState.PENDING,
        tenant: str | None = None,
        run_id: str | None = None,
        limit: int = 100,
    ) -> list[Approval]: ...
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
    ) -> Approval: ...
    async def append_audit(
        self,
        *,
        actor: str,
        action: str,
        tenant: str | None = None,
        target: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> AuditEntry: ...
    async def list_audit(
        self,
        *,
        since: float | None = None,
        after_seq: int = 0,
        tenant: str | None = None,
        limit: int = 1000,
    ) -> list[AuditEntry]: ...
    async def last_audit(self, action: str, target: str) -> AuditEntry | None: ...
    async def verify_audit(self) -> AuditCheck: ...
    async def reserve_budget(
        self,
        charges: Sequence[BudgetCharge],
        *,
        hold: str | None = None,
        run_id: str | None = None,
    ) -> BudgetVerdict: ...
    async def settle_budget(
        self,
        reserved: Sequence[BudgetCharge],
        *,
        usd: float,
        tokens: int,
        hold: str | None = None,
    ) -> None: ...
    async def held_budget(self, hold: str) -> list[BudgetCharge]: ...
    async def budget_usage(self, *, since: float = 0.0) -> list[BudgetUsage]: ...
    async def create_api_key(
        self, *, name: str, tenant: str | None, role: str, by: str = "cli"
    ) -> tuple[ApiKey, str]: ...
    async def find_api_key(self, secret: str) -> ApiKey | None: ...
    async def list_api_keys(self, tenant: str | None = None) -> list[ApiKey]: ...
    async def revoke_api_key(self, key_id: str, *, by: str = "cli") -> bool: ...
    async def send_from_run(
        self,
        run_id: str,
        token: int,
        *,
        events: Sequence[Event],
        to: str,
        topic: str,
        payload: str,
    ) -> Message: ...
    async def pause(
        self, run_id: str, *, reason: str | None = None, by: str | None = None
    ) -> Run: ...
    async def resume(
        self, run_id: str, *, reason: str | None = None, by: str | None = None
    ) -> Run: ...
    async def cancel(
        self, run_id: str, *, reason: str | None = None, by: str | None = None
    ) -> Run: ...

    async def add_schedule(self, schedule: Schedule) -> Schedule: ...
    async def list_schedules(self) -> list[Schedule]: ...
    async def remove_schedule(self, name: str) -> None: ...
    async def fire_schedules(
        self, *, versions: dict[str, str], next_fire: Callable[[str, float], float]
    ) -> list[Run]: ...

    async def put_memory(self, memory: NewMemory) -> Memory:
        """Store a long-term memory; ``InvalidInput`` (nothing stored) for bad input."""
        ...

    async def search_memory(
        self,
        namespace: str,
        query: str,
        *,
        k: int = 5,
        tenant: str | None = None,
        embedding: list[float] | None = None,
        # Any: metadata is JSON chosen by the caller; a filter compares top-level scalars.
        metadata: dict[str, Any] | None = None,
    ) -> list[MemoryHit]:
        """Memories of one namespace and tenant matching user text, best first (full text,
        fused with cosine nearness when ``embedding`` is given). Never parses the query as
        syntax: no query raises."""
        ...

    async def delete_memory(self, memory_id: str) -> bool:
        """Forget one memory; False when none has that id."""
        ...

    async def count_memories(self, namespace: str, tenant: str | None = None) -> int: ...

    async def observe_tools(
        self, server: str, definitions: Sequence[ToolDefinition], *, actor: str = "kernos"
    ) -> dict[str, PinStatus]:
        """Pin an MCP server's tools on first sight; each tool's status (``CHANGED``: its
        definition differs from the pinned one and must not be offered to a model). Writes
        only when something is new or a change is first seen, audited in the same
        transaction."""
        ...

    async def list_tool_pins(self, server: str | None = None) -> list[ToolPin]: ...
    async def accept_tool_change(
        self, server: str, tool: str, *, by: str, expected_hash: str | None = None
    ) -> ToolPin:
        """Make the pending definition of a tool the pinned one; audited (``tool.accept``)."""
        ...

    async def wait_for_work(self, timeout: float) -> None:
        """Return when new work may exist (PostgreSQL: a NOTIFY), or after ``timeout``."""
        ...

    async def register_worker(self, registration: WorkerRegistration) -> None:
        """Record a starting worker (host, pid, versions, concurrency); prune old rows."""
        ...

    async def worker_heartbeat(
        self,
        *,
        worker_id: str,
        leases: dict[str, int],
        lease_ttl: float,
        active: int,
        info: dict[str, Any] | None = None,
    ) -> Heartbeat:
        """Renew leases (as ``heartbeat``) and refresh the worker's row, in one transaction."""
        ...

    async def stop_worker(self, worker_id: str) -> None:
        """Mark a worker stopped after it drained."""
        ...

    async def list_workers(self) -> list[WorkerRecord]:
        """Workers alive, dead (silent for several lease TTLs) or stopped."""
        ...

    async def publish_gateway(self, worker_id: str, report: GatewayReport) -> FleetGateway:
        """Replace what a worker's gateway tells the fleet (its report's times are seconds
        from now, stored on the database's clock) and read ``fleet_gateway``, together."""
        ...

    async def fleet_gateway(self, worker_id: str) -> FleetGateway:
        """What the other live workers' gateways say: the workers sharing each provider's
        limits, and the longest pause and open breaker among them (seconds from the read)."""
        ...

    async def list_versions(self, agent: str | None = None) -> list[VersionStatus]:
        """Each agent version: retired or not, who serves it, its live runs by state."""
        ...

    async def retire_version(
        self, agent: str, version: str, *, by: str, reason: str | None = None
    ) -> VersionStatus:
        """Refuse new runs of a version (``VersionRetired``); its runs go on. Audited."""
        ...

    async def unretire_version(
        self, agent: str, version: str, *, by: str, reason: str | None = None
    ) -> VersionStatus:
        """Let a retired version take new runs again. Audited."""
        ...

    async def fleet_status(self) -> FleetStatus:
        """Workers, versions, runs by state and waiting reasons, read together."""
        ...
