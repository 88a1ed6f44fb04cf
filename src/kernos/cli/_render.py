"""Turning runs and journals into terminal output and JSON: projections, no business logic."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from kernos.errors import UsageError
from kernos.gateway import CostLine
from kernos.kernel import STEP_KINDS, format_time
from kernos.store import Event, Run, Schedule

STATE_STYLE = {
    "queued": "cyan",
    "running": "bold blue",
    "waiting": "yellow",
    "paused": "magenta",
    "completed": "green",
    "failed": "bold red",
    "cancelled": "dim",
}


def _json_field(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def run_dict(run: Run) -> dict[str, Any]:
    data = asdict(run)
    data["state"] = run.state.value
    data["control"] = run.control.value if run.control else None
    data["input"] = _json_field(run.input)
    data["output"] = _json_field(run.output)
    data["error"] = _json_field(run.error)
    return data


def event_dict(ev: Event) -> dict[str, Any]:
    return asdict(ev)


def schedule_dict(s: Schedule) -> dict[str, Any]:
    data = asdict(s)
    data["input"] = _json_field(s.input)
    return data


def dumps(value: Any) -> str:
    return json.dumps(value, indent=2, default=str)


@dataclass
class StepSummary:
    """One ``ctx`` call as the journal tells it: what, how many attempts, how long, outcome."""

    position: int
    kind: str
    name: str
    status: str = "started"
    attempts: int = 0
    duration: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    error: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


_STATUS = {
    "step_completed": "completed",
    "step_failed": "failed",
    "step_attempt_failed": "retrying",
    "timer_started": "waiting",
    "timer_fired": "completed",
    "message_wait": "waiting",
    "message_received": "completed",
    "message_timeout": "timed out",
    "child_spawned": "completed",
    "child_result": "completed",
    "value": "completed",
    "llm_attempt": "retrying",
    "llm_parked": "waiting",
    "llm_completed": "completed",
    "llm_failed": "failed",
    "tool_attempt": "retrying",
    "tool_parked": "waiting",
    "tool_completed": "completed",
    "tool_failed": "failed",
    "message_taken": "completed",
    "mailbox_empty": "empty",
    "note": "completed",
    "memory_put": "completed",
    "memory_search": "completed",
    "message_sent": "completed",
}


def steps_of(events: list[Event]) -> list[StepSummary]:
    steps: dict[int, StepSummary] = {}
    for ev in events:
        if ev.step is None or ev.type not in STEP_KINDS:
            continue
        s = steps.get(ev.step)
        if s is None:
            s = steps[ev.step] = StepSummary(ev.step, STEP_KINDS[ev.type], ev.name or "")
            s.started_at = ev.created_at - (ev.duration or 0.0)
        s.status = _STATUS.get(ev.type, ev.type)
        s.attempts = max(s.attempts, ev.attempt)
        s.ended_at = ev.created_at
        s.duration = (ev.created_at - s.started_at) if s.started_at is not None else ev.duration
        if ev.type in ("step_failed", "step_attempt_failed"):
            err = ev.payload.get("error", {})
            s.error = f"{err.get('type', '?').rsplit('.', 1)[-1]}: {err.get('message', '')}"
        if ev.type in ("llm_attempt", "llm_failed"):
            s.error = f"{ev.payload.get('error_class')}: {ev.payload.get('error') or ''}"[:200]
        if ev.type == "llm_completed":
            r = ev.payload.get("response", {})
            s.error = None  # answered: earlier attempts' errors are in the trace
            s.name = f"{s.name} -> {r.get('provider')}:{r.get('model')} ${r.get('cost', 0):.6f}"
        if ev.type in ("tool_attempt", "tool_failed"):
            s.error = str(ev.payload.get("for_model", ""))[:200]
            if ev.payload.get("kind") == "refused":
                s.status = "refused"
        if ev.type == "tool_completed":
            s.error = None
        if ev.type == "child_result" and ev.payload.get("state") != "completed":
            s.status = ev.payload.get("state", "failed")
    # a turn's look at an empty mailbox is in the trace; in a list of steps it is noise
    return [steps[k] for k in sorted(steps) if steps[k].status != "empty"]


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1000:.1f} ms"


def runs_table(runs: list[Run]) -> Table:
    table = Table(box=None, header_style="bold")
    table.add_column("RUN", no_wrap=True, min_width=26)
    for col in ("AGENT", "STATE", "WAITING FOR", "PRIORITY", "CREATED", "UPDATED"):
        table.add_column(col)
    for r in runs:
        table.add_row(
            r.id,
            f"{r.agent}@{r.agent_version}",
            Text(r.state.value, style=STATE_STYLE.get(r.state.value, "")),
            r.waiting_for or "",
            str(r.priority),
            format_time(r.created_at),
            format_time(r.updated_at),
        )
    return table


def inspect_view(run: Run, events: list[Event]) -> Table:
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("run", run.id)
    head.add_row("agent", f"{run.agent} (version {run.agent_version})")
    head.add_row("state", Text(run.state.value, style=STATE_STYLE.get(run.state.value, "")))
    if run.waiting_for:
        head.add_row("waiting for", run.waiting_for)
    if run.control:
        head.add_row("requested", f"{run.control.value} (at the next step boundary)")
    if run.lease_owner:
        head.add_row(
            "lease",
            f"{run.lease_owner}, token {run.lease_token}, expires {format_time(run.lease_expires_at)}",
        )
    head.add_row("claims", str(run.claims))
    if run.parent_id:
        head.add_row("parent", run.parent_id)
    head.add_row("created", format_time(run.created_at))
    head.add_row("input", _short(run.input))
    if run.output is not None:
        head.add_row("output", _short(run.output))
    if run.error is not None:
        err = json.loads(run.error)
        head.add_row("error", Text(f"{err.get('type', '')}: {err.get('message', '')}", "red"))
    steps = Table(box=None, header_style="bold", title="steps", title_justify="left")
    for col in ("#", "KIND", "NAME", "STATUS", "ATTEMPTS", "DURATION", "ERROR"):
        steps.add_column(col)
    for s in steps_of(events):
        steps.add_row(
            str(s.position),
            s.kind,
            s.name,
            s.status,
            str(s.attempts) if s.kind in ("step", "llm") else "",
            _ms(s.duration),
            s.error or "",
        )
    outer = Table.grid()
    outer.add_row(head)
    outer.add_row("")
    outer.add_row(steps)
    return outer


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _event_label(ev: Event, t0: float) -> Text:
    offset = f"+{_ms(ev.created_at - t0)}"
    label = Text(f"{offset:>10}  ", style="dim")
    style = "red" if "fail" in ev.type else ("yellow" if ev.type.endswith("wait") else "")
    label.append(ev.type, style=style or "bold")
    if ev.step is not None:
        label.append(f" #{ev.step}")
    if ev.name:
        label.append(f" {ev.name}", style="cyan")
    if ev.attempt:
        label.append(f" attempt {ev.attempt}")
    if ev.duration is not None:
        label.append(f" ({_ms(ev.duration)})", style="dim")
    detail = _event_detail(ev)
    if detail:
        label.append(f"  {detail}", style="dim")
    return label


def _event_detail(ev: Event) -> str:
    p = ev.payload
    if ev.type == "run_claimed":
        return (
            f"by {p.get('worker')} (token {p.get('token')}, replaying {p.get('replaying')} step(s))"
        )
    if ev.type in ("step_failed", "step_attempt_failed"):
        err = p.get("error", {})
        retry = f", retry in {_ms(p['retry_in'])}" if "retry_in" in p else ""
        return f"{err.get('type', '').rsplit('.', 1)[-1]}: {err.get('message', '')}{retry}"
    if ev.type == "timer_started":
        return f"for {_ms(p.get('seconds'))}"
    if ev.type == "child_spawned":
        return f"child {p.get('child_id')}"
    if ev.type == "llm_attempt":
        status = f" {p['status']}" if p.get("status") else ""
        then = p.get("then", "")
        wait = f" in {_ms(p['delay'])}" if p.get("delay") is not None else ""
        return (
            f"{p.get('provider')}:{p.get('model')} {p.get('error_class')}{status} -> {then}{wait}"
        )
    if ev.type == "llm_completed":
        r = p.get("response", {})
        u = r.get("usage", {})
        return (
            f"{r.get('provider')}:{r.get('model')} {u.get('input_tokens', 0)}+"
            f"{u.get('output_tokens', 0)} tokens ${r.get('cost', 0):.6f}"
        )
    if ev.type == "llm_parked":
        return (
            f"every model down ({p.get('error_class')}); retry at {format_time(p.get('retry_at'))}"
        )
    if ev.type == "llm_failed":
        return f"{p.get('error_class')}: {p.get('message', '')}"[:300]
    if ev.type in ("tool_attempt", "tool_completed", "tool_failed"):
        return _tool_detail(ev.type, p)
    if ev.type in ("message_taken", "message_received"):
        sender = f" from {p['sender']}" if p.get("sender") else ""
        return f"message{sender}: {_short(dumps(p.get('payload')), 200)}"
    if ev.type == "note":
        return _short(dumps(p), 300)
    if ev.type == "memory_put":
        return f"{p.get('id')}: {_short(str(p.get('text', '')), 200)}"
    if ev.type == "memory_search":
        hits = p.get("hits") or []
        best = f"; best: {_short(str(hits[0].get('text', '')), 120)}" if hits else ""
        return f"{p.get('query')!r} -> {len(hits)} hit(s){best}"
    if ev.type == "message_sent":
        return f"to run {p.get('to')}"
    if "reason" in p:
        return str(p["reason"])
    return ""


def _tool_detail(type_: str, p: dict[str, Any]) -> str:
    args = _short(dumps(p.get("arguments", {})), 120)
    if type_ == "tool_completed":
        return f"{args} -> {_short(dumps(p.get('result')), 160)}"
    retry = f", retry in {_ms(p['retry_in'])}" if "retry_in" in p else ""
    return f"{args} {p.get('kind')}: {_short(str(p.get('for_model', '')), 200)}{retry}"


def trace_tree(run: Run, events: list[Event]) -> Tree:
    t0 = events[0].created_at if events else run.created_at
    root = Tree(
        Text.assemble(
            (f"run {run.id} ", "bold"),
            f"{run.agent}@{run.agent_version} ",
            (run.state.value, STATE_STYLE.get(run.state.value, "")),
            (f"  total {_ms((events[-1].created_at - t0) if events else None)}", "dim"),
        )
    )
    branch = root
    for ev in events:
        if ev.type == "run_claimed":
            branch = root.add(_event_label(ev, t0))
            continue
        branch.add(_event_label(ev, t0))
    return root


def log_line(ev: Event) -> str:
    parts = [format_time(ev.created_at), f"{ev.seq:>5}", ev.type]
    if ev.step is not None:
        parts.append(f"#{ev.step}")
    if ev.name:
        parts.append(ev.name)
    if ev.attempt:
        parts.append(f"attempt={ev.attempt}")
    if ev.duration is not None:
        parts.append(f"duration={_ms(ev.duration)}")
    detail = _event_detail(ev)
    if detail:
        parts.append(detail)
    return "  ".join(parts)


def schedules_table(schedules: list[Schedule]) -> Table:
    table = Table(box=None, header_style="bold")
    for col in ("NAME", "AGENT", "CRON", "NEXT", "INPUT"):
        table.add_column(col)
    for s in schedules:
        table.add_row(s.name, s.agent, s.cron, format_time(s.next_fire_at), _short(s.input, 60))
    return table


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str) -> float:
    """``30m``/``24h``/``7d`` back from now, or an ISO date/time (UTC unless it says)."""
    text = text.strip()
    if text[:-1].replace(".", "", 1).isdigit() and text[-1:] in _UNITS:
        return time.time() - float(text[:-1]) * _UNITS[text[-1]]
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"--since {text!r} is neither a duration (30m, 24h, 7d) nor a date "
            f"(2026-11-20 or 2026-11-20T09:00)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def costs_table(lines: Sequence[CostLine], by: str) -> Table:
    table = Table(box=None, header_style="bold")
    table.add_column(by.upper(), no_wrap=True)
    for col in ("COST (USD)", "INPUT TOKENS", "CACHED", "OUTPUT TOKENS", "EVENTS"):
        table.add_column(col, justify="right")
    for line in lines:
        table.add_row(
            line.key,
            f"{line.cost:.6f}",
            f"{line.input_tokens:,}",
            f"{line.cached_input_tokens:,}",
            f"{line.output_tokens:,}",
            str(line.events),
        )
    if lines:
        table.add_row(
            Text("total", style="bold"),
            Text(f"{sum(x.cost for x in lines):.6f}", style="bold"),
            f"{sum(x.input_tokens for x in lines):,}",
            f"{sum(x.cached_input_tokens for x in lines):,}",
            f"{sum(x.output_tokens for x in lines):,}",
            str(sum(x.events for x in lines)),
        )
    return table


def output_width() -> int | None:
    """Rich's width: the terminal's, or ``COLUMNS``; piped without either (CI, ``| less``), wide
    enough that a trace line is not cut at 80 columns."""
    if os.environ.get("COLUMNS") or sys.stdout.isatty():
        return None
    return 160
