"""Executing one claimed run by replaying its journal (the core of guarantees 1, 2, 4 and 8).

The agent's code runs from the top on every claim. Each ``ctx`` call takes the next step
position; when the journal already holds that position's result, the call returns it without
running anything; otherwise the call runs live and commits its result before returning. A call
that must wait (a timer, a message, a child run) suspends the run: the coroutine is unwound with
an internal ``BaseException`` and the run becomes rows in the store until woken (guarantee 4).

Writes are as few as correctness allows: events that need no commit of their own (the claim, a
recorded ``ctx.now()``) wait in ``_pending`` and go out with the next write, in the same
transaction, so a step costs one commit.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import logging
import random
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar

from pydantic import ValidationError

from kernos.errors import (
    AgentNotFound,
    Cancelled,
    ChildRunFailed,
    InfrastructureError,
    InvalidInput,
    InvalidState,
    LeaseLost,
    LLMCallFailed,
    NotSerializable,
    StepFailed,
    ToolCallFailed,
    UsageError,
)
from kernos.kernel._calls import (
    CallCheck,
    CallRecord,
    CallService,
    DurableCall,
    Gatekeeper,
    Park,
    Verdict,
    track_open_calls,
)
from kernos.kernel._codec import encode, parse_json, roundtrip
from kernos.kernel._faults import Faults
from kernos.kernel._memory import (
    Embedder,
    Scrubber,
    hit_of,
    hit_payload,
    new_memory,
)
from kernos.kernel._notify import (
    ESCALATED,
    NEEDS_PERSON,
    NotificationPump,
    approval_notification,
)
from kernos.kernel._observe import Observer, safely
from kernos.kernel._registry import AgentSpec, Registry
from kernos.kernel._replay import CANCEL_DELIVERED, History
from kernos.kernel._retry import policy_of
from kernos.store import (
    Approval,
    ApprovalState,
    ApprovalWait,
    ChildWait,
    Claim,
    Control,
    Event,
    MemoryHit,
    Message,
    MessageWait,
    NewApproval,
    NewRun,
    Notification,
    RunState,
    Store,
    SuspendResult,
    Timer,
    WakeCheck,
    new_run_id,
)

log = logging.getLogger("kernos.worker")

T = TypeVar("T")

_current_key: contextvars.ContextVar[str] = contextvars.ContextVar("kernos_idempotency_key")

#: how long one look at a run's mailbox holds for ``ctx.receive`` (seconds)
MAIL_PROBE_EVERY = 0.02

#: a wait this short is slept in the worker rather than parked in the store
INLINE_SLEEP_MAX = 1.0


def idempotency_key() -> str:
    """The stable key ``<run_id>:<seq>`` of the step being executed (guarantee 2).

    The same on every attempt and after every crash and replay, so a tool or provider can
    deduplicate the effect. Only meaningful inside a step's function.
    """
    try:
        return _current_key.get()
    except LookupError:
        raise UsageError(
            "kernos.idempotency_key() was called outside a step; call it inside the function "
            "passed to ctx.step(...)"
        ) from None


class Suspend(BaseException):
    """Unwinds the agent's code when the run must wait; never seen by user code."""

    def __init__(
        self, waiting_for: str, events: list[Event], timer: Timer | None, wake: WakeCheck
    ) -> None:
        self.waiting_for = waiting_for
        self.events = events
        self.timer = timer
        self.wake = wake


class StoreDown(BaseException):
    """The store failed under a run (unreachable, full): not the agent's failure.

    Derives from ``BaseException`` so that agent code cannot catch it; the execution drops its
    claim and the run is replayed once the store answers again.
    """

    def __init__(self, cause: InfrastructureError) -> None:
        self.cause = cause
        super().__init__(str(cause))


class Yield(BaseException):
    """Unwinds the agent's code to hand the run back (paused, or a draining worker)."""

    def __init__(self, state: RunState, event_type: str) -> None:
        self.state = state
        self.event_type = event_type


#: events the kernel writes for itself (lease tokens, timers, ids): never redacted
BOOKKEEPING = frozenset(
    {
        "run_claimed",
        "run_released",
        "run_paused",
        "run_resumed",
        "timer_started",
        "timer_fired",
        "value",
        "child_spawned",
        "cancel_delivered",
        "mailbox_empty",
        "message_wait",
        "message_timeout",
    }
)

#: error text kept in the journal; a longer message or traceback is cut, keeping both ends
ERROR_TEXT_MAX = 16 * 1024


def _clip(text: str) -> str:
    if len(text) <= ERROR_TEXT_MAX:
        return text
    half = ERROR_TEXT_MAX // 2
    return f"{text[:half]}\n... [{len(text) - ERROR_TEXT_MAX} characters cut] ...\n{text[-half:]}"


def _error_payload(exc: BaseException) -> dict[str, Any]:
    return {
        "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "message": _clip(str(exc)),
        "traceback": _clip("".join(traceback.format_exception(exc))),
    }


@dataclass(slots=True)
class WorkerSignals:
    """What the worker tells its executions: drain, and which leases it lost."""

    draining: bool = False


