"""The report: what the customers got, what it cost, and each fault beside what kernos did.

Everything is measured after the fact from three records nobody in the scenario can bend: the
journal (what kernos committed), the simulator's request log (what reached the providers) and
the shop's ledger (what the tools did to the world). The invariants are the guarantees a
Tuesday afternoon must not break:

- **lost runs = 0**: every conversation ends completed, failed with a reason, or waiting for
  a person with a reason; none is left queued, running without an owner, or gone;
- **duplicate effects = 0**: no conversation refunded twice, however often a worker died;
- **stale-owner writes = 0**: the journal holds at most one result per step and type; a worker
  that lost its lease and wrote anyway would leave a second one;
- **every conversation completed or waiting for a person**: none failed.
"""

from __future__ import annotations

import itertools
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kernos.chaos._scenarios import Injection, Scenario
from kernos.store import Approval, Event, Run, RunState, WorkerRecord

__all__ = ["Collected", "Happened", "Report", "StartedRun", "build_report", "stale_writes"]


@dataclass(frozen=True, slots=True)
class StartedRun:
    run_id: str
    #: the conversation's kind (``question``, ``refund``, ``large_refund``; ``input``: --app)
    kind: str
    at: float


@dataclass(frozen=True, slots=True)
class Happened:
    """An injection as carried out: when (wall clock) and what it touched (pids, exit codes)."""

    injection: Injection
    at: float
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Collected:
    runs: dict[str, Run]
    journals: dict[str, list[Event]]
    approvals: list[Approval]
    workers: list[WorkerRecord]
    sim_log: list[dict[str, Any]]
    #: the shop's ledger (``shop.effects()``), None for an app without one
    ledger: dict[str, Any] | None
    #: (wall time, message) of each warning the workers logged
    worker_warnings: list[tuple[float, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    scenario: str
    options: dict[str, Any]
    seconds: float
    conversations: dict[str, Any]
    answer_seconds: dict[str, float | None]
    llm: dict[str, Any]
    effects: dict[str, Any]
    stale_owner_writes: int
    cost_usd: float
    approvals: dict[str, Any]
    faults: list[dict[str, Any]]
    invariants: dict[str, dict[str, Any]]

    @property
    def ok(self) -> bool:
        return all(i["ok"] for i in self.invariants.values())

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "ok": self.ok,
            "options": self.options,
            "seconds": round(self.seconds, 1),
            "conversations": self.conversations,
            "answer_seconds": self.answer_seconds,
            "llm": self.llm,
            "effects": self.effects,
            "stale_owner_writes": self.stale_owner_writes,
            "cost_usd": round(self.cost_usd, 6),
            "approvals": self.approvals,
            "faults": self.faults,
            "invariants": self.invariants,
        }


#: results a step has at most one of; a second is a write by an owner that had lost the run
_RESULTS = frozenset(
    {
        "step_completed",
        "step_failed",
        "llm_completed",
        "llm_failed",
        "tool_completed",
        "tool_failed",
        "approval_decided",
        "timer_fired",
    }
)


#: the event that ends a run's journal
_ENDS = frozenset({"run_completed", "run_failed", "run_cancelled"})


def stale_writes(events: Sequence[Event]) -> int:
    """How many events of one journal a fenced store should have refused: a second result for
    the same step, anything after the run's end, or claims out of order (an old owner's claim
    after a newer one's)."""
    seen: Counter[tuple[str, int | None]] = Counter()
    bad = 0
    claims: list[int] = []
    ended = False
    for ev in events:
        bad += ended
        if ev.type in _ENDS:
            ended = True
        elif ev.type in _RESULTS:
            seen[(ev.type, ev.step)] += 1
            bad += seen[(ev.type, ev.step)] > 1
        elif ev.type == "run_claimed":
            claims.append(int(ev.payload.get("claim") or 0))
    bad += sum(1 for a, b in itertools.pairwise(claims) if b <= a)
    return bad


def _percentiles(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    ordered = sorted(values)
    if len(ordered) == 1:
        q = [ordered[0]] * 99
    else:
        q = statistics.quantiles(ordered, n=100, method="inclusive")
    return {
        "p50": round(q[49], 2),
        "p95": round(q[94], 2),
        "p99": round(q[98], 2),
        "max": round(ordered[-1], 2),
    }


def _events(c: Collected, types: Iterable[str]) -> list[tuple[str, Event]]:
    wanted = frozenset(types)
    return [(rid, ev) for rid, evs in c.journals.items() for ev in evs if ev.type in wanted]


def _in(at: float, t0: float, injection: Injection, slack: float = 0.0) -> bool:
    start = t0 + injection.at
    end = t0 + (injection.until if injection.until is not None else injection.at) + slack
    return start <= at <= end


def build_report(
    *,
    scenario: Scenario,
    options: dict[str, Any],
    schedule: list[Injection],
    started: list[StartedRun],
    happened: list[Happened],
    collected: Collected,
    t0: float,
    ended: float,
    slots: list[list[int]],
) -> Report:
    c = collected
    states = Counter(c.runs[r.run_id].state for r in started)
    waiting: Counter[str] = Counter()
    lost = 0
    for r in started:
        run = c.runs[r.run_id]
        if run.state in (RunState.QUEUED, RunState.RUNNING):
            lost += 1
        elif run.state == RunState.WAITING:
            if run.waiting_for:
                waiting[run.waiting_for.split(":")[0]] += 1
            else:
                lost += 1
    failures = Counter(
        (c.runs[r.run_id].error or "?").splitlines()[0][:100]
        for r in started
        if c.runs[r.run_id].state == RunState.FAILED
    )
    answered = [
        c.runs[r.run_id].updated_at - c.runs[r.run_id].created_at
        for r in started
        if c.runs[r.run_id].state == RunState.COMPLETED
    ]
    completed = states[RunState.COMPLETED]

    completions = _events(c, ["llm_completed"])
    attempts = _events(c, ["llm_attempt"])
    calls = len(completions)
    by_provider = Counter(
        str(ev.payload.get("response", {}).get("provider")) for _, ev in completions
    )
    then = Counter(str(ev.payload.get("then")) for _, ev in attempts)
    cost = sum(float(ev.payload.get("response", {}).get("cost") or 0) for _, ev in completions)
    cost += sum(float(ev.payload.get("cost") or 0) for _, ev in attempts)
    llm = {
        "calls_answered": calls,
        "failed_attempts": len(attempts),
        "attempts_per_call": round((calls + len(attempts)) / calls, 2) if calls else None,
        "attempts_per_answer": round((calls + len(attempts)) / completed, 2) if completed else None,
        "answered_by": dict(by_provider),
        "fallbacks": then.get("fallback", 0),
        "failed_attempts_by_class": dict(
            Counter(str(ev.payload.get("error_class")) for _, ev in attempts)
        ),
        "then": dict(then),
    }

    effects = _effects(c, started)
    stale = sum(stale_writes(evs) for evs in c.journals.values())

    requested = [a for a in c.approvals]
    waits = [a.decided_at - a.created_at for a in requested if a.decided_at is not None]
    approvals = {
        "requested": len(requested),
        "approved": sum(1 for a in requested if a.state.value == "approved"),
        "pending": sum(1 for a in requested if a.state.value == "pending"),
        "wait_seconds": _percentiles(waits),
        "by": sorted({a.decided_by for a in requested if a.decided_by}),
    }

    faults = [
        {
            "when": h.injection.window(),
            "target": h.injection.target,
            "fault": h.injection.what,
            "kernos": _reaction(h, c, t0, float(options.get("lease_ttl", 5.0))),
            "detail": h.injection.params | h.detail,
        }
        for h in happened
    ] + [
        {
            "when": i.window(),
            "target": i.target,
            "fault": i.what,
            "kernos": _provider_reaction(i, c, t0),
            "detail": i.params,
        }
        for i in schedule
        if i.target in ("primary", "fallback")
    ]
    faults.sort(key=lambda f: float(str(f["when"]).removeprefix("t=").split("-")[0].rstrip("s")))
    if options.get("database") == "sqlite" and scenario.name == "tuesday":
        faults.append(
            {
                "when": "-",
                "target": "database",
                "fault": "not injected: the database is an embedded SQLite file (no server to "
                "slow or stall); run with --database postgresql://... for those faults",
                "kernos": "-",
                "detail": {},
            }
        )

    ok_runs = completed + waiting.get("approval", 0)
    invariants = {
        "lost_runs": {"value": lost, "must": "0", "ok": lost == 0},
        "duplicate_effects": {
            "value": effects.get("duplicate_effects"),
            "must": "0",
            "ok": effects.get("duplicate_effects") in (0, None),
        },
        "stale_owner_writes": {"value": stale, "must": "0", "ok": stale == 0},
        "completed_or_waiting_for_a_person": {
            "value": f"{ok_runs}/{len(started)}",
            "must": "all",
            "ok": ok_runs == len(started),
        },
    }
    return Report(
        scenario=scenario.name,
        options=options,
        seconds=ended - t0,
        conversations={
            "started": len(started),
            "completed": completed,
            "failed": states[RunState.FAILED],
            "cancelled": states[RunState.CANCELLED],
            "paused": states[RunState.PAUSED],
            "waiting": dict(waiting),
            "lost": lost,
            "failures": dict(failures),
            "by_kind": dict(Counter(r.kind for r in started)),
            "claims_per_run": round(
                sum(c.runs[r.run_id].claims for r in started) / max(1, len(started)), 2
            ),
        },
        answer_seconds=_percentiles(answered),
        llm=llm,
        effects=effects,
        stale_owner_writes=stale,
        cost_usd=cost,
        approvals=approvals,
        faults=faults,
        invariants=invariants,
    )


def _effects(c: Collected, started: list[StartedRun]) -> dict[str, Any]:
    if c.ledger is None:
        return {"measured": False, "duplicate_effects": None}
    ours = {r.run_id for r in started}
    refunds: Counter[str] = Counter(r["run_id"] for r in c.ledger["refunds"] if r["run_id"] in ours)
    executions: dict[str, Counter[str]] = defaultdict(Counter)
    for e in c.ledger["executions"]:
        if e["run_id"] in ours:
            executions[e["tool"]][e["key"]] += e["count"]
    repeats = {tool: sum(n - 1 for n in keys.values()) for tool, keys in executions.items()}
    return {
        "measured": True,
        "refunds": sum(refunds.values()),
        "duplicate_effects": sum(n - 1 for n in refunds.values()),
        "tool_executions": {t: sum(k.values()) for t, k in executions.items()},
        # a call run again after a crash: harmless for a read and a keyed refund, visible for
        # the unkeyed message (sent twice): at-least-once, as the guarantees say
        "repeated_executions": repeats,
    }


def _provider_reaction(i: Injection, c: Collected, t0: float) -> str:
    log = [
        e
        for e in c.sim_log
        if e["provider"] == i.target and _in(float(e["arrived_wall"]), t0, i, slack=0.5)
    ]
    faulted = sum(1 for e in log if e.get("fault") is not None)
    attempts = [
        ev
        for _, ev in _events(c, ["llm_attempt"])
        if ev.payload.get("provider") == i.target
        and _in(float(ev.payload.get("started_at") or ev.created_at), t0, i, slack=0.5)
    ]
    then = Counter(str(ev.payload.get("then")) for ev in attempts)
    answered = [
        ev for _, ev in _events(c, ["llm_completed"]) if _in(ev.created_at, t0, i, slack=0.5)
    ]
    by_fallback = sum(
        1 for ev in answered if ev.payload.get("response", {}).get("provider") == "fallback"
    )
    if i.action == "rate_limit":
        waits = [
            float(ev.payload["delay"])
            for ev in attempts
            if ev.payload.get("then") == "retry"
            and ev.payload.get("error_class") == "rate_limited"
            and ev.payload.get("delay") is not None
        ]
        honoured = sum(1 for w in waits if w >= float(i.params.get("retry_after", 0)) - 0.01)
        return (
            f"{faulted} of {len(log)} requests answered 429; kernos waited >= retry-after "
            f"before {honoured} of {len(waits)} retries of a 429 (median wait "
            f"{statistics.median(waits) if waits else 0:.1f} s) and fell back on "
            f"{then['fallback']}"
        )
    if i.action == "outage":
        duration = i.duration or 1.0
        return (
            f"{len(log)} requests reached the primary in {duration:.0f} s "
            f"({len(log) / duration:.1f}/s): after the first failures the breaker held calls "
            f"back; {by_fallback} of {len(answered)} calls answered in the window came from the "
            f"fallback"
        )
    if i.action == "slow":
        latencies = [
            float(ev.payload.get("response", {}).get("latency") or 0)
            for ev in answered
            if ev.payload.get("response", {}).get("provider") == i.target
        ]
        p = _percentiles(latencies)
        return (
            f"{len(latencies)} calls answered by the fallback, latency p50 {p['p50']} s, "
            f"p95 {p['p95']} s; the runs waited, no call was abandoned"
        )
    if i.action == "truncate":
        cut = sum(1 for e in log if e.get("fault") == "truncate")
        classes = Counter(str(ev.payload.get("error_class")) for ev in attempts)
        return (
            f"{cut} responses cut short; kernos classified the attempts "
            f"({', '.join(f'{k} {n}' for k, n in classes.items()) or 'none'}) and retried; "
            f"no cut answer reached an agent"
        )
    return f"{faulted} of {len(log)} requests faulted"


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _worker_of(c: Collected, pid: int) -> str | None:
    for w in c.workers:
        if w.pid == pid:
            return w.id
    return None


def _reaction(h: Happened, c: Collected, t0: float, lease_ttl: float) -> str:
    i = h.injection
    if i.action in ("kill", "kill_all"):
        pids = [h.detail["pid"]] if "pid" in h.detail else list(h.detail.get("pids", []))
        victims = {w for p in pids if (w := _worker_of(c, p)) is not None}
        orphaned, recovered, delays = _orphans(c, victims, h.at)
        p = _percentiles(delays)
        return (
            f"{_n(orphaned, 'run')} in flight on the killed worker; {recovered} claimed "
            f"again by a live worker (p50 {p['p50']} s, max {p['max']} s after the kill, "
            f"lease expiry included)"
            if orphaned
            else "no run was in flight on the killed worker; it was restarted"
        )
    if i.action == "deploy":
        worker = _worker_of(c, int(h.detail.get("pid", -1)))
        end = h.at + float(h.detail.get("drain_seconds", 0)) + 1
        released = sum(1 for _, ev in _events(c, ["run_released"]) if h.at <= ev.created_at <= end)
        orphaned, _, _ = _orphans(c, {worker} if worker else set(), end)
        return (
            f"the worker drained in {h.detail.get('drain_seconds')} s and exited with code "
            f"{h.detail.get('exit_code')}; {released} runs handed back at once for another "
            f"worker, {orphaned} left to wait for their lease to expire"
        )
    if i.action in ("db_slow", "db_stall", "db_failover"):
        committed = [ev for _, ev in _events(c, _RESULTS) if _in(ev.created_at, t0, i)]
        reclaims = [
            ev
            for _, ev in _events(c, ["run_claimed"])
            if int(ev.payload.get("claim") or 0) > 1
            and _in(ev.created_at, t0, i, slack=3 * lease_ttl)
        ]
        duration = i.duration or 1.0
        if i.action == "db_slow":
            return (
                f"kernos kept working: {len(committed)} step results committed in the window "
                f"({len(committed) / duration:.1f}/s)"
            )
        stopped = sum(
            1
            for at, line in c.worker_warnings
            if "no lease renewal" in line and _in(at, t0, i, slack=lease_ttl)
        )
        return (
            f"{len(committed)} step results committed during it; the cut-off workers stopped "
            f"{_n(stopped, 'run')} themselves (no lease renewal for a whole TTL) and "
            f"{_n(len(reclaims), 'run')} were claimed again afterwards; the journal shows no "
            f"stale-owner write"
        )
    return ""


#: the last event of a run that no longer held a lease (it waits, or was handed back)
_PARKED = frozenset(
    {
        "run_released",
        "run_paused",
        "timer_started",
        "message_wait",
        "approval_requested",
        "llm_parked",
        "tool_parked",
        "child_spawned",
    }
)


def _orphans(c: Collected, victims: set[str], at: float) -> tuple[int, int, list[float]]:
    """Runs whose owner at ``at`` was a killed worker: how many, how many another worker
    claimed later, and how long after the kill each was claimed."""
    orphaned = recovered = 0
    delays: list[float] = []
    for run_id, events in c.journals.items():
        run = c.runs[run_id]
        if run.state.terminal and run.updated_at <= at:
            continue
        owner, last = None, None
        for ev in events:
            if ev.created_at > at:
                break
            last = ev.type
            if ev.type == "run_claimed":
                owner = ev.payload.get("worker")
        if owner not in victims or last in _PARKED:
            continue
        orphaned += 1
        later = next(
            (ev for ev in events if ev.type == "run_claimed" and ev.created_at > at),
            None,
        )
        if later is not None:
            recovered += 1
            delays.append(later.created_at - at)
    return orphaned, recovered, delays
