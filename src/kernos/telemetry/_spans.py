"""From committed journal events to spans, following the OpenTelemetry GenAI conventions.

A pure function of a run and the events a worker has just committed: no clocks, no globals, so
what a trace holds is decided by the journal alone. Each event that ends something (an LLM
call, an attempt, a tool call, a step, a memory operation, a wait, the run) yields the span of
that thing; its start comes from the event itself (``started_at``, ``since``, ``asked_at``, or
its duration), so a call whose first attempts were made by a worker that was later killed is
still shown whole by the worker that finished it.

The tree: the run's span (``invoke_agent``, ended when the run ends) is the root; each call
position is a span under it (``chat``, ``execute_tool``, ``kernos.step``, ...); an LLM call's
attempts and every policy decision are spans under their call. Ids come from
``kernos.telemetry._ids``: the same event always makes the same span.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kernos.store import Event, Run
from kernos.telemetry._ids import span_id_of

#: attribute values OpenTelemetry accepts
AttrValue = str | bool | int | float | Sequence[str]

RUN_ENDS = frozenset({"run_completed", "run_failed", "run_cancelled"})


@dataclass(frozen=True, slots=True)
class SpanData:
    name: str
    span_id: int
    #: None: the run's own span, the root of its trace
    parent_id: int | None
    #: epoch seconds
    start: float
    end: float
    kind: str = "internal"
    attributes: dict[str, AttrValue] = field(default_factory=dict)
    #: ``error.type`` when the thing failed
    error: str | None = None
    message: str = ""


def run_span_id(run_id: str) -> int:
    return span_id_of(run_id, "run")


def call_span_id(run_id: str, position: int) -> int:
    return span_id_of(run_id, f"p{position}")


def spans_of(
    run: Run,
    events: Sequence[Event],
    *,
    content: bool = False,
    providers: Mapping[str, str] | None = None,
) -> list[SpanData]:
    """The spans that ``events`` (just committed for ``run``) complete. ``content``: include
    message and tool contents (already redacted in the journal); off by default.
    ``providers`` maps the configured provider names to their kinds (``openai``,
    ``anthropic``), the well-known values of ``gen_ai.provider.name``; the configured name
    stays in ``kernos.provider``."""
    out: list[SpanData] = []
    for ev in events:
        made = _span(run, ev, content)
        if made is not None:
            name = made.attributes.get("gen_ai.provider.name")
            if isinstance(name, str) and name:
                made.attributes["kernos.provider"] = name
                made.attributes["gen_ai.provider.name"] = (providers or {}).get(name, name)
            out.append(made)
    return out


def _route_parts(route: str) -> tuple[str, str]:
    """A ``provider:model`` route's parts; ("", "") for a named route of several models."""
    provider, sep, model = route.partition(":")
    return (provider, model) if sep else ("", "")


def _span(run: Run, ev: Event, content: bool) -> SpanData | None:
    handler = _HANDLERS.get(ev.type)
    if handler is not None:
        return handler(run, ev, content)
    if ev.type in RUN_ENDS:
        return _run_span(run, ev)
    return None


def _base(run: Run, ev: Event) -> dict[str, AttrValue]:
    attrs: dict[str, AttrValue] = {"kernos.run_id": run.id, "kernos.agent": run.agent}
    if ev.step is not None:
        attrs["kernos.step"] = ev.step
        attrs["kernos.idempotency_key"] = f"{run.id}:{ev.step}"
    if ev.attempt:
        attrs["kernos.attempt"] = ev.attempt
    return attrs


def _parent(run: Run, ev: Event) -> int:
    return call_span_id(run.id, ev.step) if ev.step is not None else run_span_id(run.id)


# -- LLM calls ----------------------------------------------------------------------------------


def _usage(attrs: dict[str, AttrValue], usage: Mapping[str, Any] | None) -> None:
    if not usage:
        return
    attrs["gen_ai.usage.input_tokens"] = int(usage.get("input_tokens") or 0)
    attrs["gen_ai.usage.output_tokens"] = int(usage.get("output_tokens") or 0)
    cached = int(usage.get("cached_input_tokens") or 0)
    if cached:
        attrs["gen_ai.usage.cache_read.input_tokens"] = cached


