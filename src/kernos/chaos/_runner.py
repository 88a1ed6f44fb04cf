"""Plays a scenario: starts the stage, sends the customers in, injects the faults on schedule,
approves what waits for a person, drains, and hands everything to the report.

The runner is the customer, the approver and the saboteur at once, and nothing else: it never
helps kernos. It starts runs and decides approvals through the public client (the way an
application and a person would), and only for the runs it started: a database may hold other
work, which it neither approves nor measures. It breaks things from outside (signals, the
simulator's fault rules, the proxy), and measures afterwards, from the journal, the simulator's
request log and the shop's ledger. Before each kill it notes which runs the victim holds, read
through its own connection, so the report can follow each of them to its next owner.

Its connection to the database does not go through the proxy: a slow database is the workers'
problem in this story, and the measurements must not be slowed by the faults they measure.

Everything it starts is stopped on the way out, in order (its tasks, then its connection, the
processes, the proxy), after an error, a Ctrl-C or a SIGTERM alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import re
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from kernos.chaos._conversations import LARGE_REFUND, conversation
from kernos.chaos._database import PostgresTarget
from kernos.chaos._ledger import effects
from kernos.chaos._proxy import TcpProxy
from kernos.chaos._report import Collected, Happened, Report, StartedRun, build_report
from kernos.chaos._scenarios import Injection, Scenario, Timing
from kernos.chaos._simctl import SimControl
from kernos.chaos._stage import ChaosError, Stage, WorkerSlot
from kernos.errors import InvalidState, KernosError
from kernos.kernel import Client, connect
from kernos.sim import PLAN_MODEL
from kernos.store import ApprovalState, RunState, WorkerRecord, WorkerState

__all__ = ["ChaosOptions", "run_scenario"]

log = logging.getLogger("kernos.chaos")

#: who approves what waits for a person, in the audit log and the journal
APPROVER = "chaos-approver"
#: the share of the run's length during which customers arrive (the rest lets the last finish)
_ARRIVALS = 0.7
#: files an earlier scenario leaves in its directory
_EARLIER = ("kernos.db", "ledger.db", "report.json", "sim-requests.jsonl")


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

    def check(self) -> None:
        """Refuse options that cannot make a scenario, saying which and why."""
        problems = [
            f"--{name.replace('_', '-')} must be {rule}, not {value}"
            for name, value, ok, rule in (
                ("runs", self.runs, self.runs >= 1, "at least 1"),
                ("workers", self.workers, self.workers >= 1, "at least 1"),
                ("minutes", self.minutes, self.minutes > 0, "above 0"),
                ("lease_ttl", self.lease_ttl, self.lease_ttl >= 1, "at least 1 second"),
                ("concurrency", self.concurrency, self.concurrency >= 1, "at least 1"),
                ("approval_delay", self.approval_delay, self.approval_delay >= 0, ">= 0"),
                ("drain", self.drain, self.drain >= 0, ">= 0"),
            )
            if not ok
        ]
        if problems:
            raise ChaosError("; ".join(problems))


@dataclass(slots=True)
class _Play:
    """What happened while the scenario ran."""

    t0: float
    ours: set[str] = field(default_factory=set)
    started: list[StartedRun] = field(default_factory=list)
    happened: list[Happened] = field(default_factory=list)


class _Tasks:
    """The scenario's background tasks: a failure in one ends the scenario at once (it is
    raised by ``check``), and all are cancelled on the way out."""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[Any]] = []

    def start(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.append(task)
        return task

    def check(self) -> None:
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    async def cancel_all(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _directory(scenario: Scenario, options: ChaosOptions) -> Path:
    if options.directory is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return Path(".kernos") / "chaos" / f"{scenario.name}-{stamp}-{os.getpid()}"
    earlier = [n for n in _EARLIER if (options.directory / n).exists()]
    if earlier:
        raise ChaosError(
            f"{options.directory} holds an earlier scenario ({', '.join(earlier)}): its runs "
            f"would be picked up by this one's workers; give a new --dir"
        )
    return options.directory


async def run_scenario(
    scenario: Scenario, options: ChaosOptions, say: Callable[[str], None] = print
) -> Report:
    """Run ``scenario`` on this machine and return its report (see the package's docstring).

    A SIGTERM to this process stops the scenario and everything it started, and raises
    ``ChaosError``; so does a failure of any part of it.
    """
    options.check()
    directory = _directory(scenario, options)
    url = options.database or f"sqlite:///{(directory / 'kernos.db').resolve()}"
    target = PostgresTarget.parse(url) if url.startswith(("postgresql:", "postgres:")) else None
    timing = Timing(seconds=options.minutes * 60, lease_ttl=options.lease_ttl, proxied=bool(target))
    schedule = scenario.schedule(timing)
    directory.mkdir(parents=True, exist_ok=True)
    say(f"kernos chaos {scenario.name}: {scenario.summary}")
    say(f"  {options.runs} conversations, {options.workers} workers, {options.minutes:g} min, "
        f"database {url.split(':')[0]}{' behind the chaos proxy' if target else ''}, "
        f"lease TTL {options.lease_ttl:g} s; logs in {directory}")  # fmt: skip
    say("  the schedule:")
    for injection in schedule:
        say(f"    {injection.window():>12}  {injection.target:<9} {injection.what}")

    main = asyncio.current_task()
    loop = asyncio.get_running_loop()
    terminated = False

    def on_sigterm() -> None:
        nonlocal terminated
        terminated = True
        if main is not None:
            main.cancel()

    with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        return await _play(scenario, options, directory, url, target, schedule, timing, say)
    except asyncio.CancelledError:
        if terminated:
            raise ChaosError(
                "the scenario was stopped by SIGTERM; every process it started was stopped"
            ) from None
        raise
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGTERM)


async def _play(
    scenario: Scenario,
    options: ChaosOptions,
    directory: Path,
    url: str,
    target: PostgresTarget | None,
    schedule: list[Injection],
    timing: Timing,
    say: Callable[[str], None],
) -> Report:
    ledger = (directory / "ledger.db").resolve()
    async with contextlib.AsyncExitStack() as stack:
        proxy: TcpProxy | None = None
        worker_url = url
        if target is not None:
            proxy = TcpProxy((target.host, target.port), seed=options.seed).start()
            stack.callback(proxy.close)
            worker_url = target.through(proxy.host, proxy.port, io_timeout=options.lease_ttl)
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
        stack.callback(stage.close)
        client = await connect(url)
        stack.push_async_callback(client.close)
        tasks = _Tasks()
        stack.push_async_callback(tasks.cancel_all)  # first out: nothing acts on a closed stage

        sim = SimControl(stage.start_simulator(options.seed), directory / "sim-requests.jsonl")
        _write_config(directory / "kernos.toml", sim.url, options.routes)
        others = await _other_workers(client, options.agent)
        if others:
            say(f"  note: {len(others)} other live worker(s) on this database serve "
                f"{options.agent!r} ({', '.join(w.id for w in others[:3])}); they may take "
                f"this scenario's runs")  # fmt: skip
        stage.start_all()
        await _registered(client, stage, directory, timeout=60)
        play = _Play(t0=time.time())
        sim.install(schedule)
        tasks.start(sim.follow())
        customers = tasks.start(_customers(client, scenario, options, play))
        tasks.start(_approver(client, options.approval_delay, play))
        await _inject(schedule, stage, proxy, client, play, tasks, say)
        await _until(play, timing.seconds, tasks, stage, say)
        say(f"t={time.time() - play.t0:.0f}s: the faults end; draining (at most "
            f"{options.drain:g} s)")  # fmt: skip
        sim.clear()
        if proxy is not None:
            proxy.delay = 0.0
            proxy.resume()
        await customers
        await _drain(client, play, options.drain, tasks, stage, say)
        await tasks.cancel_all()
        sim.fetch()
        ended = time.time()
        runs = {rid: await client.get(rid) for rid in play.ours}
        collected = Collected(
            runs=runs,
            journals={rid: await client.journal(rid) for rid in play.ours},
            approvals=[
                a
                for rid in play.ours
                for a in await client.store.list_approvals(state=None, run_id=rid)
            ],
            workers=[w for w in await client.store.list_workers() if w.pid in stage.pids()],
            sim_log=sim.entries,
            ledger=effects(ledger) if options.app == "kernos.chaos.shop" else None,
            worker_warnings=_warnings(directory),
        )
    report = build_report(
        scenario=scenario,
        options=_options_json(options, url),
        schedule=schedule,
        started=play.started,
        happened=play.happened,
        collected=collected,
        t0=play.t0,
        ended=ended,
    )
    (directory / "report.json").write_text(json.dumps(report.as_json(), indent=2))
    return report


# -- set-up ------------------------------------------------------------------------------------


def _write_config(path: Path, sim: str, routes: tuple[str, ...]) -> None:
    """The workers' kernos.toml: two simulated providers of different families, every route
    primary then fallback, the simulator's model priced, large refunds held for a person."""
    chains = "\n".join(
        f'{json.dumps(r)} = ["primary:{PLAN_MODEL}", "fallback:{PLAN_MODEL}"]' for r in routes
    )
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


def _this_host(w: WorkerRecord) -> bool:
    return w.host == socket.gethostname()


async def _other_workers(client: Client, agent: str) -> list[WorkerRecord]:
    return [
        w
        for w in await client.store.list_workers()
        if w.state == WorkerState.ALIVE and any(v.startswith(f"{agent}@") for v in w.versions)
    ]


async def _registered(client: Client, stage: Stage, directory: Path, timeout: float) -> None:
    """Wait until every worker of the stage is registered (alive) in the database."""
    deadline = time.monotonic() + timeout
    pids = stage.pids()
    while time.monotonic() < deadline:
        live = {
            w.pid
            for w in await client.store.list_workers()
            if w.state == WorkerState.ALIVE and _this_host(w)
        }
        if pids <= live:
            return
        dead = [s for s in stage.slots if s.proc is not None and s.proc.poll() is not None]
        if dead:
            break
        await asyncio.sleep(0.2)
    logs = "\n".join(
        f"--- {directory / f'worker-{s.index + 1}.log'} (last lines):\n"
        + "\n".join(
            (directory / f"worker-{s.index + 1}.log").read_text(errors="replace").splitlines()[-8:]
        )
        for s in stage.slots
    )
    raise ChaosError(
        f"the workers did not all start within {timeout:g} s (check --app, and that the app "
        f"loads with 'kernos worker --app ...'):\n{logs}"
    )


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
        "database": "postgresql" if url.startswith("postgres") else "sqlite",
        "app": options.app,
        "lease_ttl": options.lease_ttl,
        "concurrency": options.concurrency,
        "approval_delay": options.approval_delay,
        "seed": options.seed,
    }


