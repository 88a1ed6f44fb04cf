"""Durable calls: the kernel's primitive under ``ctx.llm`` and ``ctx.tool``.

A call to an outside service has attempts, may wait for the service to recover, and ends with
an answer or a failure. The kernel journals all of it at the call's position, but knows nothing
of LLMs: a *service* from a higher layer (the gateway) does the work through a ``DurableCall``
handle. Attempts are journaled before any wait (a killed worker's successor resumes with the
call's history); ``park`` suspends the run with a timer, holding nothing while it waits; the
final answer or failure is what replay returns without calling the service again.

Events at a call's position, for kind ``k``: ``k_attempt`` (one per failed attempt),
``k_parked`` (the run waits; a later round starts after it), ``k_completed``, ``k_failed``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol

from kernos.store import Event

#: the kinds of durable call the kernel journals (each maps its events to a replay kind)
CALL_KINDS = ("llm", "tool")


class CallService(Protocol):
    """What a higher layer registers with a worker to serve ``ctx.<kind>(...)`` calls."""

    def __call__(self, call: DurableCall, /, *args: Any, **kwargs: Any) -> Awaitable[Any]: ...


class DurableTool(Protocol):
    """What ``ctx.tool`` calls: an object that serves its own durable calls.

    The agents layer's ``kernos.Tool`` is one (a Python function or an MCP server's tool); the
    kernel only gives it the call's journaled history and the run's scratch space.
    """

    @property
    def name(self) -> str: ...

    def serve(
        self, call: DurableCall, arguments: dict[str, Any], /, **options: Any
    ) -> Awaitable[Any]: ...


@dataclass(frozen=True, slots=True)
class CallRecord:
    """What the journal holds for one call position."""

    completed: dict[str, Any] | None = None
    failed: dict[str, Any] | None = None
    #: attempts of the current round (after the last park), oldest first
    attempts: tuple[dict[str, Any], ...] = ()
    #: when the call was first attempted (its deadline counts from there); None if never
    started_at: float | None = None
    parks: int = 0

    @classmethod
    def of(cls, kind: str, recorded: Sequence[Event]) -> CallRecord:
        completed = failed = None
        attempts: list[dict[str, Any]] = []
        parks = 0
        for ev in recorded:
            if ev.type == f"{kind}_attempt":
                attempts.append(ev.payload)
            elif ev.type == f"{kind}_parked":
                attempts = []
                parks += 1
            elif ev.type == f"{kind}_completed":
                completed = ev.payload
            elif ev.type == f"{kind}_failed":
                failed = ev.payload
        started = None
        if recorded:
            started = float(recorded[0].payload.get("started_at") or recorded[0].created_at)
        return cls(completed, failed, tuple(attempts), started, parks)


class Park(BaseException):
    """Raised by ``DurableCall.park``: the run must wait (a BaseException: agent code's
    ``except Exception`` must not swallow it)."""

    def __init__(self, waiting_for: str, retry_at: float, payload: dict[str, Any]) -> None:
        super().__init__(f"waiting for {waiting_for} until {retry_at}")
        self.waiting_for = waiting_for
        self.retry_at = retry_at
        self.payload = payload


@dataclass
class DurableCall:
    """A service's handle on one call position of one run."""

    kind: str
    name: str
    position: int
    run_id: str
    record: CallRecord
    _write: Callable[[str, dict[str, Any], float | None, int], Awaitable[None]] = field(repr=False)
    #: state a service keeps for the whole run during one replay of it (e.g. the loop
    #: breaker's counts); rebuilt from scratch on each replay, so it must be derived only from
    #: what the calls return, which replay reproduces
    scratch: dict[str, Any] = field(default_factory=dict, repr=False)
    #: redacts a JSON value as the journal will store it: a service returns what it journals,
    #: so live code sees what replay will see
    scrub: Callable[[Any], Any] = field(default=lambda value: value, repr=False)
    #: when this call was first attempted: its record's, or now (journaled with its outcome,
    #: so that a trace shows the whole call, attempts made by a killed worker included)
    started_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if self.record.started_at is not None:
            self.started_at = self.record.started_at

    @property
    def idempotency_key(self) -> str:
        """Stable across attempts and replays: ``<run_id>:<position>``."""
        return f"{self.run_id}:{self.position}"

    @property
    def completed(self) -> dict[str, Any] | None:
        return self.record.completed

    @property
    def failed(self) -> dict[str, Any] | None:
        return self.record.failed

    @property
    def attempts(self) -> tuple[dict[str, Any], ...]:
        return self.record.attempts

    async def attempt(self, payload: dict[str, Any], *, duration: float, n: int) -> None:
        """Journal a failed attempt (commits before returning: wait only after this)."""
        await self._write(f"{self.kind}_attempt", payload, duration, n)

    async def complete(self, payload: dict[str, Any], *, duration: float, n: int) -> None:
        await self._write(f"{self.kind}_completed", self._timed(payload), duration, n)

    async def fail(self, payload: dict[str, Any], *, n: int) -> None:
        await self._write(f"{self.kind}_failed", self._timed(payload), None, n)

    def _timed(self, payload: dict[str, Any]) -> dict[str, Any]:
        return payload if "started_at" in payload else {**payload, "started_at": self.started_at}

    def park(self, waiting_for: str, retry_at: float, payload: dict[str, Any]) -> NoReturn:
        """Suspend the run until ``retry_at`` (wall clock); the call starts a new round then."""
        raise Park(waiting_for, retry_at, payload)