def _llm_attempt(run: Run, ev: Event, content: bool) -> SpanData:
    """A failed (or repaired) attempt: its own span under the call, error class and all."""
    p = ev.payload
    attrs = _base(run, ev)
    attrs.update(
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": str(p.get("provider", "")),
            "gen_ai.request.model": str(p.get("model", "")),
            "kernos.attempt": int(p.get("n") or ev.attempt or 0),
            "kernos.llm.then": str(p.get("then", "")),
        }
    )
    if p.get("status") is not None:
        attrs["http.response.status_code"] = int(p["status"])
    if p.get("delay") is not None:
        attrs["kernos.llm.delay_s"] = float(p["delay"])
    _usage(attrs, p.get("usage"))
    start = float(p.get("started_at") or ev.created_at)
    error = str(p.get("error_class") or "error")
    return SpanData(
        name=f"chat {p.get('model', '')}".strip(),
        span_id=span_id_of(run.id, f"e{ev.seq}"),
        parent_id=_parent(run, ev),
        start=start,
        end=start + float(p.get("latency") or ev.duration or 0.0),
        kind="client",
        attributes=attrs,
        error=error,
        message=str(p.get("error", ""))[:500],
    )


def _llm_completed(run: Run, ev: Event, content: bool) -> SpanData:
    """The call (its span under the run), ended by the answering attempt."""
    p = ev.payload
    response: Mapping[str, Any] = p.get("response") or {}
    attrs = _base(run, ev)
    attrs.update(
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": str(response.get("provider", "")),
            "gen_ai.request.model": str(response.get("model", "")),
            "gen_ai.response.model": str(response.get("model", "")),
            "kernos.llm.route": str(ev.name or ""),
            "gen_ai.response.finish_reasons": [str(response.get("finish_reason", "stop"))],
            "kernos.llm.attempts": int(response.get("attempts") or 1),
            "kernos.cost_usd": float(response.get("cost") or 0.0),
        }
    )
    _usage(attrs, response.get("usage"))
    if content:
        attrs["gen_ai.output.messages"] = _output_messages(response)
    latency = float(response.get("latency") or ev.duration or 0.0)
    start = float(p.get("started_at") or ev.created_at - latency)
    return SpanData(
        name=f"chat {response.get('model') or ev.name or ''}".strip(),
        span_id=call_span_id(run.id, ev.step or 0),
        parent_id=run_span_id(run.id),
        start=min(start, ev.created_at - latency),
        end=ev.created_at,
        kind="client",
        attributes=attrs,
    )


def _llm_failed(run: Run, ev: Event, content: bool) -> SpanData:
    p = ev.payload
    attrs = _base(run, ev)
    attrs.update(
        {
            "gen_ai.operation.name": "chat",
            "kernos.llm.route": str(ev.name or p.get("route", "")),
            "kernos.llm.attempts": int(p.get("attempts") or 0),
        }
    )
    provider, model = _route_parts(str(ev.name or p.get("route", "")))
    if model:
        attrs["gen_ai.request.model"] = model
        attrs["gen_ai.provider.name"] = provider
    if p.get("rule"):
        attrs["kernos.policy.rule"] = str(p["rule"])
    return SpanData(
        name=f"chat {_route_parts(str(ev.name or ''))[1] or ev.name or ''}".strip(),
        span_id=call_span_id(run.id, ev.step or 0),
        parent_id=run_span_id(run.id),
        start=float(p.get("started_at") or ev.created_at),
        end=ev.created_at,
        kind="client",
        attributes=attrs,
        error=str(p.get("error_class") or p.get("type") or "error"),
        message=str(p.get("message", ""))[:500],
    )


def _output_messages(response: Mapping[str, Any]) -> str:
    import json

    parts: list[dict[str, Any]] = []
    if response.get("text"):
        parts.append({"type": "text", "content": response["text"]})
    for call in response.get("tool_calls") or ():
        parts.append(
            {
                "type": "tool_call",
                "id": call.get("id"),
                "name": call.get("name"),
                "arguments": call.get("arguments"),
            }
        )
    message = {
        "role": "assistant",
        "parts": parts,
        "finish_reason": response.get("finish_reason", "stop"),
    }
    return json.dumps([message], ensure_ascii=False)