# -- the play ----------------------------------------------------------------------------------


async def _until(
    play: _Play, seconds: float, tasks: _Tasks, stage: Stage, say: Callable[[str], None]
) -> None:
    """Sleep until ``seconds`` after the start, watching the tasks and the workers."""
    while (left := play.t0 + seconds - time.time()) > 0:
        tasks.check()
        _crashed(stage, play, say)
        await asyncio.sleep(min(left, 0.5))
    tasks.check()


def _crashed(stage: Stage, play: _Play, say: Callable[[str], None]) -> None:
    for exit in stage.crashes():
        crash = Injection(
            at=round(exit.seen_at - play.t0, 1),
            target="workers",
            action="crash",
            what="a worker exited on its own (not a fault of the schedule)",
        )
        play.happened.append(
            Happened(injection=crash, at=exit.seen_at, detail={"pid": exit.pid, "code": exit.code})
        )
        say(f"t={exit.seen_at - play.t0:.0f}s: workers: worker pid {exit.pid} exited on its "
            f"own with code {exit.code}; started again")  # fmt: skip


async def _customers(
    client: Client, scenario: Scenario, options: ChaosOptions, play: _Play
) -> None:
    """Start the conversations at an even pace over the first 70% of the run."""
    draw = random.Random(options.seed)
    kinds = [k for k, _ in scenario.mix]
    weights = [w for _, w in scenario.mix]
    spacing = options.minutes * 60 * _ARRIVALS / options.runs
    for n in range(options.runs):
        await asyncio.sleep(max(0.0, play.t0 + n * spacing - time.time()))
        if options.inputs is not None:
            kind, value = "input", options.inputs[n % len(options.inputs)]
        else:
            kind = draw.choices(kinds, weights)[0]
            value = conversation(kind)
        run = await client.start(options.agent, value, principal="user:chaos-customer")
        play.ours.add(run.id)
        play.started.append(StartedRun(run_id=run.id, kind=kind, at=time.time()))


