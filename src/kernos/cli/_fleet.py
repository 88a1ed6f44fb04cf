"""``kernos agents`` and ``kernos status``: the fleet at a glance, and retiring a version.

What is shown is read from the database in a few aggregate queries, on the database's clock:
a worker is alive while it heartbeats, dead once silent for several lease TTLs (killed, frozen,
cut off), stopped when it drained and said so. A version whose live runs no live worker
executes is "stranded": its runs are not lost and never moved to another version's code, they
wait until a worker with that version starts.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.table import Table
from rich.text import Text

from kernos.gateway import cost_report
from kernos.kernel import format_time
from kernos.store import (
    FleetStatus,
    RunState,
    Store,
    VersionStatus,
    WorkerRecord,
    WorkerState,
)

from ._common import DbOpt, JsonOpt, _client, command, err, out
from ._oversight import _me
from ._render import STATE_STYLE, dumps

agents_app = typer.Typer(
    help="Agent versions across the fleet: who serves each, its live runs; retire one.",
    invoke_without_command=True,
)

_LIVE = (RunState.QUEUED, RunState.RUNNING, RunState.WAITING, RunState.PAUSED)
_WORKER_STYLE = {
    WorkerState.ALIVE: "green",
    WorkerState.DEAD: "bold red",
    WorkerState.STOPPED: "dim",
}
ByOpt = Annotated[
    str | None,
    typer.Option("--by", help="Who does it (default: your user name).", show_default=False),
]
ReasonOpt = Annotated[str | None, typer.Option("--reason", help="Why, for the audit log.")]
#: every tenant's line of today's spend (the ledger groups by tenant, dearest first)
_ALL_TENANTS = 1_000_000


# -- data ----------------------------------------------------------------------------------


def version_dict(v: VersionStatus) -> dict[str, Any]:
    return {
        "agent": v.agent,
        "version": v.version,
        "registered_at": v.registered_at,
        "default": v.default,
        "retired": v.retired,
        "retired_at": v.retired_at,
        "retired_by": v.retired_by,
        "retired_reason": v.retired_reason,
        "workers": list(v.workers),
        "runs": {s.value: v.runs.get(s, 0) for s in _LIVE},
        "live": v.live,
        "ready": v.ready,
        "stranded": v.stranded,
        "drained": v.retired and v.live == 0,
    }


def worker_dict(w: WorkerRecord) -> dict[str, Any]:
    return {
        "id": w.id,
        "host": w.host,
        "pid": w.pid,
        "state": w.state.value,
        "versions": list(w.versions),
        "active": w.active,
        "concurrency": w.concurrency,
        "lease_ttl": w.lease_ttl,
        "started_at": w.started_at,
        "heartbeat_at": w.heartbeat_at,
        "heartbeat_age": round(w.heartbeat_age, 3),
        "stopped_at": w.stopped_at,
        "breakers": w.info.get("breakers", {}),
    }


def breaker_states(workers: list[WorkerRecord]) -> dict[str, dict[str, int]]:
    """``{endpoint: {state: how many live workers see it so}}``: breakers are per process, so
    one worker may have an endpoint open while another's is closed."""
    seen: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for w in workers:
        if w.state is WorkerState.ALIVE:
            for endpoint, state in dict(w.info.get("breakers") or {}).items():
                seen[str(endpoint)][str(state)] += 1
    return {e: dict(states) for e, states in sorted(seen.items())}


async def spend_since(store: Store, since: float) -> dict[str, Any]:
    """Dollars, tokens and calls since ``since``, from the cost ledger (the journal)."""
    lines = await cost_report(store, by="tenant", since=since, limit=_ALL_TENANTS)
    return {
        "since": since,
        "usd": round(sum(line.cost for line in lines), 6),
        "input_tokens": sum(line.input_tokens for line in lines),
        "output_tokens": sum(line.output_tokens for line in lines),
        "calls": sum(line.events for line in lines),
    }


def _day_start(now: float) -> float:
    day = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day.timestamp()


def status_dict(
    fleet: FleetStatus, spend: dict[str, Any], database: str, schema: int
) -> dict[str, Any]:
    return {
        "database": database,
        "schema": schema,
        "at": fleet.now,
        "workers": [worker_dict(w) for w in fleet.workers],
        "queue": {"ready": fleet.ready, "unserved": fleet.unserved},
        "runs": {s.value: fleet.runs.get(s, 0) for s in RunState},
        "waiting": fleet.waiting,
        "versions": [version_dict(v) for v in fleet.versions],
        "stranded": [v.key for v in fleet.versions if v.stranded],
        "breakers": breaker_states(fleet.workers),
        "spend_today": spend,
    }


# -- rendering -----------------------------------------------------------------------------