class Execution:
    """One claim of one run, from loading its journal to suspending, releasing or finishing."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        claim: Claim,
        signals: WorkerSignals,
        faults: Faults,
        services: Mapping[str, CallService] | None = None,
        embedder: Embedder | None = None,
        notifications: NotificationPump | None = None,
        gatekeeper: Gatekeeper | None = None,
        redactor: Scrubber | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.store = store
        #: told of every event this execution commits (traces, metrics)
        self.observer = observer
        #: what the run writes is redacted with its tenant's rules before it is stored
        self.scrub: Scrubber | None = (
            redactor.for_tenant(claim.run.tenant) if redactor is not None else None
        )
        self.embedder = embedder
        #: the worker's notification pump: approvals queue notifications when there is one
        self.notifications = notifications
        self.gatekeeper = gatekeeper
        self.services: Mapping[str, CallService] = services or {}
        self.registry = registry
        self.claim = claim
        self.run = claim.run
        self.run_id = claim.run.id
        self.token = claim.token
        self.signals = signals
        self.faults = faults
        self.control: Control | None = claim.run.control
        self.lost = False
        self.spec: AgentSpec | None = None
        self._history = History(())
        self._seq = 0
        self._pos = 0
        self._pending: list[Event] = []
        self._cancel_sent = False
        self._inflight = 0
        self._scratch: dict[str, Any] = {}
        self._mail: frozenset[str] = frozenset()
        self._mail_probed_at = -1e9
        #: calls begun and not yet ended, by position (see ``_finish``)
        self._open_calls: dict[int, dict[str, Any]] = {}

    # -- the outer loop ---------------------------------------------------------------------

    async def execute(self) -> None:
        """Run the agent until it finishes, waits, yields, or the lease is lost."""
        try:
            self.spec = self.registry.get(self.run.agent, self.run.agent_version)
        except AgentNotFound as exc:
            await self._finish(RunState.FAILED, error=exc)
            return
        try:
            while True:
                if await self._attempt():
                    return
        except LeaseLost:
            log.warning("run %s: lease lost; stopped without writing", self.run_id)
        except (StoreDown, InfrastructureError) as exc:
            # Nothing more can be written now; the lease runs out and the run is claimed again
            # (by this worker too) and continues by replay once the store answers.
            log.warning("run %s: store unavailable, claim dropped: %s", self.run_id, exc)
            await self._release_quietly()
        except asyncio.CancelledError:
            if not self.lost:
                await asyncio.shield(self._release_quietly())
            raise

    async def _attempt(self) -> bool:
        """Replay the agent once; True when done with this claim, False to replay again."""
        self._history = History(await self.store.load_journal(self.run_id))
        self._open_calls = {}
        track_open_calls(self._open_calls, self._history.events)
        self._seq = self._history.last_seq
        self._pos = 0
        self._pending = []
        self._cancel_sent = False
        self._scratch = {}
        if not any(
            ev.type == "run_claimed" and ev.payload.get("token") == self.token
            for ev in self._history.events
        ):
            self._buffer(
                "run_claimed",
                payload={
                    "worker": self.run.lease_owner,
                    "token": self.token,
                    "claim": self.run.claims,
                    "replaying": self._history.last_step,
                },
            )
        assert self.spec is not None
        try:
            output = await self._invoke(self.spec)
        except Suspend as s:
            return await self._suspend(s)
        except Yield as y:
            batch = self._flush([self._event(y.event_type)])
            await self.store.release(self.run_id, self.token, state=y.state, events=batch)
            self._observed(batch)
            return True
        except Cancelled as exc:
            await self._finish(RunState.CANCELLED, error=exc)
            return True
        except Exception as exc:
            await self._finish(
                RunState.CANCELLED if self._cancelled else RunState.FAILED, error=exc
            )
            return True
        if self._cancelled:
            await self._finish(RunState.CANCELLED)
        else:
            await self._finish(RunState.COMPLETED, output=output)
        return True

    @property
    def _cancelled(self) -> bool:
        """Whether the agent has been given ``Cancelled`` (now, or in an earlier claim)."""
        return self._cancel_sent or self._history.cancel_delivered()

    async def _invoke(self, spec: AgentSpec) -> Any:
        from kernos.kernel._context import RunContext

        value = parse_json(self.run.input, f"the input of run {self.run_id}")
        if spec.input_model is not None:
            try:
                value = spec.input_model.model_validate(value)
            except ValidationError as exc:
                raise InvalidInput(
                    f"the input of run {self.run_id} does not match "
                    f"{spec.input_model.__name__}: {exc}"
                ) from exc
        result = await spec.fn(RunContext(self), value)
        self._history.check_finished(self._pos)
        return result

    async def _suspend(self, s: Suspend) -> bool:
        batch = self._flush(s.events)
        result = await self.store.suspend(
            self.run_id,
            self.token,
            waiting_for=s.waiting_for,
            events=batch,
            timer=s.timer,
            wake_check=s.wake,
            cancel_delivered=self._cancelled,
        )
        if result in (SuspendResult.SUSPENDED, SuspendResult.PAUSED):
            self._observed(batch)
            return True
        if result == SuspendResult.CANCEL_PENDING:
            self.control = Control.CANCEL
        return False  # what it waits for is there already (or a cancel is): replay again

    async def _finish(
        self, state: RunState, *, output: Any = None, error: BaseException | None = None
    ) -> None:
        out_text = None
        err_text = None
        payload: dict[str, Any] = {}
        if error is not None:
            payload["error"] = _error_payload(error)
            err_text = json.dumps(payload["error"])
        if state == RunState.COMPLETED:
            try:
                out_text = encode(output, f"the output of run {self.run_id}")
                self.store.check_size(f"the output of run {self.run_id}", out_text)
            except (NotSerializable, InvalidInput) as exc:
                return await self._finish(RunState.FAILED, error=exc)
            payload["output"] = json.loads(out_text)
        # Calls begun and never ended (cut off by a cancel, a failure): said so, so that
        # every call a trace or the dashboard shows has an end.
        abandoned = [
            self._event(
                "call_abandoned",
                step=pos,
                name=call["name"],
                payload={**call, "why": state.value},
            )
            for pos, call in sorted(self._open_calls.items())
        ]
        final = self._event(f"run_{state.value}", payload=payload)
        if self.scrub is not None:  # the run's row holds what its journal holds
            if "output" in final.payload:
                out_text = encode(final.payload["output"], f"the output of run {self.run_id}")
            if "error" in final.payload:
                err_text = json.dumps(final.payload["error"])
        events = self._flush([*abandoned, final])
        await self.store.finish(
            self.run_id, self.token, state=state, events=events, output=out_text, error=err_text
        )
        self._observed(events)

    async def _release_quietly(self) -> None:
        """A worker shutting down past its grace period gives its runs back."""
        try:
            await self.store.release(
                self.run_id,
                self.token,
                state=RunState.QUEUED,
                events=self._flush([self._event("run_released", payload={"why": "shutdown"})]),
            )
        except (LeaseLost, Exception) as exc:  # best effort: the lease runs out otherwise
            log.warning("run %s: could not release on shutdown: %s", self.run_id, exc)

    # -- events -----------------------------------------------------------------------------

    def _event(
        self,
        type_: str,
        *,
        step: int | None = None,
        name: str | None = None,
        attempt: int = 0,
        payload: dict[str, Any] | None = None,
        duration: float | None = None,
        payload_json: str | None = None,
    ) -> Event:
        self._seq += 1
        if self.scrub is not None and type_ not in BOOKKEEPING:
            if payload:
                payload = self.scrub.json(payload)
            if payload_json is not None:
                payload_json = self.scrub.json_text(payload_json)
        return Event(
            seq=self._seq,
            type=type_,
            step=step,
            name=name,
            attempt=attempt,
            payload=payload or {},
            created_at=time.time(),
            duration=duration,
            payload_json=payload_json,
        )

    def _buffer(self, type_: str, **kw: Any) -> None:
        self._pending.append(self._event(type_, **kw))

    def _flush(self, events: list[Event]) -> list[Event]:
        out, self._pending = [*self._pending, *events], []
        return out

    def _observed(self, events: Sequence[Event]) -> None:
        """``events`` are committed: note the calls they open and end, and tell the observer
        (once: replay commits nothing). An observer's failure is logged, never the run's."""
        track_open_calls(self._open_calls, events)
        if self.observer is not None and events:
            safely(self.observer.committed, self.run, events)

    async def _commit(
        self, batch: list[Event], fn: Callable[..., Awaitable[T]], *args: Any, **kw: Any
    ) -> T:
        """A fenced store write that carries ``batch``: a lost lease stops this execution, a
        store error is the store's (the run is replayed), and once committed it is observed."""
        try:
            result = await fn(*args, **kw)
        except LeaseLost:
            self.lost = True
            raise
        except InfrastructureError as exc:
            raise StoreDown(exc) from exc
        self._observed(batch)
        return result

    async def _write(self, *events: Event) -> None:
        batch = self._flush(list(events))
        control = await self._commit(batch, self.store.append, self.run_id, self.token, batch)
        if control is not None:
            self.control = control

    # -- step positions and boundaries ------------------------------------------------------

    def _next(self, kind: str, name: str) -> tuple[int, list[Event]]:
        self._pos += 1
        if self._history.cancel_at(self._pos):
            self._cancel_sent = True
            raise Cancelled(f"run {self.run_id} was cancelled")
        return self._pos, self._history.at(self._pos, kind, name)

    def _boundary(self, pos: int) -> None:
        """Before live work: act on a lost lease, a cancel, a pause or a drain."""
        if self.lost:
            raise LeaseLost(self.run_id)
        if self.control == Control.CANCEL and not self._cancelled:
            self._cancel_sent = True
            self._buffer(CANCEL_DELIVERED, step=pos)
            raise Cancelled(f"run {self.run_id} was cancelled")
        if self.control == Control.PAUSE:
            raise Yield(RunState.PAUSED, "run_paused")
        if self.signals.draining:
            raise Yield(RunState.QUEUED, "run_released")

    async def _store_call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kw: Any) -> T:
        """A store call made from inside agent code: its failure is the store's, not the agent's."""
        try:
            return await fn(*args, **kw)
        except InfrastructureError as exc:
            raise StoreDown(exc) from exc

    def _suspension(
        self, waiting_for: str, events: list[Event], timer: Timer | None, wake: WakeCheck
    ) -> Suspend:
        """The run must wait; refused while sibling steps still run (their effects would be
        cut off mid-flight and repeated on replay)."""
        if self._inflight:
            raise UsageError(
                f"the run must wait for {waiting_for} while {self._inflight} step(s) still run "
                f"concurrently (asyncio.gather of a step and a wait?); await those steps before "
                f"waiting, or gather only steps"
            )
        return Suspend(waiting_for, events, timer, wake)

    # -- ctx primitives ---------------------------------------------------------------------

    async def step(
        self, name: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        pos, recorded = self._next("step", name)
        for ev in recorded:
            if ev.type == "step_completed":
                return ev.payload.get("result")
            if ev.type == "step_failed":
                err = ev.payload.get("error", {})
                raise StepFailed(name, ev.attempt, err.get("type", "?"), err.get("message", ""))
        self._boundary(pos)
        assert self.spec is not None
        policy = policy_of(fn, self.spec.retry)
        attempt = len(recorded)
        self._inflight += 1  # until its result is committed (see _suspension)
        try:
            while True:
                attempt += 1
                started = time.time()
                token = _current_key.set(f"{self.run_id}:{pos}")
                try:
                    self.faults.hit("before_effect", name)
                    result = await _call(fn, args, kwargs)
                    self.faults.hit("after_effect", name)
                except Exception as exc:
                    await self._attempt_failed(name, pos, attempt, started, exc, policy)
                    continue
                finally:
                    _current_key.reset(token)
                value, text = roundtrip(result, f"the result of step {name!r} (step {pos})")
                if self.scrub is not None:  # live code gets what replay will: redacted
                    clean = self.scrub.json_text(text)
                    if clean is not text:
                        text, value = clean, json.loads(clean)
                event = self._event(
                    "step_completed",
                    step=pos,
                    name=name,
                    attempt=attempt,
                    payload={"result": value},
                    duration=time.time() - started,
                    payload_json='{"result":' + text + "}",  # encoded once, by roundtrip
                )
                await self._write(event)
                return value
        finally:
            self._inflight -= 1

    async def service_call(
        self, kind: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """``ctx.<kind>(...)``: a durable call served by the service registered for ``kind``."""
        service = self.services.get(kind)
        if service is None:
            raise UsageError(
                f"ctx.{kind} needs a {kind} service in this worker, and it has none: start the "
                f"worker with `kernos worker` or kernos.testing.running_worker, or pass "
                f"services=kernos.default_services() to Worker(...)"
            )
        return await self.call(kind, name, service, args, kwargs)

    async def call(
        self,
        kind: str,
        name: str,
        service: CallService,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """A durable call of ``kind`` at the next position, served by ``service``."""
        pos, recorded = self._next(kind, name)
        record = CallRecord.of(kind, recorded)
        gate: tuple[CallCheck, Verdict] | None = None
        if record.completed is None and record.failed is None:
            self._boundary(pos)
            if self.gatekeeper is not None:
                args, gate = await self._gate(kind, name, pos, recorded, args, kwargs)

        async def write(
            type_: str, payload: dict[str, Any], duration: float | None, n: int
        ) -> None:
            await self._write(
                self._event(
                    type_, step=pos, name=name, attempt=n, payload=payload, duration=duration
                )
            )

        call = DurableCall(
            kind,
            name,
            pos,
            self.run_id,
            record,
            write,
            self._scratch,
            self.scrub.json if self.scrub is not None else _same,
        )
        self._inflight += 1  # until its outcome is committed (see _suspension)
        token = _current_key.set(call.idempotency_key)
        result: Any = None
        try:
            result = await service(call, *args, **kwargs)
            return result
        except Park as p:
            parked = p
        finally:
            _current_key.reset(token)
            self._inflight -= 1
            if gate is not None and self.gatekeeper is not None:
                await self._store_call(self.gatekeeper.settle, gate[0], gate[1], result)
        event = self._event(
            f"{kind}_parked",
            step=pos,
            name=name,
            payload={**parked.payload, "retry_at": parked.retry_at},
        )
        raise self._suspension(parked.waiting_for, [event], Timer(pos, parked.retry_at), None)

    async def _gate(
        self,
        kind: str,
        name: str,
        pos: int,
        recorded: list[Event],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> tuple[tuple[Any, ...], tuple[CallCheck, Verdict] | None]:
        """Checks before effects (guarantee 6): policy and budgets decide before the call is
        made; the decision is journaled first at the call's position, so replay decides the
        same. A denial fails the call (the model is told); an approval is asked at the same
        position; a spent budget parks the run until it may spend again."""
        assert self.gatekeeper is not None
        check = CallCheck(
            kind=kind,
            name=name,
            run_id=self.run_id,
            agent=self.run.agent,
            tenant=self.run.tenant,
            principal=self.run.principal,
            arguments=args[0] if kind == "tool" and args else {},
            messages=args[1] if kind == "llm" and len(args) > 1 else (),
            params=kwargs if kind == "llm" else {},
            key=f"{self.run_id}:{pos}",
        )
        checked = next((ev for ev in recorded if ev.type == f"{kind}_checked"), None)
        verdict: Verdict | None = None
        if checked is None:
            verdict = await self._store_call(self.gatekeeper.check, check)
            if verdict.effect == "wait":
                await self._wait_for_gate(pos, verdict)
            payload = {"effect": verdict.effect, "reason": verdict.reason, **verdict.payload}
            self._buffer(f"{kind}_checked", step=pos, name=name, payload=payload)
        else:
            payload = checked.payload
        effect = payload.get("effect", "allow")
        if effect == "deny":
            await self._refuse(kind, name, pos, str(payload.get("reason", "")), payload)
        if effect == "require_approval":
            what = f"{name}({', '.join(f'{k}={v!r}' for k, v in check.arguments.items())})"
            decision = await self._approval_at(
                pos,
                f"{kind}:{name}",
                f"Policy requires a person to approve {kind} call {what}: "
                f"{payload.get('reason', '')}",
                {"tool": name, "arguments": dict(check.arguments)}
                if kind == "tool"
                else {"route": name, "rule": payload.get("rule")},
                None,
                {"approved": False},
                recorded,
            )
            if not decision.get("approved"):
                who = decision.get("by") or "a person"
                why = decision.get("reason") or "no reason given"
                await self._refuse(
                    kind, name, pos, f"{who} rejected this call: {why}", {"rejected": True}
                )
            answer = decision.get("answer")
            if kind == "tool" and isinstance(answer, Mapping):
                args = (dict(answer), *args[1:])
        if checked is not None or effect == "require_approval":
            # The call goes ahead on a decision made earlier (a killed worker's, one before a
            # park) or after a person's approval: the checks that hold what it may spend
            # (budgets) are made again now; what an earlier attempt reserved is taken over.
            verdict = await self._store_call(self.gatekeeper.resume, check, payload)
            if verdict is not None and verdict.effect == "wait":
                await self._wait_for_gate(pos, verdict)
            if verdict is not None and verdict.effect == "deny":
                await self._refuse(kind, name, pos, verdict.reason, verdict.payload)
        return args, ((check, verdict) if verdict is not None else None)

    async def _wait_for_gate(self, pos: int, verdict: Verdict) -> NoReturn:
        """Not now (a spent budget): wait, holding nothing, and ask again at ``retry_at``."""
        when = verdict.retry_at or time.time() + 60
        await self._quiesce()
        raise self._suspension(verdict.waiting_for, [], Timer(pos, when), None)

    async def _refuse(
        self, kind: str, name: str, pos: int, reason: str, payload: Mapping[str, Any]
    ) -> NoReturn:
        """Journal the refused call as failed (replay raises the same) and raise."""
        rule = payload.get("rule")
        if kind == "tool":
            failed = {"kind": "denied", "for_model": f"denied: {reason}", "rule": rule}
            error: Exception = ToolCallFailed(name, "denied", f"denied: {reason}", attempts=0)
        else:
            message = f"policy denied the call: {reason}"
            failed = {
                "type": "LLMCallFailed",
                "route": name,
                "error_class": "policy_denied",
                "message": message,
                "attempts": 0,
                "rule": rule,
            }
            error = LLMCallFailed(name, "policy_denied", message, attempts=0)
        await self._write(self._event(f"{kind}_failed", step=pos, name=name, payload=failed))
        raise error

    async def _quiesce(self) -> None:
        """Wait for sibling calls in flight (``asyncio.gather``) to commit, so that this one
        may suspend the run (a suspension cuts off what is still running)."""
        while self._inflight:  # noqa: ASYNC110 - rare and short; _inflight moves in many places
            await asyncio.sleep(0.005)

    async def _attempt_failed(
        self, name: str, pos: int, attempt: int, started: float, exc: Exception, policy: Any
    ) -> None:
        duration = time.time() - started
        payload: dict[str, Any] = {"error": _error_payload(exc)}
        if policy.retries(exc, attempt):
            delay = policy.delay(attempt, random.random())
            payload["retry_in"] = delay
            await self._write(
                self._event(
                    "step_attempt_failed",
                    step=pos,
                    name=name,
                    attempt=attempt,
                    payload=payload,
                    duration=duration,
                )
            )
            await asyncio.sleep(delay)
            self._boundary(pos)
            return
        await self._write(
            self._event(
                "step_failed",
                step=pos,
                name=name,
                attempt=attempt,
                payload=payload,
                duration=duration,
            )
        )
        error = payload["error"]
        raise StepFailed(name, attempt, error["type"], error["message"]) from exc

    async def sleep(self, seconds: float) -> None:
        pos, recorded = self._next("sleep", "sleep")
        if any(ev.type == "timer_fired" for ev in recorded):
            return
        new: list[Event] = []
        self._boundary(pos)
        if recorded:
            fire_at = float(recorded[0].payload["fire_at"])
            since = recorded[0].created_at
        else:
            fire_at = time.time() + max(0.0, seconds)
            since = time.time()
            new.append(
                self._event(
                    "timer_started",
                    step=pos,
                    name="sleep",
                    payload={"seconds": seconds, "fire_at": fire_at},
                )
            )
        remaining = fire_at - time.time()
        if remaining > INLINE_SLEEP_MAX:
            raise self._suspension("timer", new, Timer(pos, fire_at), None)
        if remaining > 0:
            await asyncio.sleep(remaining)
        await self._write(
            *new, self._event("timer_fired", step=pos, name="sleep", payload={"since": since})
        )

    async def wait_for_message(self, topic: str, timeout: float | None, default: Any) -> Any:
        pos, recorded = self._next("wait_for_message", topic)
        for ev in recorded:
            if ev.type == "message_received":
                return ev.payload.get("payload")
            if ev.type == "message_timeout":
                return default
        self._boundary(pos)
        if recorded:
            deadline = recorded[0].payload.get("deadline")
        else:
            deadline = None if timeout is None else time.time() + max(0.0, timeout)
            self._buffer(
                "message_wait",
                step=pos,
                name=topic,
                payload={"topic": topic, "timeout": timeout, "deadline": deadline},
            )
        since = recorded[0].created_at if recorded else time.time()
        message = await self._take_message(topic, pos, since=since)
        if message is not None:
            return parse_json(message.payload, f"message {message.id}")
        if deadline is not None and time.time() >= deadline:
            await self._write(
                self._event("message_timeout", step=pos, name=topic, payload={"since": since})
            )
            return default
        timer = Timer(pos, deadline) if deadline is not None else None
        raise self._suspension(f"message:{topic}", [], timer, MessageWait(topic))

    async def send(self, to: str, topic: str, value: Any) -> None:
        pos, recorded = self._next("send", topic)
        if recorded:
            return
        self._boundary(pos)
        if self.scrub is not None:
            value = self.scrub.json(value)
        text = encode(value, f"the message to run {to} on {topic!r} (step {pos})")
        event = self._event(
            "message_sent", step=pos, name=topic, payload={"to": to, "topic": topic}
        )
        batch = self._flush([event])
        await self._commit(
            batch,
            self.store.send_from_run,
            self.run_id,
            self.token,
            events=batch,
            to=to,
            topic=topic,
            payload=text,
        )

    async def ask_human(
        self,
        kind: str,
        question: str,
        details: dict[str, Any],
        timeout: float | None,
        on_timeout: dict[str, Any],
    ) -> dict[str, Any]:
        """A decision a person makes, durably: the run waits (holding nothing) until one is
        recorded, or until ``timeout`` when ``on_timeout`` is the decision."""
        pos, recorded = self._next("approval", kind)
        for ev in recorded:
            if ev.type == "approval_decided":
                return ev.payload
        self._boundary(pos)
        return await self._approval_at(pos, kind, question, details, timeout, on_timeout, recorded)

    async def _approval_at(
        self,
        pos: int,
        kind: str,
        question: str,
        details: dict[str, Any],
        timeout: float | None,
        on_timeout: dict[str, Any],
        recorded: list[Event],
    ) -> dict[str, Any]:
        """The approval at ``pos`` (asked now if it was not yet), decided or waited for.

        ``on_timeout``: ``approved`` and ``answer`` are the decision taken at the deadline;
        with ``escalate``, the first deadline escalates instead (people are told again, the
        approval is marked escalated) and the decision is taken ``escalation_timeout`` seconds
        later, if ever."""
        for ev in recorded:
            if ev.type == "approval_decided":
                return ev.payload
        approval_id = f"{self.run_id}:{pos}"
        escalates = bool(on_timeout.get("escalate"))
        requested = next((ev for ev in recorded if ev.type == "approval_requested"), None)
        if requested is None:
            expires_at = None if timeout is None else time.time() + max(0.0, timeout)
            await self._ask(pos, kind, question, details, expires_at, escalates)
        else:
            expires_at = requested.payload.get("expires_at")
        escalated = next((ev for ev in recorded if ev.type == "approval_escalated"), None)
        if escalated is not None:
            expires_at = escalated.payload.get("expires_at")
        approval = await self._store_call(self.store.get_approval, approval_id)
        while approval.state == ApprovalState.PENDING:
            if expires_at is None or time.time() < expires_at:
                timer = Timer(pos, expires_at) if expires_at is not None else None
                await self._quiesce()
                raise self._suspension(
                    f"approval:{approval_id}", [], timer, ApprovalWait(approval_id)
                )
            if escalates and escalated is None:
                after = on_timeout.get("escalation_timeout")
                expires_at = None if after is None else time.time() + float(after)
                escalated = await self._escalate(pos, kind, approval_id, timeout, expires_at)
                escalates = escalated is not None  # None: a person decided meanwhile
                approval = await self._store_call(self.store.get_approval, approval_id)
                continue
            why = f"no decision within {timeout:g} s" if timeout else "timed out"
            if escalated is not None:
                why += ", nor by the escalated deadline"
            try:
                approval = await self._store_call(
                    self.store.decide_approval,
                    approval_id,
                    approve=bool(on_timeout.get("approved")),
                    by="kernos:timeout",
                    reason=why,
                    answer=on_timeout.get("answer"),
                    expired=True,
                )
            except InvalidState:  # a person decided in the meantime: theirs stands
                approval = await self._store_call(self.store.get_approval, approval_id)
        payload = {
            "id": approval_id,
            "state": approval.state.value,
            "approved": approval.state == ApprovalState.APPROVED
            or (approval.state == ApprovalState.EXPIRED and bool(on_timeout.get("approved"))),
            "answer": approval.answer,
            "by": approval.decided_by,
            "reason": approval.reason,
            "decided_at": approval.decided_at,
            "asked_at": approval.created_at,
            "escalated_at": approval.escalated_at,
        }
        await self._write(self._event("approval_decided", step=pos, name=kind, payload=payload))
        return payload

    async def _ask(
        self,
        pos: int,
        kind: str,
        question: str,
        details: dict[str, Any],
        expires_at: float | None,
        escalates: bool,
    ) -> None:
        """Record the approval, its journal event and its notification, atomically."""
        if self.scrub is not None:
            question, details = self.scrub.text(question), self.scrub.json(details)
        new = NewApproval(
            run_id=self.run_id,
            step=pos,
            tenant=self.run.tenant,
            kind=kind,
            question=question,
            details=details,
            expires_at=expires_at,
            escalates=escalates,
        )
        event = self._event(
            "approval_requested",
            step=pos,
            name=kind,
            payload={
                "id": new.id,
                "question": question,
                "details": details,
                "expires_at": expires_at,
                "escalates": escalates,
            },
        )
        notify = self._notice(new, NEEDS_PERSON)
        batch = self._flush([event])
        await self._commit(
            batch,
            self.store.request_approval,
            self.run_id,
            self.token,
            events=batch,
            approval=new,
            notify=notify,
        )
        if notify and self.notifications is not None:
            self.notifications.wake()

    async def _escalate(
        self,
        pos: int,
        kind: str,
        approval_id: str,
        timeout: float | None,
        expires_at: float | None,
    ) -> Event | None:
        """Nobody decided by the deadline: escalate (journaled, audited, people told again).
        None when a person decided meanwhile."""
        event = self._event(
            "approval_escalated",
            step=pos,
            name=kind,
            payload={"id": approval_id, "after": timeout, "expires_at": expires_at},
        )
        current = await self._store_call(self.store.get_approval, approval_id)
        batch = self._flush([event])
        try:
            await self._commit(
                batch,
                self.store.escalate_approval,
                self.run_id,
                self.token,
                approval_id=approval_id,
                events=batch,
                expires_at=expires_at,
                by="kernos:timeout",
                notify=self._notice(replace(current, expires_at=expires_at), ESCALATED),
            )
        except InvalidState:
            self._pending = batch[:-1]  # not written: what was buffered waits for the next write
            return None
        if self.notifications is not None:
            self.notifications.wake()
        return event

    def _notice(self, approval: NewApproval | Approval, event: str) -> list[Notification]:
        """The notification to queue with ``approval`` (none when nobody is to be told)."""
        if self.notifications is None:
            return []
        return [approval_notification(approval, event, time.time())]

    async def receive(self, topic: str) -> tuple[bool, Any]:
        """Take the next message on ``topic`` if one waits; never waits for one.

        Finding none is journaled too (buffered: it commits with whatever the agent writes next,
        which is all that may depend on it), so replay sees the same empty mailbox even if a
        message arrived since.
        """
        pos, recorded = self._next("receive", topic)
        for ev in recorded:
            if ev.type == "message_taken":
                return True, ev.payload.get("payload")
            if ev.type == "mailbox_empty":
                return False, None
        self._boundary(pos)
        if topic not in await self._mail_topics():
            self._buffer("mailbox_empty", step=pos, name=topic)
            return False, None
        message = await self._take_message(topic, pos, event_type="message_taken")
        self._mail_probed_at = -1e9  # the mailbox changed: look again next time
        if message is not None:
            return True, parse_json(message.payload, f"message {message.id}")
        self._buffer("mailbox_empty", step=pos, name=topic)
        return False, None

    async def _mail_topics(self) -> frozenset[str]:
        """The topics with mail waiting, looked up at most every ``MAIL_PROBE_EVERY`` seconds:
        an agent checks several topics per turn, and a message that arrives just after a look
        is seen at the next turn (what each look found is journaled, so replay agrees)."""
        now = time.monotonic()
        if now - self._mail_probed_at > MAIL_PROBE_EVERY:
            self._mail = await self._store_call(self.store.waiting_topics, self.run_id)
            self._mail_probed_at = now
        return self._mail

    def note(self, name: str, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """A fact the agent decided, journaled at its position (e.g. a context compaction).

        Replay returns the recorded payload instead of calling ``make``, so what was decided
        once stays decided even if the code that decides changes. Buffered: it commits with the
        next write, which is the first thing that can depend on it.
        """
        pos, recorded = self._next("note", name)
        if recorded:
            return recorded[0].payload
        self._boundary(pos)
        payload = make()
        self._buffer("note", step=pos, name=name, payload=payload)
        return payload

    async def _take_message(
        self,
        topic: str,
        pos: int,
        *,
        event_type: str = "message_received",
        since: float | None = None,
    ) -> Message | None:
        """Consume a waiting message, committing it with the events not yet written.

        With no message there, nothing is written and those events stay pending for the
        suspend that follows.
        """
        before = self._flush([])
        seq = self._seq + 1

        def make_event(m: Message) -> Event:
            return Event(
                seq=seq,
                type=event_type,
                step=pos,
                name=topic,
                payload={
                    "message_id": m.id,
                    "sender": m.sender,
                    "payload": json.loads(m.payload),
                    **({"since": since} if since is not None else {}),
                },
                created_at=time.time(),
            )

        try:
            message = await self.store.take_message(
                self.run_id, self.token, topic=topic, step=pos, before=before, make_event=make_event
            )
        except InfrastructureError as exc:
            raise StoreDown(exc) from exc
        if message is None:
            self._pending = before
        else:
            self._seq = seq
            self._observed([*before, make_event(message)])
        return message

    async def memory_put(self, namespace: str, text: str, metadata: dict[str, Any]) -> str:
        pos, recorded = self._next("memory_put", namespace)
        if recorded:
            return str(recorded[0].payload["id"])
        self._boundary(pos)
        started = time.time()
        if self.scrub is not None:
            text, metadata = self.scrub.text(text), self.scrub.json(metadata)
        embedding = (await self._embed([text]))[0] if self.embedder is not None else None
        memory = await self._store_call(
            self.store.put_memory,
            new_memory(
                namespace,
                text,
                metadata,
                tenant=self.run.tenant,
                run_id=self.run_id,
                embedding=embedding,
                key=f"{self.run_id}:{pos}",  # made again after a crash: stored once
            ),
        )
        await self._write(
            self._event(
                "memory_put",
                step=pos,
                name=namespace,
                payload={"id": memory.id, "text": text, "metadata": metadata},
                duration=time.time() - started,
            )
        )
        return memory.id

    async def memory_search(
        self, namespace: str, query: str, k: int, metadata: dict[str, Any]
    ) -> list[MemoryHit]:
        pos, recorded = self._next("memory_search", namespace)
        if recorded:
            hits = recorded[0].payload.get("hits", [])
            return [hit_of(h, namespace, self.run.tenant) for h in hits]
        self._boundary(pos)
        started = time.time()
        embedding = (await self._embed([query]))[0] if self.embedder is not None else None
        found = await self._store_call(
            self.store.search_memory,
            namespace,
            query,
            k=k,
            tenant=self.run.tenant,
            embedding=embedding,
            metadata=metadata or None,
        )
        self._buffer(
            "memory_search",
            step=pos,
            name=namespace,
            payload={
                "query": query,
                "k": k,
                "metadata": metadata,
                "hits": [hit_payload(h) for h in found],
            },
            duration=time.time() - started,
        )
        return found

    async def _embed(self, texts: list[str]) -> list[list[float]]:
        assert self.embedder is not None
        vectors = await self.embedder.embed(texts)
        if len(vectors) != len(texts):
            raise UsageError(
                f"the embedder returned {len(vectors)} vector(s) for {len(texts)} text(s)"
            )
        return [list(map(float, v)) for v in vectors]

    def now(self) -> datetime:
        value = self._value("now", time.time)
        return datetime.fromtimestamp(float(value), tz=UTC)

    def uuid(self) -> uuid.UUID:
        return uuid.UUID(str(self._value("uuid", lambda: str(uuid.uuid4()))))

    def random(self) -> float:
        return float(self._value("random", random.random))

    def _value(self, kind: str, make: Callable[[], Any]) -> Any:
        pos, recorded = self._next("value", kind)
        if recorded:
            return recorded[0].payload["value"]
        self._boundary(pos)
        value = make()
        self._buffer("value", step=pos, name=kind, payload={"value": value})
        return value

    async def spawn(self, agent: str, input_: Any, version: str | None) -> str:
        pos, recorded = self._next("spawn", agent)
        if recorded:
            return str(recorded[0].payload["child_id"])
        self._boundary(pos)
        spec = self.registry.get(agent, version)
        text = encode(input_, f"the input of the child run of {agent!r} (step {pos})")
        child_id = new_run_id()
        event = self._event(
            "child_spawned",
            step=pos,
            name=agent,
            payload={"child_id": child_id, "agent": agent, "version": spec.version},
        )
        batch = self._flush([event])
        await self._commit(
            batch,
            self.store.spawn,
            self.run_id,
            self.token,
            events=batch,
            child=NewRun(
                id=child_id,
                agent=agent,
                agent_version=spec.version,
                input=text,
                priority=self.run.priority,
                parent_id=self.run_id,
                tenant=self.run.tenant,
                principal=self.run.principal,
            ),
        )
        return child_id

    async def child_result(self, child_id: str) -> Any:
        pos, recorded = self._next("child_result", child_id)
        if not recorded:
            self._boundary(pos)
            child = await self._store_call(self.store.get_run, child_id)
            if not child.state.terminal:
                raise self._suspension(f"child:{child_id}", [], None, ChildWait(child_id))
            output = json.loads(child.output) if child.output else None
            error = json.loads(child.error) if child.error else None
            await self._write(
                self._event(
                    "child_result",
                    step=pos,
                    name=child_id,
                    payload={"state": child.state.value, "output": output, "error": error},
                )
            )
            recorded = [
                Event(
                    seq=0,
                    type="child_result",
                    payload={"state": child.state.value, "output": output, "error": error},
                )
            ]
        payload = recorded[-1].payload
        if payload["state"] != RunState.COMPLETED.value:
            err = payload.get("error") or {}
            raise ChildRunFailed(child_id, payload["state"], err.get("message"))
        return payload.get("output")


def _same(value: Any) -> Any:
    return value


async def _call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Await an async callable; run a sync one on a thread so it cannot block the worker."""
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - callable objects with async __call__
    ):
        return await fn(*args, **kwargs)
    result = await asyncio.to_thread(fn, *args, **kwargs)
    if inspect.isawaitable(result):
        return await result
    return result