async def _approver(client: Client, delay: float, play: _Play) -> None:
    """A person who approves each pending approval of the scenario's runs ``delay`` seconds
    after it was asked. A database error is a bad moment, not the end: they try again."""
    while True:
        try:
            now = time.time()
            for approval in await client.store.list_approvals(
                state=ApprovalState.PENDING, limit=10_000
            ):
                if approval.run_id not in play.ours or now - approval.created_at < delay:
                    continue
                with contextlib.suppress(InvalidState):  # decided meanwhile (it expired, say)
                    await client.decide(
                        approval.id, approve=True, by=APPROVER, reason="checked the photos"
                    )
        except KernosError as exc:
            log.warning("chaos approver: %s; trying again", exc)
        await asyncio.sleep(0.5)


async def _holdings(client: Client, stage: Stage) -> dict[int, list[str]]:
    """The runs each of the stage's workers holds a lease on, by pid (this host's rows)."""
    by_id = {w.id: w.pid for w in await client.store.list_workers() if w.pid in stage.pids()}
    held: dict[int, list[str]] = {}
    for run in await client.store.list_runs(state=RunState.RUNNING, limit=100_000):
        pid = by_id.get(run.lease_owner or "")
        if pid is not None:
            held.setdefault(pid, []).append(run.id)
    return held