# -- tools, steps, memory -------------------------------------------------------------------------


def _tool(run: Run, ev: Event, content: bool) -> SpanData:
    p = ev.payload
    attrs = _base(run, ev)
    attrs.update({"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": str(ev.name)})
    if p.get("call_id"):
        attrs["gen_ai.tool.call.id"] = str(p["call_id"])
    if content:
        import json

        attrs["gen_ai.tool.call.arguments"] = json.dumps(p.get("arguments"), ensure_ascii=False)
        if "result" in p:
            attrs["gen_ai.tool.call.result"] = json.dumps(p.get("result"), ensure_ascii=False)
    error = None if ev.type == "tool_completed" else str(p.get("kind") or "error")
    is_attempt = ev.type == "tool_attempt"
    duration = float(ev.duration or 0.0)
    start = ev.created_at - duration if is_attempt else float(p.get("started_at") or 0.0)
    if not start:
        start = ev.created_at - duration
    return SpanData(
        name=f"execute_tool {ev.name}",
        span_id=span_id_of(run.id, f"e{ev.seq}")
        if is_attempt
        else call_span_id(run.id, ev.step or 0),
        parent_id=_parent(run, ev) if is_attempt else run_span_id(run.id),
        start=start,
        end=ev.created_at,
        attributes=attrs,
        error=error,
        message=str(p.get("for_model", ""))[:500] if error else "",
    )


def _step(run: Run, ev: Event, content: bool) -> SpanData:
    p = ev.payload
    failed = ev.type == "step_failed"
    err: Mapping[str, Any] = p.get("error") or {}
    return SpanData(
        name=f"kernos.step {ev.name}",
        span_id=span_id_of(run.id, f"e{ev.seq}") if failed else call_span_id(run.id, ev.step or 0),
        parent_id=run_span_id(run.id),
        start=ev.created_at - float(ev.duration or 0.0),
        end=ev.created_at,
        attributes=_base(run, ev),
        error=str(err.get("type") or "error") if failed else None,
        message=str(err.get("message", ""))[:500] if failed else "",
    )


def _memory(run: Run, ev: Event, content: bool) -> SpanData:
    p = ev.payload
    operation = "search" if ev.type == "memory_search" else "put"
    attrs = _base(run, ev)
    attrs["kernos.memory.namespace"] = str(ev.name)
    if operation == "search":
        attrs["kernos.memory.hits"] = len(p.get("hits") or ())
        if content:
            attrs["kernos.memory.query"] = str(p.get("query", ""))
    return SpanData(
        name=f"kernos.memory.{operation} {ev.name}",
        span_id=call_span_id(run.id, ev.step or 0),
        parent_id=run_span_id(run.id),
        start=ev.created_at - float(ev.duration or 0.0),
        end=ev.created_at,
        attributes=attrs,
    )


# -- policy, waits, people ------------------------------------------------------------------------


def _checked(run: Run, ev: Event, content: bool) -> SpanData:
    p = ev.payload
    attrs = _base(run, ev)
    effect = str(p.get("effect", "allow"))
    attrs.update({"kernos.policy.effect": effect, "kernos.call.name": str(ev.name)})
    if p.get("rule"):
        attrs["kernos.policy.rule"] = str(p["rule"])
    if p.get("reason"):
        attrs["kernos.policy.reason"] = str(p["reason"])[:500]
    if p.get("budgets"):
        attrs["kernos.budgets"] = [str(b) for b in p["budgets"]]
    return SpanData(
        name=f"kernos.policy {effect}",
        span_id=span_id_of(run.id, f"e{ev.seq}"),
        parent_id=_parent(run, ev),
        start=ev.created_at,
        end=ev.created_at,
        attributes=attrs,
        error="policy_denied" if effect == "deny" else None,
    )


