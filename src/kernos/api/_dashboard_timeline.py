"""A run's journal as the dashboard's timeline: one row per event, placed on a waterfall.

Pure functions over ``Event`` records (no I/O), so the run page, its "load more" fragments and
the tests share one projection. The reading of each event type follows ``kernos trace``
(``cli/_render.py``): what an event says in one line, and which events are failures, waits or
people acting. What the journal holds is already redacted (the worker scrubs before it writes).

Each row has a bar on the run's time axis (seconds from the run's creation):

* an event with a duration (a step, an LLM answer, a tool call, a memory operation) spans
  ``[at - duration, at]``;
* a failed LLM attempt spans its own latency, and the backoff it then waited is a second,
  hatched segment, so that retries, their delays and fallbacks read apart at a glance;
* an event that ends a wait (a timer firing, a message arriving, a person deciding, a child
  finishing) spans the wait, from the event that began it, when that began on the same page
  (the page's script links waits that began on an earlier page);
* anything else is an instant: a tick.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from kernos.store import Event

#: how much of one payload field a row shows; the rest is a link to the event's JSON
DETAIL_LIMIT = 16_000

_CATEGORY = {
    "run_claimed": "run",
    "run_released": "run",
    "run_completed": "run",
    "run_failed": "failed",
    "run_cancelled": "control",
    "run_paused": "control",
    "run_resumed": "control",
    "cancel_delivered": "control",
    "step_completed": "step",
    "step_failed": "failed",
    "step_attempt_failed": "attempt",
    "llm_completed": "llm",
    "llm_attempt": "attempt",
    "llm_failed": "failed",
    "llm_parked": "wait",
    "llm_checked": "policy",
    "tool_completed": "tool",
    "tool_attempt": "attempt",
    "tool_failed": "failed",
    "tool_parked": "wait",
    "tool_checked": "policy",
    "memory_put": "memory",
    "memory_search": "memory",
    "context_compacted": "memory",
    "timer_started": "wait",
    "timer_fired": "wait",
    "message_wait": "wait",
    "message_timeout": "wait",
    "message_received": "message",
    "message_taken": "message",
    "message_sent": "message",
    "mailbox_empty": "noise",
    "child_spawned": "child",
    "child_result": "child",
    "approval_requested": "human",
    "approval_escalated": "human",
    "approval_decided": "human",
    "value": "noise",
    "note": "step",
}

#: an event that ends a wait -> the event types that begin it
_WAIT_OPENERS = {
    "timer_fired": ("timer_started",),
    "message_received": ("message_wait",),
    "message_timeout": ("message_wait",),
    "approval_decided": ("approval_requested",),
    "child_result": ("child_spawned",),
}

#: the categories a person may show or hide on the run page, in the order of the toggles
CATEGORIES = (
    "step",
    "llm",
    "attempt",
    "tool",
    "memory",
    "wait",
    "human",
    "message",
    "child",
    "policy",
    "control",
    "run",
    "failed",
    "noise",
)


@dataclass(frozen=True, slots=True)
class Detail:
    """One labelled part of an event's payload, as text (JSON, pretty), maybe cut short."""

    label: str
    text: str
    cut: bool = False


@dataclass(frozen=True, slots=True)
class Bar:
    """Where a row sits on the run's time axis, in seconds from the run's creation."""

    start: float
    length: float
    #: a backoff waited after this (failed) attempt, drawn after it
    delay: float = 0.0
    #: this row ends a wait that began at ``start`` (drawn as a wait)
    wait: bool = False


@dataclass(frozen=True, slots=True)
class Row:
    """One journal event as the timeline shows it."""

    seq: int
    type: str
    category: str
    step: int | None
    name: str
    attempt: int
    #: seconds from the run's creation to the event
    at: float
    duration: float | None
    bar: Bar
    #: what a failed attempt led to: retry, fallback, fail, park, repair
    then: str | None
    summary: str
    fields: tuple[tuple[str, str], ...]
    details: tuple[Detail, ...]
    #: ends a wait whose beginning is not on this page (the page's script links it)
    open_wait: bool = False