def _victim(stage: Stage, held: dict[int, list[str]], turn: int) -> WorkerSlot | None:
    """The live worker holding the most runs (the worst moment to lose it); ties go round
    robin. None when no worker is alive."""
    alive = [s for s in stage.slots if s.alive]
    if not alive:
        return None
    n = len(stage.slots)
    alive.sort(
        key=lambda s: (-len(held.get(s.proc.pid if s.proc else -1, [])), (s.index - turn) % n)
    )
    return alive[0]


async def _inject(
    schedule: list[Injection],
    stage: Stage,
    proxy: TcpProxy | None,
    client: Client,
    play: _Play,
    tasks: _Tasks,
    say: Callable[[str], None],
) -> None:
    """Carry out the schedule's worker and database faults (the simulator keeps its own)."""

    def later(seconds: float, action: Callable[[], Awaitable[None] | None]) -> None:
        async def run() -> None:
            await asyncio.sleep(seconds)
            result = action()
            if result is not None:
                await result

        tasks.start(run())

    turn = 0
    for injection in schedule:
        if injection.target not in ("workers", "database"):
            continue  # the simulator's rules carry out the provider faults
        await _until(play, injection.at, tasks, stage, say)
        held = await _holdings(client, stage)
        now = time.time()
        detail: dict[str, Any] = {}
        if injection.action == "kill":
            slot = _victim(stage, held, turn)
            turn += 1
            if slot is None:
                detail = {"skipped": "no worker alive"}
            else:
                pid = stage.kill(slot)
                detail = {"pid": pid, "in_flight": held.get(pid, [])}
                later(1.0, _restarter(stage, slot, pid, detail))
        elif injection.action == "kill_all":
            live = [s for s in stage.slots if s.alive]
            pids = [stage.kill(s) for s in live]
            detail = {"pids": pids, "in_flight": [r for p in pids for r in held.get(p, [])]}
            for s, p in zip(live, pids, strict=True):
                later(1.0, _restarter(stage, s, p, detail))
        elif injection.action == "deploy":
            slot = next((s for s in reversed(stage.slots) if s.alive), None)
            if slot is None:
                detail = {"skipped": "no worker alive"}
            else:
                assert slot.proc is not None
                in_flight = held.get(slot.proc.pid, [])
                pid, code, took, new = await stage.deploy(slot, max(30.0, 4 * stage.lease_ttl))
                detail = {"pid": pid, "exit_code": code, "drain_seconds": round(took, 2),
                          "new": new, "in_flight": in_flight}  # fmt: skip
        elif proxy is not None and injection.action == "db_slow":
            proxy.delay = (injection.params["low"], injection.params["high"])
            later(injection.duration or 0, lambda: setattr(proxy, "delay", 0.0))
        elif proxy is not None and injection.action in ("db_stall", "db_failover"):
            proxy.stall()
            if injection.action == "db_failover":
                proxy.sever()
            detail = {"in_flight": [r for runs in held.values() for r in runs]}
            later(injection.duration or 0, proxy.resume)
        play.happened.append(Happened(injection=injection, at=now, detail=detail))
        brief = {k: v for k, v in detail.items() if k != "in_flight"}
        if "in_flight" in detail:
            brief["runs held"] = len(detail["in_flight"])
        say(f"t={now - play.t0:.0f}s: {injection.target}: {injection.what} {_brief(brief)}")


def _restarter(
    stage: Stage, slot: WorkerSlot, killed: int, detail: dict[str, Any]
) -> Callable[[], None]:
    def restart() -> None:
        new = stage.restart(slot, killed)
        if new is not None:
            detail.setdefault("restarted", []).append(new)

    return restart


def _brief(detail: dict[str, Any]) -> str:
    return "(" + ", ".join(f"{k} {v}" for k, v in detail.items()) + ")" if detail else ""


async def _drain(
    client: Client,
    play: _Play,
    seconds: float,
    tasks: _Tasks,
    stage: Stage,
    say: Callable[[str], None],
) -> None:
    """Wait until every run has finished, or waits for a message (which only someone outside
    can send) or was paused; a run waiting for an approval or a timer is still going."""
    deadline = time.monotonic() + seconds
    pending = sorted(play.ours)
    while pending and time.monotonic() < deadline:
        tasks.check()
        _crashed(stage, play, say)
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