def _wait(what: str, since_key: str) -> Callable[[Run, Event, bool], SpanData | None]:
    def make(run: Run, ev: Event, content: bool) -> SpanData | None:
        since = ev.payload.get(since_key)
        if since is None:
            return None
        attrs = _base(run, ev)
        attrs["kernos.wait.for"] = what
        if ev.type == "approval_decided":
            p = ev.payload
            attrs["kernos.approval.id"] = str(p.get("id", ""))
            attrs["kernos.approval.state"] = str(p.get("state", ""))
            if p.get("by"):
                attrs["kernos.approval.decided_by"] = str(p["by"])
            if p.get("escalated_at"):
                attrs["kernos.approval.escalated_at"] = float(p["escalated_at"])
        elif ev.type == "message_timeout":
            attrs["kernos.wait.timed_out"] = True
        return SpanData(
            name=f"kernos.wait {what}",
            span_id=span_id_of(run.id, f"e{ev.seq}"),
            parent_id=run_span_id(run.id),
            start=float(since),
            end=ev.created_at,
            attributes=attrs,
        )

    return make


def _parked(run: Run, ev: Event, content: bool) -> SpanData:
    p = ev.payload
    attrs = _base(run, ev)
    attrs["kernos.wait.for"] = str(p.get("waiting_for", "provider"))
    until = float(p.get("retry_at") or ev.created_at)
    return SpanData(
        name="kernos.wait provider",
        span_id=span_id_of(run.id, f"e{ev.seq}"),
        parent_id=_parent(run, ev),
        start=ev.created_at,
        end=max(until, ev.created_at),
        attributes=attrs,
    )


def _run_span(run: Run, ev: Event) -> SpanData:
    state = ev.type.removeprefix("run_")
    attrs: dict[str, AttrValue] = {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.name": run.agent,
        "kernos.run_id": run.id,
        "kernos.agent.version": run.agent_version,
        "kernos.tenant": run.tenant,
        "kernos.run.state": state,
        "kernos.run.claims": run.claims,
    }
    if run.parent_id:
        attrs["kernos.parent_run_id"] = run.parent_id
    if run.principal:
        attrs["kernos.principal"] = run.principal
    err: Mapping[str, Any] = ev.payload.get("error") or {}
    return SpanData(
        name=f"invoke_agent {run.agent}",
        span_id=run_span_id(run.id),
        parent_id=None,
        start=run.created_at,
        end=ev.created_at,
        attributes=attrs,
        error=str(err.get("type") or state) if state != "completed" else None,
        message=str(err.get("message", ""))[:500],
    )


def _abandoned(run: Run, ev: Event, content: bool) -> SpanData:
    """A call the run's end cut off: its span ends there, so its attempts, policy decisions
    and waits (already exported under it) have a parent."""
    p = ev.payload
    attrs = _base(run, ev)
    if p.get("kind") == "llm":
        provider, model = _route_parts(str(ev.name or ""))
        attrs.update({"gen_ai.operation.name": "chat", "kernos.llm.route": str(ev.name or "")})
        if model:
            attrs.update({"gen_ai.request.model": model, "gen_ai.provider.name": provider})
        name = f"chat {model or ev.name or ''}".strip()
    else:
        attrs.update({"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": str(ev.name)})
        name = f"execute_tool {ev.name}"
    return SpanData(
        name=name,
        span_id=call_span_id(run.id, ev.step or 0),
        parent_id=run_span_id(run.id),
        start=float(p.get("started_at") or ev.created_at),
        end=ev.created_at,
        kind="client" if p.get("kind") == "llm" else "internal",
        attributes=attrs,
        error="abandoned",
        message=f"the run ended ({p.get('why', '?')}) before this call did",
    )


_HANDLERS: dict[str, Callable[[Run, Event, bool], SpanData | None]] = {
    "call_abandoned": _abandoned,
    "llm_attempt": _llm_attempt,
    "llm_completed": _llm_completed,
    "llm_failed": _llm_failed,
    "llm_parked": _parked,
    "llm_checked": _checked,
    "tool_checked": _checked,
    "tool_attempt": _tool,
    "tool_completed": _tool,
    "tool_failed": _tool,
    "step_completed": _step,
    "step_failed": _step,
    "memory_put": _memory,
    "memory_search": _memory,
    "timer_fired": _wait("timer", "since"),
    "message_received": _wait("message", "since"),
    "message_timeout": _wait("message", "since"),
    "approval_decided": _wait("approval", "asked_at"),
}

#: the event types that make a span (besides the run's end)
SPAN_EVENTS = frozenset(_HANDLERS)
