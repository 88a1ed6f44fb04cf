"""The API's request and response bodies: the wire format, and what /openapi.json documents.

Responses are the API's own models, made from the store's records here rather than by the
CLI's JSON helpers (the CLI is a layer above): the two formats agree field for field where
they overlap, and this one leaves out what is internal to workers (the lease's fencing token).
JSON the store keeps as text (a run's input, output and error) is decoded, so a client reads
``"input": {"id": "A-17"}``, not a string of JSON.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, StringConstraints

from kernos.gateway import CostLine
from kernos.governance import BudgetLine
from kernos.store import (
    Approval,
    ApprovalState,
    AuditEntry,
    Control,
    Event,
    Message,
    Run,
    RunState,
    ToolDefinition,
    ToolPin,
)

# Text that ends up in a database column as it is: PostgreSQL refuses NUL characters, so they
# are refused here, as a 422, instead of failing in the store.
_NO_NUL = r"^[^\x00]*$"
Text = Annotated[str, StringConstraints(pattern=_NO_NUL)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=_NO_NUL)]
Reason = Annotated[str, StringConstraints(max_length=2000, pattern=_NO_NUL)]
#: run ids are 26-character ULIDs, but runs created by scripts may have their own ids
RUN_ID_PATTERN = r"^[^\x00/]{1,200}$"
INT32 = 2**31 - 1
INT63 = 2**63 - 1


def _encodable(value: JsonValue) -> JsonValue:
    """Refuse strings a JSON response could not carry: lone UTF-16 surrogates (``"\\ud800"``
    is valid JSON, but no UTF-8 encoding of it exists)."""
    try:
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise ValueError("a string holds a lone UTF-16 surrogate (\\ud800-\\udfff)") from None
    return value


#: any JSON a response can carry back
Json = Annotated[JsonValue, AfterValidator(_encodable)]


def _printable(value: Any) -> Any:
    """Stored JSON as a response can carry it: a lone surrogate (stored by an agent, or by a
    client other than this API) becomes U+FFFD instead of failing the whole response."""
    text = json.dumps(value, ensure_ascii=False)
    try:
        text.encode()
    except UnicodeEncodeError:
        return json.loads(text.encode("utf-8", "surrogatepass").decode("utf-8", "replace"))
    return value


#: how a lone surrogate looks in JSON text that json.dumps wrote (ensure_ascii)
_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


def _decoded(text: str | None) -> JsonValue:
    if text is None:
        return None
    value: JsonValue = json.loads(text)
    return _printable(value) if _SURROGATE.search(text) else value


def epoch(when: datetime) -> float:
    """Seconds since the epoch of a query's time; a time without a zone is taken as UTC."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


class _Body(BaseModel):
    """A request body: unknown fields are an error, so a typo (``"inputs"``) is not ignored."""

    model_config = ConfigDict(extra="forbid")