@dataclass(frozen=True, slots=True)
class CallCheck:
    """A call about to be made, as the checks before effects see it (guarantee 6)."""

    kind: str
    #: the tool's name, or the LLM call's route
    name: str
    run_id: str
    agent: str
    tenant: str
    #: who started the run (None when not recorded)
    principal: str | None
    #: the tool's arguments (empty for an LLM call)
    arguments: Mapping[str, Any]
    #: an LLM call's messages and options (empty for a tool call)
    messages: Sequence[Any] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    #: the call's identity, ``<run_id>:<position>``: the same for every attempt and successor
    key: str = ""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the checks decided. ``effect``: ``allow``, ``deny``, ``require_approval``, or
    ``wait`` (not now: a budget is spent; ask again at ``retry_at``). ``payload`` is journaled
    (``<kind>_checked``) so that replay decides the same; ``hold`` is the checker's own state
    for ``settle`` (a budget reservation)."""

    effect: str
    reason: str = ""
    payload: dict[str, Any] = field(default_factory=dict)
    retry_at: float | None = None
    waiting_for: str = "budget"
    hold: Any = None


class Gatekeeper(Protocol):
    """Checks before effects: policy and budgets, from the governance layer."""

    async def check(self, call: CallCheck) -> Verdict: ...

    async def settle(self, call: CallCheck, verdict: Verdict, result: Any) -> None:
        """The call ended (``result`` is what it returned, or None if it failed)."""
        ...

    async def resume(self, call: CallCheck, payload: Mapping[str, Any]) -> Verdict | None:
        """The call goes ahead on an earlier decision (``payload``, journaled): one made before
        its worker died or before a park, or a policy's ``require_approval`` a person has just
        approved. What it may spend is checked again: the verdict whose ``hold`` this worker
        settles (taking over what an earlier attempt reserved), ``wait`` or ``deny`` when a
        budget is spent, or None (nothing to settle)."""
        ...


def call_kinds() -> dict[str, str]:
    """Event type -> replay kind, for every durable call kind."""
    return {
        f"{kind}_{suffix}": kind
        for kind in CALL_KINDS
        for suffix in ("checked", "attempt", "parked", "completed", "failed")
    }


#: events that show a call under way, and those that end it
_OPENS = frozenset(f"{k}_{s}" for k in CALL_KINDS for s in ("checked", "attempt", "parked"))
_ENDS = frozenset(f"{k}_{s}" for k in CALL_KINDS for s in ("completed", "failed"))


def track_open_calls(open_calls: dict[int, dict[str, Any]], events: Sequence[Event]) -> None:
    """Keep ``open_calls`` (position -> kind, name, when it began) up to date with
    ``events``: a call is open from its first event until it completes or fails."""
    for ev in events:
        if ev.step is None:
            continue
        if ev.type in _OPENS and ev.step not in open_calls:
            open_calls[ev.step] = {
                "kind": ev.type.partition("_")[0],
                "name": ev.name,
                "started_at": float(ev.payload.get("started_at") or ev.created_at),
            }
        elif ev.type in _ENDS:
            open_calls.pop(ev.step, None)
