"""Plays a scenario: starts the stage, sends the customers in, injects the faults on schedule,
approves what waits for a person, drains, and hands everything to the report.

The runner is the customer, the approver and the saboteur at once, and nothing else: it never
helps kernos. It starts runs and decides approvals through the public client (the way an
application and a person would), breaks things from outside (signals, the simulator's fault
rules, the proxy), and measures only afterwards, from the journal, the simulator's request log
and the shop's ledger. The customers' connection to the database does not go through the
proxy: a slow database is the workers' problem in this story, and the measurements must not be
slowed by the faults they measure.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import re
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from kernos.chaos._conversations import LARGE_REFUND, conversation
from kernos.chaos._ledger import effects
from kernos.chaos._proxy import TcpProxy
from kernos.chaos._report import Collected, Happened, Report, StartedRun, build_report
from kernos.chaos._scenarios import Injection, Scenario, Timing
from kernos.chaos._stage import ChaosError, Stage
from kernos.errors import InvalidState
from kernos.kernel import Client, connect
from kernos.sim import PLAN_MODEL, Fault
from kernos.store import ApprovalState, RunState

__all__ = ["ChaosOptions", "run_scenario"]

log = logging.getLogger("kernos.chaos")

#: who approves what waits for a person, in the audit log and the journal
APPROVER = "chaos-approver"
#: the share of the run's length during which customers arrive (the rest lets the last finish)
_ARRIVALS = 0.7


@dataclass(frozen=True, slots=True, kw_only=True)
class ChaosOptions:
    runs: int = 100
    workers: int = 4
    minutes: float = 5.0
    #: None: a fresh SQLite file in the scenario's directory
    database: str | None = None
    #: the app the workers load; the default is the shop of ``kernos.chaos.shop``
    app: str = "kernos.chaos.shop"
    agent: str = "support"
    #: runs' inputs for another app, used in turn (None: the shop's conversations)
    inputs: tuple[Any, ...] | None = None
    #: the gateway routes the app's agents name: each becomes primary then fallback
    routes: tuple[str, ...] = ("support",)
    lease_ttl: float = 5.0
    concurrency: int = 16
    approval_delay: float = 5.0
    #: seconds to wait, after the faults end, for the runs still going
    drain: float = 120.0
    seed: int = 7
    directory: Path | None = None


@dataclass(slots=True)
class _Play:
    """What happened while the scenario ran."""

    t0: float
    started: list[StartedRun] = field(default_factory=list)
    happened: list[Happened] = field(default_factory=list)
    approved: int = 0


async def run_scenario(
    scenario: Scenario, options: ChaosOptions, say: Callable[[str], None] = print
) -> Report:
    """Run ``scenario`` on this machine and return its report (see the package's docstring)."""
    if options.runs < 1 or options.workers < 1 or options.minutes <= 0:
        raise ChaosError("--runs and --workers must be at least 1 and --minutes above 0")
    directory = options.directory or Path(".kernos") / "chaos" / time.strftime(
        f"{scenario.name}-%Y%m%d-%H%M%S"
    )
    directory.mkdir(parents=True, exist_ok=True)
    url = options.database or f"sqlite:///{(directory / 'kernos.db').resolve()}"
    proxy: TcpProxy | None = None
    if url.startswith(("postgresql://", "postgres://")):
        proxy = TcpProxy.before(url).start()
    timing = Timing(seconds=options.minutes * 60, lease_ttl=options.lease_ttl, proxied=bool(proxy))
    schedule = scenario.schedule(timing)
    say(f"kernos chaos {scenario.name}: {scenario.summary}")
    say(f"  {options.runs} conversations, {options.workers} workers, {options.minutes:g} min, "
        f"database {url.split('://')[0]}{' behind the chaos proxy' if proxy else ''}, "
        f"lease TTL {options.lease_ttl:g} s; logs in {directory}")  # fmt: skip
    say("  the schedule:")
    for injection in schedule:
        say(f"    {injection.window():>12}  {injection.target:<9} {injection.what}")

    ledger = (directory / "ledger.db").resolve()
    worker_url = _with_io_timeout(proxy.url(url), options.lease_ttl) if proxy else url
    stage = Stage(
        directory,
        app=options.app,
        database_url=worker_url,
        workers=options.workers,
        lease_ttl=options.lease_ttl,
        concurrency=options.concurrency,
        env={
            "KERNOS_CONFIG": str((directory / "kernos.toml").resolve()),
            "KERNOS_CHAOS_LEDGER": str(ledger),
            "KERNOS_LOG_FORMAT": "console",
        },
    )
    client = await connect(url)
    try:
        sim = stage.start_simulator(options.seed)
        _write_config(directory / "kernos.toml", sim, options.routes)
        stage.start_all()
        await _registered(client, options.agent, timeout=60)
        play = _Play(t0=time.time())
        _install_provider_faults(sim, schedule)
        customers = asyncio.create_task(_customers(client, scenario, options, play))
        approver = asyncio.create_task(_approver(client, options.approval_delay, play))
        await _inject(schedule, stage, proxy, play, say)
        await _at(play, timing.seconds)
        say(
            f"t={time.time() - play.t0:.0f}s: the faults end; draining (at most {options.drain:g} s)"
        )
        _clear_provider_faults(sim)
        if proxy is not None:
            proxy.delay = 0.0
            proxy.resume()
        await customers
        stage.revive()
        await _drain(client, play, options.drain)
        approver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await approver
        ended = time.time()
        collected = Collected(
            runs={r.run_id: await client.get(r.run_id) for r in play.started},
            journals={r.run_id: await client.journal(r.run_id) for r in play.started},
            approvals=[
                a
                for a in await client.store.list_approvals(state=None, limit=100_000)
                if a.run_id in {r.run_id for r in play.started}
            ],
            workers=await client.store.list_workers(),
            sim_log=_sim_log(sim),
            ledger=_ledger(options.app, ledger),
            worker_warnings=_warnings(directory),
        )
    finally:
        stage.close()
        if proxy is not None:
            proxy.close()
        await client.close()
    report = build_report(
        scenario=scenario,
        options=_options_json(options, url),
        schedule=schedule,
        started=play.started,
        happened=play.happened,
        collected=collected,
        t0=play.t0,
        ended=ended,
        slots=[s.pids for s in stage.slots],
    )
    (directory / "report.json").write_text(json.dumps(report.as_json(), indent=2))
    return report


# -- set-up ------------------------------------------------------------------------------------


def _with_io_timeout(url: str, seconds: float) -> str:
    """Cut a worker's database call that goes unanswered this long (a stalled server)."""
    if "kernos_io_timeout=" in url:
        return url
    return f"{url}{'&' if '?' in url else '?'}kernos_io_timeout={seconds:g}"


def _write_config(path: Path, sim: str, routes: tuple[str, ...]) -> None:
    """The workers' kernos.toml: two simulated providers of different families, every route
    primary then fallback, the simulator's model priced, large refunds held for a person."""
    chains = "\n".join(f'{r} = ["primary:{PLAN_MODEL}", "fallback:{PLAN_MODEL}"]' for r in routes)
    path.write_text(
        f"""# written by kernos chaos: the providers are the simulator at {sim}
[providers.primary]
kind = "openai"
base_url = "{sim}/primary/v1"
api_key_env = ""

[providers.fallback]
kind = "anthropic"
base_url = "{sim}/fallback"
api_key_env = ""

[routes]
{chains}

[gateway]
backoff_base = 0.2
breaker_cooldown = 5.0

[prices."{PLAN_MODEL}"]
input = 0.8
output = 4.0

[policy]
default = "allow"

[[policy.rules]]
name = "large-refunds"
when = 'kind == "tool" && tool == "issue_refund" && args.amount > {LARGE_REFUND:g}'
effect = "require_approval"
reason = "refunds above {LARGE_REFUND:g} EUR need a person"
"""
    )


async def _registered(client: Client, agent: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(a.name == agent for a in await client.store.list_agents()):
            return
        await asyncio.sleep(0.2)
    raise ChaosError(
        f"no worker registered the agent {agent!r} within {timeout:g} s: check --app and "
        f"--agent, and the worker logs"
    )


def _sim_call(sim: str, method: str, path: str, body: object = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{sim}{path}", data=data, method=method, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


def _provider_faults(schedule: list[Injection]) -> dict[str, list[Fault]]:
    """The simulator's rules for the schedule's provider faults, each in its window. A rule
    that cuts responses goes before one that slows them (the first rule that fires decides),
    and an outage before a partial rate limit, so the outage is total."""
    order = {"outage": 0, "truncate": 1, "rate_limit": 2, "slow": 3}
    rules: dict[str, list[Fault]] = {}
    for i in sorted(schedule, key=lambda i: order.get(i.action, 9)):
        if i.target not in ("primary", "fallback"):
            continue
        kind = "unavailable" if i.action == "outage" else i.action
        rules.setdefault(i.target, []).append(
            Fault.model_validate({"kind": kind, "start": i.at, "duration": i.duration, **i.params})
        )
    return rules


def _install_provider_faults(sim: str, schedule: list[Injection]) -> None:
    for provider, rules in _provider_faults(schedule).items():
        _sim_call(
            sim,
            "PUT",
            f"/_sim/providers/{provider}/faults",
            [r.model_dump(mode="json", exclude_none=True) for r in rules],
        )


def _clear_provider_faults(sim: str) -> None:
    for provider in ("primary", "fallback"):
        _sim_call(sim, "DELETE", f"/_sim/providers/{provider}/faults")


def _sim_log(sim: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = _sim_call(sim, "GET", "/_sim/log")["entries"]
    for e in entries:
        e.pop("request", None)  # the bodies are the journal's business, and large
    return entries


def _ledger(app: str, path: Path) -> dict[str, Any] | None:
    """The shop's ledger, or None for another app (whose effects we cannot see)."""
    if app != "kernos.chaos.shop":
        return None
    return effects(path)


_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) WARNING (.*)$")


def _warnings(directory: Path) -> list[tuple[float, str]]:
    """The WARNING lines of the workers' logs, with their wall time."""
    found = []
    for path in sorted(directory.glob("worker-*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if (m := _LOG_LINE.match(line)) is not None:
                at = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                found.append((at, m.group(2)))
    return found


def _options_json(options: ChaosOptions, url: str) -> dict[str, Any]:
    return {
        "runs": options.runs,
        "workers": options.workers,
        "minutes": options.minutes,
        "database": url.split("://")[0],
        "app": options.app,
        "lease_ttl": options.lease_ttl,
        "concurrency": options.concurrency,
        "approval_delay": options.approval_delay,
        "seed": options.seed,
    }


# -- the play ----------------------------------------------------------------------------------


async def _at(play: _Play, seconds: float) -> None:
    await asyncio.sleep(max(0.0, play.t0 + seconds - time.time()))


async def _customers(
    client: Client, scenario: Scenario, options: ChaosOptions, play: _Play
) -> None:
    """Start the conversations at an even pace over the first 70% of the run."""
    draw = random.Random(options.seed)
    kinds = [k for k, _ in scenario.mix]
    weights = [w for _, w in scenario.mix]
    spacing = options.minutes * 60 * _ARRIVALS / options.runs
    for n in range(options.runs):
        await _at(play, n * spacing)
        if options.inputs is not None:
            kind, value = "input", options.inputs[n % len(options.inputs)]
        else:
            kind = draw.choices(kinds, weights)[0]
            value = conversation(kind)
        run = await client.start(options.agent, value, principal="user:chaos-customer")
        play.started.append(StartedRun(run_id=run.id, kind=kind, at=time.time()))


async def _approver(client: Client, delay: float, play: _Play) -> None:
    """A person who approves each pending approval ``delay`` seconds after it was asked."""
    while True:
        now = time.time()
        for approval in await client.store.list_approvals(state=ApprovalState.PENDING):
            if now - approval.created_at < delay:
                continue
            with contextlib.suppress(InvalidState):  # decided meanwhile (it expired, say)
                await client.decide(
                    approval.id, approve=True, by=APPROVER, reason="checked the photos"
                )
                play.approved += 1
        await asyncio.sleep(0.5)


async def _inject(
    schedule: list[Injection],
    stage: Stage,
    proxy: TcpProxy | None,
    play: _Play,
    say: Callable[[str], None],
) -> None:
    """Carry out the schedule's worker and database faults (the simulator keeps its own)."""
    background: set[asyncio.Task[None]] = set()

    def later(seconds: float, action: Callable[[], None]) -> None:
        async def run() -> None:
            await asyncio.sleep(seconds)
            action()

        task = asyncio.create_task(run())
        background.add(task)
        task.add_done_callback(background.discard)

    for injection in schedule:
        if injection.target not in ("workers", "database"):
            continue  # the simulator's rules carry out the provider faults
        await _at(play, injection.at)
        now = time.time()
        detail: dict[str, Any] = {}
        if injection.action == "kill":
            slot, pid = await asyncio.to_thread(stage.kill)
            detail = {"pid": pid}
            later(1.0, functools.partial(_restart, detail, stage.start, slot))
        elif injection.action == "kill_all":
            pids = await asyncio.to_thread(stage.kill_all)
            detail = {"pids": pids}
            later(1.0, functools.partial(_restart, detail, lambda _: stage.revive(), None))
        elif injection.action == "deploy":
            pid, code, took, new = await asyncio.to_thread(
                stage.deploy, stage.slots[-1], max(30.0, 4 * stage.lease_ttl)
            )
            detail = {"pid": pid, "exit_code": code, "drain_seconds": round(took, 2), "new": new}
        elif proxy is not None and injection.action == "db_slow":
            proxy.delay = (injection.params["low"], injection.params["high"])
            later(injection.duration or 0, lambda: setattr(proxy, "delay", 0.0))
        elif proxy is not None and injection.action == "db_stall":
            proxy.stall()
            later(injection.duration or 0, proxy.resume)
        elif proxy is not None and injection.action == "db_failover":
            proxy.stall()
            proxy.sever()
            detail = {"connections_reset": True}
            later(injection.duration or 0, proxy.resume)
        play.happened.append(Happened(injection=injection, at=now, detail=detail))
        say(f"t={now - play.t0:.0f}s: {injection.target}: {injection.what} {_brief(detail)}")
    await asyncio.gather(*background)


def _restart(detail: dict[str, Any], start: Callable[[Any], Any], slot: Any) -> None:
    detail["restarted"] = start(slot)


def _brief(detail: dict[str, Any]) -> str:
    return "(" + ", ".join(f"{k} {v}" for k, v in detail.items()) + ")" if detail else ""


async def _drain(client: Client, play: _Play, seconds: float) -> None:
    """Wait until every run has finished, or waits for a message (which only someone outside
    can send) or was paused; a run waiting for an approval or a timer is still going."""
    deadline = time.monotonic() + seconds
    pending = [r.run_id for r in play.started]
    while pending and time.monotonic() < deadline:
        still = []
        for run_id in pending:
            run = await client.get(run_id)
            if not (
                run.state.terminal
                or run.state == RunState.PAUSED
                or (run.waiting_for or "").startswith("message:")
            ):
                still.append(run_id)
        pending = still
        if pending:
            await asyncio.sleep(1.0)