def category_of(event_type: str) -> str:
    if event_type in _CATEGORY:
        return _CATEGORY[event_type]
    if event_type.endswith("_failed"):
        return "failed"
    return "run" if event_type.startswith("run_") else "step"


def duration_text(seconds: float | None) -> str:
    """``12.3 ms``, ``1.20 s``, ``2.5 min``, ``3.1 h``; ``-`` for none."""
    if seconds is None:
        return "-"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1000:.1f} ms"


def usd_text(value: float) -> str:
    if value == 0:
        return "$0"
    if value < 0.01:
        return f"${value:.6f}"
    return f"${value:,.2f}" if value >= 1 else f"${value:.4f}"


def short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def pretty(value: Any) -> str:
    """JSON as a person reads it: indented, non-ASCII as itself."""
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, ensure_ascii=False, default=str, sort_keys=False)


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str, separators=(", ", ": "))


def summary(ev: Event) -> str:
    """What the event says, in one line (after the type, step and name the row shows)."""
    p = ev.payload
    t = ev.type
    if t == "run_claimed":
        replay = p.get("replaying") or 0
        again = f", replaying {replay} step(s)" if replay else ""
        return f"claimed by {p.get('worker')} (claim {p.get('claim')}{again})"
    if t in ("step_failed", "step_attempt_failed"):
        err = p.get("error") or {}
        retry = f"; retry in {duration_text(p['retry_in'])}" if "retry_in" in p else ""
        kind = str(err.get("type", "")).rsplit(".", 1)[-1]
        return short(f"{kind}: {err.get('message', '')}{retry}", 240)
    if t == "step_completed":
        return short(f"→ {_compact(p.get('result'))}")
    if t == "timer_started":
        return f"sleep {duration_text(p.get('seconds'))}"
    if t == "message_wait":
        deadline = f" (timeout {duration_text(p['timeout'])})" if p.get("timeout") else ""
        return f"waits for a message on {p.get('topic')!r}{deadline}"
    if t in ("message_taken", "message_received"):
        sender = f" from {p['sender']}" if p.get("sender") else ""
        return short(f"message{sender}: {_compact(p.get('payload'))}")
    if t == "message_sent":
        return f"to run {p.get('to')} on {p.get('topic')!r}"
    if t == "child_spawned":
        return f"child {p.get('child_id')} ({p.get('agent')})"
    if t == "child_result":
        return f"child {p.get('state')}"
    if t == "llm_attempt":
        return _attempt_summary(p)
    if t == "llm_completed":
        return _answer_summary(p.get("response") or {})
    if t == "llm_parked":
        return f"every model down ({p.get('error_class')}): the run waits for a provider"
    if t == "llm_failed":
        return short(f"{p.get('error_class')}: {p.get('message', '')}", 240)
    if t in ("tool_attempt", "tool_completed", "tool_failed"):
        return _tool_summary(t, p)
    if t in ("llm_checked", "tool_checked"):
        reason = f": {p['reason']}" if p.get("reason") else ""
        return f"policy: {p.get('effect', 'allow')}{reason}"
    if t == "approval_requested":
        return short(f"asks a person: {p.get('question', '')}", 240)
    if t == "approval_escalated":
        return "escalated: no decision in time"
    if t == "approval_decided":
        by = f" by {p['by']}" if p.get("by") else ""
        reason = f" ({p['reason']})" if p.get("reason") else ""
        return short(f"{p.get('state')}{by}{reason}", 240)
    if t == "memory_put":
        return short(f"remember {p.get('id')}: {p.get('text', '')}")
    if t == "memory_search":
        hits = p.get("hits") or []
        return short(f"search {p.get('query')!r} → {len(hits)} hit(s)")
    if t == "value":
        return short(_compact(p.get("value")))
    if t == "note":
        return short(_compact(p), 200)
    if "reason" in p:
        return short(str(p["reason"]), 200)
    return ""


def _attempt_summary(p: dict[str, Any]) -> str:
    status = f" {p['status']}" if p.get("status") else ""
    then = p.get("then") or "retry"
    if then == "retry" and p.get("delay") is not None:
        nxt = f"retry in {duration_text(p['delay'])}"
    elif then == "fallback":
        nxt = "fall back to the next model"
    elif then == "park":
        nxt = "park the run until a provider recovers"
    else:
        nxt = then
    return f"{p.get('provider')}:{p.get('model')} {p.get('error_class')}{status} → {nxt}"