class StartRun(_Body):
    """``POST /v1/runs``: start a run of ``agent`` with ``input``."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"agent": "echo", "input": "hello"}]}
    )

    agent: Name = Field(description="The agent's name")
    input: Json = Field(default=None, description="The run's input, any JSON")
    version: Name | None = Field(
        default=None, description="The agent version to run (default: the latest)"
    )
    priority: int = Field(default=0, ge=-INT32, le=INT32, description="Higher runs first")
    delay: float | None = Field(
        default=None,
        ge=0,
        le=10 * 366 * 86400,
        allow_inf_nan=False,
        description="Start no sooner than this many seconds from now",
    )
    tenant: Annotated[str, StringConstraints(max_length=128, pattern=_NO_NUL)] | None = Field(
        default=None,
        description="Who the run's costs are charged to; a tenant-scoped key may only name "
        "its own tenant (the default for it)",
    )


class ControlRequest(_Body):
    """``POST /v1/runs/{id}/pause|resume|cancel``: why (kept in the journal and audit log)."""

    reason: Reason | None = None


class SendMessage(_Body):
    """``POST /v1/runs/{id}/messages``: a message on ``topic`` that the run may receive."""

    topic: Name
    value: Json = Field(default=None, description="The message, any JSON")


class Decision(_Body):
    """``POST /v1/approvals/{id}/approve|reject``: why, and for an approval the answer (the
    person's reply to ``ctx.ask_human``, or the tool's arguments as edited)."""

    reason: Reason | None = None
    answer: Json = Field(default=None, description="Approve only: the answer, any JSON")


class RunOut(BaseModel):
    """One run as the API shows it."""

    id: str
    agent: str
    agent_version: str
    state: RunState
    waiting_for: str | None = Field(description="What a waiting run waits for")
    control: Control | None = Field(description="A pause or cancel requested, not yet done")
    input: JsonValue
    output: JsonValue = Field(description="A completed run's output")
    error: JsonValue = Field(description="A failed run's error")
    priority: int
    tenant: str
    parent_id: str | None
    schedule: str | None
    created_at: float
    updated_at: float
    run_at: float = Field(description="Not started before this time")
    claims: int = Field(description="How many times a worker claimed the run")
    lease_owner: str | None = Field(description="The worker executing the run, if any")
    lease_expires_at: float | None

    @classmethod
    def of(cls, run: Run) -> RunOut:
        # The store's rows are valid already: not validating them again saves a quarter of
        # the time a page of runs takes to convert.
        return cls.model_construct(
            id=run.id,
            agent=run.agent,
            agent_version=run.agent_version,
            state=run.state,
            waiting_for=run.waiting_for,
            control=run.control,
            input=_decoded(run.input),
            output=_decoded(run.output),
            error=_decoded(run.error),
            priority=run.priority,
            tenant=run.tenant,
            parent_id=run.parent_id,
            schedule=run.schedule,
            created_at=run.created_at,
            updated_at=run.updated_at,
            run_at=run.run_at,
            claims=run.claims,
            lease_owner=run.lease_owner,
            lease_expires_at=run.lease_expires_at,
        )


class RunPage(BaseModel):
    """Runs, newest first; pass ``next`` back as ``?next=`` for the following page."""

    runs: list[RunOut]
    next: str | None = Field(description="The cursor of the next page; null on the last one")


class EventOut(BaseModel):
    """One journal event. ``step`` is the position of the agent call it belongs to."""

    seq: int
    type: str
    step: int | None
    name: str | None
    attempt: int
    payload: dict[str, JsonValue]
    created_at: float
    duration: float | None

    @classmethod
    def of(cls, ev: Event) -> EventOut:
        return cls.model_construct(
            seq=ev.seq,
            type=ev.type,
            step=ev.step,
            name=ev.name,
            attempt=ev.attempt,
            payload=_printable(ev.payload),
            created_at=ev.created_at,
            duration=ev.duration,
        )


class JournalPage(BaseModel):
    """A run's events in order; pass ``next`` back as ``?after=`` for the following page."""

    events: list[EventOut]
    next: int | None = Field(description="The seq to pass as ?after=; null on the last page")


class RunEnd(BaseModel):
    """The data of an event stream's final ``end`` event: the run is over, stop listening."""

    id: str
    state: RunState


class MessageOut(BaseModel):
    """A message as stored; the run takes it at its next ``ctx.receive`` on the topic."""

    id: int
    run_id: str
    topic: str
    sender: str | None
    created_at: float

    @classmethod
    def of(cls, m: Message) -> MessageOut:
        return cls(
            id=m.id, run_id=m.run_id, topic=m.topic, sender=m.sender, created_at=m.created_at
        )


class CostLineOut(BaseModel):
    """One group's totals: LLM calls, tokens and dollars."""

    key: str = Field(description="The agent, model (provider:model), tenant or run")
    events: int = Field(description="Answered calls plus failed attempts")
    cost: float = Field(description="US dollars")
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int

    @classmethod
    def of(cls, line: CostLine) -> CostLineOut:
        return cls(
            key=line.key,
            events=line.events,
            cost=line.cost,
            input_tokens=line.input_tokens,
            output_tokens=line.output_tokens,
            cached_input_tokens=line.cached_input_tokens,
        )


class CostReport(BaseModel):
    by: str
    since: float | None
    lines: list[CostLineOut]


class BudgetLineOut(BaseModel):
    """One budget's spend for one run, agent or tenant in the current period (as ``kernos
    budgets`` shows it)."""

    budget: str = Field(description="The budget's name in kernos.toml")
    per: Literal["run", "agent", "tenant"]
    key: str = Field(description="The run id, agent or tenant the spend counts for")
    period: Literal["run", "day", "month"]
    period_start: float = Field(description="When the current period began (0: per run)")
    period_end: float | None = Field(description="When it turns; null for per-run periods")
    spent_usd: float
    spent_tokens: int
    reserved_usd: float = Field(description="Estimates of calls in flight, not yet settled")
    reserved_tokens: int
    limit_usd: float | None
    limit_tokens: int | None
    left_usd: float | None = Field(description="Limit less spent and reserved (may be < 0)")
    left_tokens: int | None
    on_exceed: Literal["suspend", "fail"]

    @classmethod
    def of(cls, line: BudgetLine) -> BudgetLineOut:
        return cls(**asdict(line))


class BudgetReport(BaseModel):
    """Spend against each configured budget, this period, by budget and key."""

    at: float = Field(description="The time whose periods these are")
    lines: list[BudgetLineOut]