def _age(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m ago"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h ago"
    return f"{seconds / 86400:.1f}d ago"


def _runs_cell(v: VersionStatus, state: RunState) -> Text:
    n = v.runs.get(state, 0)
    return Text(str(n), style=STATE_STYLE[state.value] if n else "dim")


def _version_state(v: VersionStatus) -> Text:
    if v.retired:
        return Text("retired", style="dim" if v.live == 0 else "yellow")
    if v.default:
        return Text("default", style="bold green")
    return Text("active")


def version_notes(versions: list[VersionStatus]) -> list[Text]:
    """A line for each version someone should know about: stranded runs, a drain."""
    notes = []
    for v in versions:
        if v.stranded:
            notes.append(
                Text(
                    f"{v.key}: {v.live} live run(s) but no live worker serves this version: "
                    f"they wait until one with its code starts",
                    style="bold red",
                )
            )
        elif v.retired:
            left = "drained" if v.live == 0 else f"draining, {v.live} live run(s) left"
            notes.append(Text(f"{v.key}: retired by {v.retired_by}, {left}", style="dim"))
        elif v.registered_at is None:
            notes.append(Text(f"{v.key}: no worker has registered it yet", style="dim"))
    return notes


def versions_table(versions: list[VersionStatus]) -> Group:
    table = Table(box=None, header_style="bold")
    for column in ("AGENT", "VERSION", "STATE", "WORKERS"):
        table.add_column(column, no_wrap=True)
    for state in _LIVE:
        table.add_column(state.value.upper(), justify="right", no_wrap=True)
    for v in versions:
        table.add_row(
            v.agent,
            v.version,
            _version_state(v),
            Text(str(len(v.workers)), style="" if v.workers else "dim"),
            *(_runs_cell(v, s) for s in _LIVE),
        )
    return Group(table, *version_notes(versions))


def workers_table(workers: list[WorkerRecord]) -> Table:
    table = Table(box=None, header_style="bold")
    for column in ("WORKER", "HOST", "PID", "VERSIONS", "LOAD", "HEARTBEAT", "STATE"):
        table.add_column(
            column,
            justify="right" if column in ("PID", "LOAD") else "left",
            no_wrap=column != "VERSIONS",
        )
    for w in workers:
        table.add_row(
            w.id,
            w.host,
            str(w.pid),
            ", ".join(w.versions),
            f"{w.active}/{w.concurrency}",
            _age(w.heartbeat_age),
            Text(w.state.value, style=_WORKER_STYLE[w.state]),
        )
    return table


def _line(label: str, *parts: Text | str) -> Text:
    text = Text(f"{label:<10}", style="bold")
    for part in parts:
        text.append(part if isinstance(part, Text) else Text(part))
    return text


def _counts(counts: dict[str, int], styles: dict[str, str] | None = None) -> Text:
    text = Text()
    for i, (key, n) in enumerate(counts.items()):
        if i:
            text.append(" · ", style="dim")
        text.append(f"{key} {n}", style=(styles or {}).get(key, "") if n else "dim")
    return text or Text("none", style="dim")


def status_view(
    fleet: FleetStatus,
    spend: dict[str, Any],
    database: str,
    *,
    show_stopped: bool,
) -> Group:
    by_state = Counter(w.state for w in fleet.workers)
    shown = [w for w in fleet.workers if show_stopped or w.state is not WorkerState.STOPPED]
    parts: list[Any] = [
        Text.assemble(("kernos status", "bold"), f"  {database}  at {format_time(fleet.now)} UTC"),
        Text(""),
        _line(
            "WORKERS",
            Text(f"{by_state[WorkerState.ALIVE]} alive", style="green"),
            Text(" · "),
            Text(
                f"{by_state[WorkerState.DEAD]} dead",
                style="bold red" if by_state[WorkerState.DEAD] else "dim",
            ),
            Text(" · "),
            Text(f"{by_state[WorkerState.STOPPED]} stopped (last day)", style="dim"),
        ),
    ]
    if shown:
        parts.append(workers_table(shown))
    unserved = (
        Text(f"; {fleet.unserved} of them claimable by no live worker", style="bold red")
        if fleet.unserved
        else Text("")
    )
    parts.append(_line("QUEUE", f"{fleet.ready} ready to claim now", unserved))
    parts.append(
        _line("RUNS", _counts({s.value: fleet.runs.get(s, 0) for s in RunState}, STATE_STYLE))
    )
    parts.append(_line("WAITING", _counts(fleet.waiting)))
    notes = [
        Text(
            f"{v.key}: {v.live} live run(s)"
            + (", retired, draining" if v.retired else "")
            + (", no live worker serves it" if v.stranded else ""),
            style="bold red" if v.stranded else "yellow",
        )
        for v in fleet.versions
        if v.stranded or (v.retired and v.live)
    ]
    if notes:
        parts.append(_line("VERSIONS", *_joined(notes)))
    breakers = breaker_states(fleet.workers)
    if breakers:
        cells = [
            Text(
                f"{endpoint} " + ", ".join(f"{s} on {n}" for s, n in states.items()),
                style="bold red" if set(states) - {"closed"} else "",
            )
            for endpoint, states in breakers.items()
        ]
        parts.append(_line("BREAKERS", *_joined(cells)))
    else:
        parts.append(_line("BREAKERS", Text("no model calls by live workers yet", style="dim")))
    parts.append(
        _line(
            "SPEND",
            f"today (UTC) ${spend['usd']:.4f} · "
            f"{spend['input_tokens'] + spend['output_tokens']:,} tokens · {spend['calls']} calls",
        )
    )
    return Group(*parts)


def _joined(items: list[Text]) -> list[Text]:
    joined: list[Text] = []
    for i, item in enumerate(items):
        if i:
            joined.append(Text("; "))
        joined.append(item)
    return joined


# -- commands ------------------------------------------------------------------------------


@agents_app.callback()
def agents(
    ctx: typer.Context,
    agent: Annotated[str | None, typer.Option("--agent", help="Only this agent.")] = None,
    as_json: JsonOpt = False,
    database: DbOpt = None,
) -> None:
    """Each agent's versions: default or retired, the live workers that serve it, and its
    live runs by state. A version whose runs no live worker serves is flagged."""
    if ctx.invoked_subcommand is None:
        _list_agents(agent, as_json, database)


@command
async def _list_agents(agent: str | None, as_json: bool, database: str | None) -> None:
    async with await _client(database) as client:
        versions = await client.store.list_versions(agent)
    if as_json:
        out.print(dumps([version_dict(v) for v in versions]))
    elif not versions:
        out.print("no agents: a worker registers its agents when it starts (kernos worker)")
    else:
        out.print(versions_table(versions))


def _remaining(v: VersionStatus) -> str:
    states = ", ".join(f"{n} {s.value}" for s in _LIVE if (n := v.runs.get(s, 0)))
    return f"{v.live} live run(s) remain ({states})"


@agents_app.command("retire")
@command
async def agents_retire(
    name: Annotated[str, typer.Argument(metavar="AGENT")],
    version: Annotated[str, typer.Argument(metavar="VERSION")],
    by: ByOpt = None,
    reason: ReasonOpt = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait until its live runs have ended (drained).")
    ] = False,
    timeout: Annotated[
        float | None, typer.Option(help="With --wait: give up after SECONDS (exit 1).")
    ] = None,
    poll: Annotated[float, typer.Option(help="With --wait: look every SECONDS.")] = 1.0,
    as_json: JsonOpt = False,
    database: DbOpt = None,
) -> None:
    """Refuse new runs of AGENT at VERSION; its runs in flight finish on it. Reports how many
    live runs remain, and with --wait waits until none does ("drained"). Audited."""
    async with await _client(database) as client:
        v = await client.store.retire_version(name, version, by=_me(by), reason=reason)
        if not as_json:
            when = format_time(v.retired_at)
            out.print(
                f"{v.key} retired at {when} UTC by {v.retired_by}: new runs of it are refused"
            )
            if v.stranded:
                err.print(
                    f"[bold yellow]warning:[/] no live worker serves {v.key}: its runs wait "
                    f"until a worker with that version's code starts"
                )
        deadline = None if timeout is None else time.monotonic() + timeout
        while wait and v.live:
            if not as_json:
                err.print(f"[dim]{_remaining(v)}[/]")
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"{v.key} is not drained after {timeout} s: {_remaining(v)}")
            await asyncio.sleep(poll)
            v = next(x for x in await client.store.list_versions(name) if x.version == version)
    if as_json:
        out.print(dumps(version_dict(v)))
    elif v.live == 0:
        out.print(f"{v.key} drained: no live runs")
    else:
        out.print(f"{_remaining(v)}; `kernos agents retire {name} {version} --wait` waits")


