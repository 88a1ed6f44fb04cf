"""The rows kernos stores, as frozen dataclasses that cross the store boundary."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class RunState(StrEnum):
    """Run states of DESIGN.md: queued → running → (waiting | paused) → running → terminal."""

    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED)


class SuspendResult(StrEnum):
    """What ``Store.suspend`` did. Anything but SUSPENDED or PAUSED: keep the run, look again."""

    SUSPENDED = "suspended"
    PAUSED = "paused"
    WAKE_PENDING = "wake_pending"
    CANCEL_PENDING = "cancel_pending"


class Control(StrEnum):
    """A person's request to a run that a worker owns; acted on at the next step boundary."""

    PAUSE = "pause"
    CANCEL = "cancel"


@dataclass(frozen=True, slots=True)
class Run:
    """One agent run, as stored. JSON fields are kept as text and decoded by the caller."""

    id: str
    agent: str
    agent_version: str
    state: RunState
    waiting_for: str | None
    control: Control | None
    input: str
    output: str | None
    error: str | None
    priority: int
    parent_id: str | None
    schedule: str | None
    created_at: float
    updated_at: float
    run_at: float
    lease_owner: str | None
    lease_token: int
    lease_expires_at: float | None
    claims: int
    #: who the run's costs are charged to (``default`` unless the caller names one)
    tenant: str = "default"
    #: who started it (``key:<name>/<id>`` through the API, ``user:<name>`` from the CLI);
    #: None when not known (runs of older versions, schedules)
    principal: str | None = None


@dataclass(frozen=True, slots=True)
class NewRun:
    """What a caller supplies to create a run; the store fills in the rest."""

    id: str
    agent: str
    agent_version: str
    input: str
    priority: int = 0
    run_at: float | None = None
    parent_id: str | None = None
    schedule: str | None = None
    tenant: str = "default"
    principal: str | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """One journal event. ``step`` is the position of the agent call it belongs to, if any."""

    seq: int
    type: str
    step: int | None = None
    name: str | None = None
    attempt: int = 0
    payload: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    duration: float | None = None
    #: ``payload`` already encoded as compact JSON, when the caller has it (saves encoding twice)
    payload_json: str | None = field(default=None, compare=False, repr=False)
    #: the lease token of the owner that wrote it, as the journal recorded it (None: written by
    #: no lease holder, e.g. a person's pause, or not yet stored); fencing makes it the token
    #: of the run's latest claim, which anyone can check afterwards
    token: int | None = field(default=None, compare=False)


#: a path into an event's JSON payload, e.g. ("response", "cost")
JsonPath = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class EventTotals:
    """One group of ``Store.sum_events``: its key, how many events, and the sums asked for."""

    key: str
    events: int
    sums: dict[str, float]


@dataclass(frozen=True, slots=True)
class Claim:
    """A run this worker now owns, with the fencing token every append must carry."""

    run: Run
    token: int


@dataclass(frozen=True, slots=True)
class Message:
    id: int
    run_id: str
    topic: str
    payload: str
    sender: str | None
    created_at: float
    consumed_step: int | None


@dataclass(frozen=True, slots=True)
class Schedule:
    name: str
    agent: str
    cron: str
    input: str
    priority: int
    next_fire_at: float
    created_at: float
    tenant: str = "default"


@dataclass(frozen=True, slots=True)
class AgentVersion:
    name: str
    version: str
    registered_at: float


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    """Where the database's schema stands against this code's migrations."""

    current: int
    latest: int
    pending: list[str]

    @property
    def up_to_date(self) -> bool:
        return self.current == self.latest


@dataclass(frozen=True, slots=True)
class MessageWait:
    """Suspend only if no unconsumed message on ``topic`` is waiting already."""

    topic: str


@dataclass(frozen=True, slots=True)
class ChildWait:
    """Suspend only if the child run has not ended already."""

    child_id: str


@dataclass(frozen=True, slots=True)
class ApprovalWait:
    """Suspend only if the approval is still pending."""

    approval_id: str


WakeCheck = MessageWait | ChildWait | ApprovalWait | None