class ToolDefinitionOut(BaseModel):
    """What a model is told about an MCP tool: what its hash covers."""

    name: str
    description: str
    input_schema: dict[str, JsonValue] = Field(description="The tool's MCP inputSchema")

    @classmethod
    def of(cls, d: ToolDefinition) -> ToolDefinitionOut:
        return cls(name=d.name, description=d.description, input_schema=_printable(d.input_schema))


class ToolPinOut(BaseModel):
    """An MCP tool as pinned, and a changed definition waiting for an admin (``pending_*``).

    A ``changed`` tool is withheld from models until its change is accepted (``POST
    /v1/tools/pins/{server}/{tool}/accept``). ``changed_fields`` names what differs between
    the pinned and the pending definition; both are here in full to diff.
    """

    server: str
    tool: str
    status: Literal["pinned", "changed"]
    hash: str = Field(description="sha256 of the pinned definition")
    definition: ToolDefinitionOut
    pending_hash: str | None = Field(description="sha256 of the changed definition, if any")
    pending_definition: ToolDefinitionOut | None
    changed_fields: list[Literal["name", "description", "input_schema"]]
    first_seen_at: float
    accepted_at: float
    accepted_by: str = Field(description="The run that first pinned it, or the admin")
    pending_seen_at: float | None

    @classmethod
    def of(cls, p: ToolPin) -> ToolPinOut:
        pending = p.pending_definition
        changed: list[Literal["name", "description", "input_schema"]] = []
        if pending is not None:
            if pending.name != p.definition.name:
                changed.append("name")
            if pending.description != p.definition.description:
                changed.append("description")
            if pending.input_schema != p.definition.input_schema:
                changed.append("input_schema")
        return cls(
            server=p.server,
            tool=p.tool,
            status="changed" if p.changed else "pinned",
            hash=p.hash,
            definition=ToolDefinitionOut.of(p.definition),
            pending_hash=p.pending_hash,
            pending_definition=None if pending is None else ToolDefinitionOut.of(pending),
            changed_fields=changed,
            first_seen_at=p.first_seen_at,
            accepted_at=p.accepted_at,
            accepted_by=p.accepted_by,
            pending_seen_at=p.pending_seen_at,
        )


class ToolPinList(BaseModel):
    """Pinned MCP tools by server and name; ``changed`` ones are withheld from models."""

    pins: list[ToolPinOut]


class AcceptChange(_Body):
    """``POST /v1/tools/pins/{server}/{tool}/accept``: the pending hash that was reviewed."""

    hash: Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{6,64}$")] | None = Field(
        default=None,
        description="A prefix (6 or more hex digits) of the pending hash you reviewed: accept "
        "only that change (409 if the tool changed again since)",
    )


class ApprovalOut(BaseModel):
    """A decision a run asked a person for, and the decision once made."""

    id: str
    run_id: str
    step: int
    tenant: str
    kind: str = Field(description="What asks: ask_human, a tool needing approval, a policy rule")
    question: str
    details: dict[str, JsonValue]
    state: ApprovalState
    decided_by: str | None
    reason: str | None
    answer: JsonValue
    created_at: float
    expires_at: float | None
    decided_at: float | None
    escalates: bool = Field(
        default=False, description="Its first deadline escalates rather than decides"
    )
    escalated_at: float | None = Field(default=None, description="When it was escalated")

    @classmethod
    def of(cls, a: Approval) -> ApprovalOut:
        answer: Any = a.answer
        return cls(
            id=a.id,
            run_id=a.run_id,
            step=a.step,
            tenant=a.tenant,
            kind=a.kind,
            question=a.question,
            details=_printable(a.details),
            state=a.state,
            decided_by=a.decided_by,
            reason=a.reason,
            answer=_printable(answer),
            created_at=a.created_at,
            expires_at=a.expires_at,
            decided_at=a.decided_at,
            escalates=a.escalates,
            escalated_at=a.escalated_at,
        )


class ApprovalList(BaseModel):
    approvals: list[ApprovalOut]


class AuditEntryOut(BaseModel):
    """One entry of the hash-chained audit log."""

    seq: int
    at: float
    actor: str
    tenant: str | None
    action: str
    target: str | None
    details: dict[str, JsonValue]
    prev_hash: str
    hash: str

    @classmethod
    def of(cls, e: AuditEntry) -> AuditEntryOut:
        return cls(
            seq=e.seq,
            at=e.at,
            actor=e.actor,
            tenant=e.tenant,
            action=e.action,
            target=e.target,
            details=_printable(e.details),
            prev_hash=e.prev_hash,
            hash=e.hash,
        )


class AuditPage(BaseModel):
    """Audit entries in order; pass ``next`` back as ``?after=`` for the following page."""

    entries: list[AuditEntryOut]
    next: int | None


class Health(BaseModel):
    status: str = "ok"


class Ready(BaseModel):
    status: str = "ready"
    database: str = Field(description="sqlite or postgresql")
    schema_version: int