@agents_app.command("unretire")
@command
async def agents_unretire(
    name: Annotated[str, typer.Argument(metavar="AGENT")],
    version: Annotated[str, typer.Argument(metavar="VERSION")],
    by: ByOpt = None,
    reason: ReasonOpt = None,
    database: DbOpt = None,
) -> None:
    """Let AGENT at VERSION take new runs again. Audited."""
    async with await _client(database) as client:
        v = await client.store.unretire_version(name, version, by=_me(by), reason=reason)
    out.print(f"{v.key} takes new runs again" + (" (the default)" if v.default else ""))


@command
async def status(
    show_stopped: Annotated[
        bool, typer.Option("--all", help="List stopped workers too (kept for a day).")
    ] = False,
    as_json: JsonOpt = False,
    database: DbOpt = None,
) -> None:
    """The whole system at a glance: workers (heartbeat, versions, load; dead ones flagged),
    queue depth, runs by state, what waiting runs wait for, breaker states, spend today."""
    async with await _client(database) as client:
        store = client.store
        fleet = await store.fleet_status()
        spend = await spend_since(store, _day_start(fleet.now))
        schema = (await store.schema_status()).current
    if as_json:
        out.print(dumps(status_dict(fleet, spend, store.url, schema)))
    else:
        out.print(status_view(fleet, spend, store.url, show_stopped=show_stopped))