def _answer_summary(r: dict[str, Any]) -> str:
    u = r.get("usage") or {}
    calls = r.get("tool_calls") or []
    said = f"{len(calls)} tool call(s)" if calls else short(str(r.get("text") or ""), 80)
    attempts = r.get("attempts") or 1
    tries = f", after {attempts} attempts" if attempts > 1 else ""
    return (
        f"{r.get('provider')}:{r.get('model')} {u.get('input_tokens', 0)}+"
        f"{u.get('output_tokens', 0)} tokens {usd_text(float(r.get('cost') or 0))}{tries}: {said}"
    )


def _tool_summary(t: str, p: dict[str, Any]) -> str:
    args = short(_compact(p.get("arguments", {})), 100)
    if t == "tool_completed":
        return short(f"({args}) → {_compact(p.get('result'))}", 240)
    retry = f"; retry in {duration_text(p['retry_in'])}" if "retry_in" in p else ""
    return short(f"({args}) {p.get('kind')}: {p.get('for_model', '')}{retry}", 240)


def _details(payload: dict[str, Any]) -> tuple[tuple[tuple[str, str], ...], tuple[Detail, ...]]:
    """Scalars as short fields; each structured or long value as a block of its own (the
    inputs and outputs: arguments, result, response, error, hits...)."""
    fields: list[tuple[str, str]] = []
    blocks: list[Detail] = []
    for key, value in payload.items():
        if isinstance(value, dict | list) or (isinstance(value, str) and len(value) > 120):
            text = pretty(value)
            cut = len(text) > DETAIL_LIMIT
            blocks.append(Detail(key, text[:DETAIL_LIMIT] if cut else text, cut))
        else:
            fields.append((key, "null" if value is None else str(value)))
    return tuple(fields), tuple(blocks)


def _bar(ev: Event, at: float, t0: float, opened: dict[int, float]) -> tuple[Bar, bool]:
    p = ev.payload
    if ev.type == "llm_attempt" and isinstance(p.get("started_at"), int | float):
        latency = float(p.get("latency") or ev.duration or 0.0)
        delay = float(p.get("delay") or 0.0)
        return Bar(float(p["started_at"]) - t0, latency, delay=delay), False
    if ev.type in _WAIT_OPENERS:
        began = p.get("since")
        start = float(began) - t0 if isinstance(began, int | float) else None
        if start is None and ev.step is not None:
            start = opened.get(ev.step)
        if start is None:
            return Bar(at, 0.0, wait=True), True
        return Bar(start, max(0.0, at - start), wait=True), False
    if ev.duration:
        return Bar(at - ev.duration, ev.duration), False
    return Bar(at, 0.0), False


def rows_of(events: Iterable[Event], t0: float) -> list[Row]:
    """The timeline rows of ``events`` (in journal order), times relative to ``t0``."""
    opened: dict[int, float] = {}
    rows: list[Row] = []
    for ev in events:
        at = ev.created_at - t0
        if ev.step is not None and any(ev.type in o for o in _WAIT_OPENERS.values()):
            opened.setdefault(ev.step, at)
        bar, open_wait = _bar(ev, at, t0, opened)
        fields, details = _details(ev.payload)
        rows.append(
            Row(
                seq=ev.seq,
                type=ev.type,
                category=category_of(ev.type),
                step=ev.step,
                name=ev.name or "",
                attempt=ev.attempt,
                at=at,
                duration=ev.duration,
                bar=bar,
                then=ev.payload.get("then") if ev.type == "llm_attempt" else None,
                summary=summary(ev),
                fields=fields,
                details=details,
                open_wait=open_wait,
            )
        )
    return rows


def span_of(rows: Sequence[Row], floor: float) -> float:
    """The time axis' length: at least ``floor`` seconds, and every bar on it."""
    end = max((r.bar.start + r.bar.length + r.bar.delay for r in rows), default=0.0)
    return max(floor, end, 1e-3)