class ApprovalState(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class NewApproval:
    """A decision a run asks a person for (``ctx.ask_human``, a tool that requires approval,
    a policy rule, a budget). ``details`` is JSON: the answer's schema, the tool and its
    arguments, the rule."""

    run_id: str
    step: int
    tenant: str
    kind: str
    question: str
    details: dict[str, Any] = field(default_factory=dict)
    expires_at: float | None = None
    #: the deadline escalates (tells more people, waits longer) rather than decides
    escalates: bool = False

    @property
    def id(self) -> str:
        return f"{self.run_id}:{self.step}"


@dataclass(frozen=True, slots=True)
class Approval:
    id: str
    run_id: str
    step: int
    tenant: str
    kind: str
    question: str
    details: dict[str, Any]
    state: ApprovalState
    decided_by: str | None
    reason: str | None
    #: Any: JSON the person gave (an answer, or edited arguments)
    answer: Any
    created_at: float
    expires_at: float | None
    decided_at: float | None
    #: its first deadline escalates rather than decides
    escalates: bool = False
    #: when it was escalated (None: not, or not yet)
    escalated_at: float | None = None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One entry of the audit log: who did what to what, and the chain's hashes."""

    seq: int
    at: float
    actor: str
    tenant: str | None
    action: str
    target: str | None
    details: dict[str, Any]
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class AuditCheck:
    """What ``verify_audit`` found: ``ok``, or the first entry where the chain breaks."""

    ok: bool
    entries: int
    first_bad_seq: int | None = None
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class BudgetCharge:
    """One budget a call counts against: its limits, and what the call is estimated (on
    reserve) or found (on settle) to cost."""

    budget: str
    key: str
    period_start: float
    limit_usd: float | None
    limit_tokens: int | None
    usd: float
    tokens: int


@dataclass(frozen=True, slots=True)
class BudgetUsage:
    budget: str
    key: str
    period_start: float
    usd: float
    tokens: int
    reserved_usd: float
    reserved_tokens: int


@dataclass(frozen=True, slots=True)
class BudgetVerdict:
    """``ok``, or the first budget the call would exceed, with what it has spent."""

    ok: bool
    exceeded: BudgetCharge | None = None
    spent_usd: float = 0.0
    spent_tokens: int = 0


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    name: str
    tenant: str | None
    role: str
    created_at: float
    revoked_at: float | None


@dataclass(frozen=True, slots=True)
class NewMemory:
    """A fact to remember in ``namespace``; the store gives it an id and a time.

    ``tenant`` scopes it (``None`` is a tenant of its own, not "every tenant"); ``run_id`` says
    which run learned it, for provenance only. ``embedding``, when the caller has one, lets a
    search find it by meaning as well as by words; kernos computes none itself.
    """

    namespace: str
    text: str
    #: Any: JSON the caller chooses (checked on put: it must read back equal)
    metadata: dict[str, Any] = field(default_factory=dict)
    tenant: str | None = None
    run_id: str | None = None
    embedding: list[float] | None = None
    #: a caller-chosen id makes the put idempotent: putting the same id again stores nothing
    #: more (a run's put, made again after a crash, is ``<run_id>:<step>``)
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Memory:
    """A stored memory: what was put, plus its id and when it was stored."""

    id: str
    namespace: str
    text: str
    metadata: dict[str, Any]
    tenant: str | None
    run_id: str | None
    embedding: list[float] | None
    created_at: float


@dataclass(frozen=True, slots=True)
class MemoryHit:
    """One search result. ``score``: higher is better; comparable only within one result list
    (its scale depends on the backend and on whether embeddings were fused in)."""

    memory: Memory
    score: float


class PinStatus(StrEnum):
    """What a listing of an MCP server's tools found for one tool (``Store.observe_tools``).

    Only ``CHANGED`` keeps a tool from the model: its definition differs from the one that was
    pinned, and stays withheld until an admin accepts the change (``kernos tools accept``).
    """

    #: never seen before: pinned as it is now (trust on first use)
    NEW = "new"
    #: as pinned
    PINNED = "pinned"
    #: differs from the pinned definition: withheld, the new one recorded as pending
    CHANGED = "changed"


@dataclass(frozen=True, slots=True)
class ToolDefinition:
    """What a model is told about an MCP tool: exactly what its pin's hash covers."""

    name: str
    description: str
    #: Any: the server's JSON schema of the tool's arguments, as it listed it
    input_schema: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ToolPin:
    """The accepted definition of one tool of one MCP server, and a change seen since.

    ``hash``/``definition`` are what models may be offered; ``pending_hash``/
    ``pending_definition`` the latest different definition the server listed, withheld until
    an admin accepts it (then it becomes the pinned one) or the server lists the pinned one
    again (the pending one stays on record until accepted).
    """

    server: str
    tool: str
    hash: str
    definition: ToolDefinition
    pending_hash: str | None
    pending_definition: ToolDefinition | None
    first_seen_at: float
    #: when the pinned definition was accepted: first seen, or accepted by an admin
    accepted_at: float
    #: who accepted it: the run whose listing first pinned it, or the admin
    accepted_by: str
    #: when the server first listed the pending definition (None: nothing pending)
    pending_seen_at: float | None

    @property
    def changed(self) -> bool:
        """A different definition is waiting for an admin."""
        return self.pending_hash is not None


@dataclass(frozen=True, slots=True)
class Notification:
    """Something to tell people (a webhook), committed with what it announces and delivered
    by whichever worker claims it. ``id`` makes it once (``<approval id>:needs_person``)."""

    id: str
    topic: str
    tenant: str | None
    body: dict[str, Any]
    attempts: int = 0
    created_at: float = 0.0
    next_at: float = 0.0
    delivered_at: float | None = None
    failed_at: float | None = None
    last_error: str | None = None


class WorkerState(StrEnum):
    """A worker as the fleet sees it, judged on the database's clock."""

    #: heartbeating: it claims runs and renews its leases
    ALIVE = "alive"
    #: no heartbeat for several of its lease TTLs: killed, frozen or cut off from the database
    DEAD = "dead"
    #: it drained and said so on its way out
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerRegistration:
    """What a worker says about itself when it starts."""

    id: str
    host: str
    pid: int
    #: the agent versions it executes, as ``name@version``
    versions: tuple[str, ...]
    concurrency: int
    lease_ttl: float
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerRecord:
    """A worker's row, with its state and heartbeat age as of the read (database clock)."""

    id: str
    host: str
    pid: int
    versions: tuple[str, ...]
    concurrency: int
    #: runs it was executing at its last heartbeat
    active: int
    lease_ttl: float
    started_at: float
    heartbeat_at: float
    stopped_at: float | None
    #: what its last heartbeat carried: ``{"breakers": {endpoint: state}}`` if it calls models
    info: dict[str, Any]
    state: WorkerState
    #: seconds since its last heartbeat
    heartbeat_age: float


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerHold:
    """An endpoint's circuit breaker, open on some worker: calls wait ``remaining`` seconds
    (counted from the store's read, on the database's clock), then one probes."""

    remaining: float
    #: the length of that open period, which a failed probe doubles
    cooldown: float


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayReport:
    """What one worker's gateway tells the rest of the fleet (``Store.publish_gateway``).

    Times are seconds from now, not clock readings: the store turns them into times on the
    database's clock, which every worker shares whatever its own clock says.
    """

    #: the providers whose configured rate limits this worker shares with the others
    providers: tuple[str, ...] = ()
    #: provider → seconds left of a pause it asked for (a 429's ``retry-after``)
    paused: Mapping[str, float] = field(default_factory=dict)
    #: endpoint (``provider:model``) → its breaker, opened by failures this worker saw
    open: Mapping[str, BreakerHold] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetGateway:
    """What the live workers' gateways say, as one of them reads it (``Store.fleet_gateway``).

    Workers that stopped or are dead (silent for ``DEAD_AFTER_TTLS`` lease TTLs, on the
    database's clock) count for nothing; holds that ended are left out; the reader's own holds
    are not repeated back to it.
    """

    #: provider → live workers sharing its limits, the reader included once it has published
    sharing: Mapping[str, int] = field(default_factory=dict)
    #: provider → the longest pause any other live worker holds, seconds from the read
    paused: Mapping[str, float] = field(default_factory=dict)
    #: endpoint → the longest open period of any other live worker's breaker
    open: Mapping[str, BreakerHold] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class VersionStatus:
    """One version of an agent across the fleet: retired or not, who serves it, its live runs.

    ``registered_at`` is None for a version that runs were started on but no worker has ever
    registered (a client with ``--app`` knew its code).
    """

    agent: str
    version: str
    registered_at: float | None
    retired_at: float | None = None
    retired_by: str | None = None
    retired_reason: str | None = None
    #: live runs (queued, running, waiting, paused) by state
    runs: dict[RunState, int] = field(default_factory=dict)
    #: runs a worker could claim now: queued and due, or running under an expired lease
    ready: int = 0
    #: ids of the live workers that execute this version
    workers: tuple[str, ...] = ()
    #: the version a run started without naming one goes to when the starter does not have
    #: the agent's code: the newest registered version that is not retired
    default: bool = False

    @property
    def key(self) -> str:
        return f"{self.agent}@{self.version}"

    @property
    def retired(self) -> bool:
        return self.retired_at is not None

    @property
    def live(self) -> int:
        """Runs not yet ended: while any remain, the version is not drained."""
        return sum(self.runs.values())

    @property
    def stranded(self) -> bool:
        """It has live runs but no live worker executes it: they wait until one starts."""
        return self.live > 0 and not self.workers


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetStatus:
    """The whole system at one moment (one read transaction), for ``kernos status``."""

    #: the database's clock at the read
    now: float
    workers: list[WorkerRecord]
    versions: list[VersionStatus]
    #: every run by state
    runs: dict[RunState, int]
    #: waiting runs by what they wait for (``approval``, ``timer``, ``message``, ``child``,
    #: ``budget``, ``provider``, ...)
    waiting: dict[str, int]

    @property
    def ready(self) -> int:
        """Queue depth: runs a worker could claim now."""
        return sum(v.ready for v in self.versions)

    @property
    def unserved(self) -> int:
        """Ready runs whose version no live worker executes: nobody will claim them."""
        return sum(v.ready for v in self.versions if not v.workers)
