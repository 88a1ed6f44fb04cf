"""The report: what the customers got, what it cost, and each fault beside what kernos did.

Everything is measured after the fact from three records nobody in the scenario can bend: the
journal (what kernos committed), the simulator's request log (what reached the providers) and
the shop's ledger (what the tools did to the world). The invariants are the guarantees a
Tuesday afternoon must not break:

- **lost runs = 0**: every conversation ends completed, failed with a reason, or waiting for
  a person with a reason; none is left queued, running without an owner, or gone;
- **duplicate effects = 0**: no conversation refunded twice, however often a worker died;
- **stale-owner writes = 0**: every event written under a lease carries the token of the run's
  latest claim (the journal records each event's writer); a worker that lost its lease and
  wrote anyway would leave an older token (and often a second result for a step);
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
    """How many events of one journal a fenced store should have refused.

    The journal records the lease token of each event's writer. An event written under a lease
    must carry the token of the run's latest claim before it: one with another token was
    written by an owner that had lost the run. Also counted: a second result for the same step,
    anything after the run's end, and claims out of order.
    """
    seen: Counter[tuple[str, int | None]] = Counter()
    bad = 0
    claims: list[int] = []
    current: int | None = None
    ended = False
    for ev in events:
        bad += ended
        if ev.type == "run_claimed":
            claims.append(int(ev.payload.get("claim") or 0))
            current = ev.payload.get("token", current)
        if ev.token is not None and current is not None and ev.token != current:
            bad += 1
        if ev.type in _ENDS:
            ended = True
        elif ev.type in _RESULTS:
            seen[(ev.type, ev.step)] += 1
            bad += seen[(ev.type, ev.step)] > 1
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
    answered: dict[str, list[float]] = defaultdict(list)
    for r in started:
        run = c.runs[r.run_id]
        if run.state == RunState.COMPLETED:
            answered[r.kind].append(run.updated_at - run.created_at)
    completed = states[RunState.COMPLETED]

    completions = _events(c, ["llm_completed"])
    attempts = _events(c, ["llm_attempt"])
    calls = len(completions)
    by_provider = Counter(_provider(ev) for _, ev in completions)
    then = Counter(str(ev.payload.get("then")) for _, ev in attempts)
    cost = sum(float(ev.payload.get("response", {}).get("cost") or 0) for _, ev in completions)
    cost += sum(float(ev.payload.get("cost") or 0) for _, ev in attempts)
    llm = {
        "calls_answered": calls,
        "calls_failed": len(_events(c, ["llm_failed"])),
        "calls_abandoned": len(_events(c, ["call_abandoned"])),
        "failed_attempts": len(attempts),
        "attempts_per_call": round((calls + len(attempts)) / calls, 2) if calls else None,
        "attempts_per_answer": round((calls + len(attempts)) / completed, 2) if completed else None,
        "answered_by": dict(by_provider),
        # a call answered by any endpoint but the first of its route fell back, whether a
        # failed attempt led there or an open breaker skipped the first without trying it
        "fallbacks": sum(n for p, n in by_provider.items() if p != "primary"),
        "failed_attempts_by_class": dict(
            Counter(str(ev.payload.get("error_class")) for _, ev in attempts)
        ),
        "then": dict(then),
    }

    effects = _effects(c, started)
    stale = sum(stale_writes(evs) for evs in c.journals.values())

    waits = [a.decided_at - a.created_at for a in c.approvals if a.decided_at is not None]
    approvals = {
        "requested": len(c.approvals),
        "approved": sum(1 for a in c.approvals if a.state.value == "approved"),
        "pending": sum(1 for a in c.approvals if a.state.value == "pending"),
        "wait_seconds": _percentiles(waits),
        "by": sorted({a.decided_by for a in c.approvals if a.decided_by}),
    }

    lease_ttl = float(options.get("lease_ttl", 5.0))
    rows: list[tuple[float, dict[str, Any]]] = [
        (
            h.at - t0,
            {
                "when": _when(h.at - t0, h.injection.duration),
                "target": h.injection.target,
                "fault": h.injection.what,
                "kernos": _reaction(h, c, t0, lease_ttl),
                "detail": h.injection.params | h.detail,
            },
        )
        for h in happened
    ] + [
        (
            i.at,
            {
                "when": _when(i.at, i.duration),
                "target": i.target,
                "fault": i.what,
                "kernos": _provider_reaction(i, c, t0),
                "detail": i.params,
            },
        )
        for i in schedule
        if i.target in ("primary", "fallback")
    ]
    faults = [row for _, row in sorted(rows, key=lambda r: r[0])]
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

    crashes = sum(1 for h in happened if h.injection.action == "crash")
    deploys = [h for h in happened if h.injection.action == "deploy" and "pid" in h.detail]
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
        "workers_that_died_on_their_own": {"value": crashes, "must": "0", "ok": crashes == 0},
        "deploys_drained_with_exit_0": {
            "value": f"{sum(1 for h in deploys if h.detail.get('exit_code') == 0)}/{len(deploys)}",
            "must": "all",
            "ok": all(h.detail.get("exit_code") == 0 for h in deploys),
        },
    }
    all_answers = [t for times in answered.values() for t in times]
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
            # a large refund's time includes the person's approval
            "answer_seconds_by_kind": {k: _percentiles(v) for k, v in sorted(answered.items())},
        },
        answer_seconds=_percentiles(all_answers),
        llm=llm,
        effects=effects,
        stale_owner_writes=stale,
        cost_usd=cost,
        approvals=approvals,
        faults=faults,
        invariants=invariants,
    )


def _when(at: float, duration: float | None) -> str:
    return f"t={at:.0f}s" if duration is None else f"t={at:.0f}-{at + duration:.0f}s"


def _provider(ev: Event) -> str:
    return str(ev.payload.get("response", {}).get("provider"))


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
    attempts = [
        ev
        for _, ev in _events(c, ["llm_attempt"])
        if ev.payload.get("provider") == i.target
        and _in(float(ev.payload.get("started_at") or ev.created_at), t0, i, slack=0.5)
    ]
    answered = [ev for _, ev in _events(c, ["llm_completed"]) if _in(ev.created_at, t0, i, 0.5)]
    if i.action == "rate_limit":
        limited = [e for e in log if e.get("fault") == "rate_limit"]
        waited, fell_back = _after_429(c.sim_log, limited)
        floor = float(i.params.get("retry_after", 0))
        honoured = sum(1 for w in waited if w >= floor - 0.05)
        return (
            f"{len(limited)} of {len(log)} requests answered 429. In the simulator's log, the "
            f"same call came back to the primary {len(waited)} times, {honoured} of them at "
            f"least retry-after ({floor:g} s) later (median gap "
            f"{statistics.median(waited) if waited else 0:.1f} s), and went to the fallback "
            f"{fell_back} times"
        )
    if i.action == "outage":
        duration = i.duration or 1.0
        before = [
            e
            for e in c.sim_log
            if e["provider"] == i.target
            and t0 + i.at - duration <= float(e["arrived_wall"]) < t0 + i.at
        ]
        fallback = sum(1 for ev in answered if _provider(ev) != i.target)
        return (
            f"{len(log)} requests reached the primary during the {duration:.0f} s outage "
            f"({len(log) / duration:.1f}/s, against {len(before) / duration:.1f}/s in as long "
            f"before it); {fallback} of {len(answered)} calls answered in the window came from "
            f"the fallback"
        )
    if i.action == "slow":
        latencies = [
            float(ev.payload.get("response", {}).get("latency") or 0)
            for ev in answered
            if _provider(ev) == i.target
        ]
        p = _percentiles(latencies)
        abandoned = sum(
            1 for _, ev in _events(c, ["call_abandoned"]) if _in(ev.created_at, t0, i, 0.5)
        )
        return (
            f"{len(latencies)} calls answered by the fallback, latency p50 {p['p50']} s, "
            f"p95 {p['p95']} s; {abandoned} calls abandoned by a run's end in the window"
        )
    if i.action == "truncate":
        cut = sum(1 for e in log if e.get("fault") == "truncate")
        classes = Counter(str(ev.payload.get("error_class")) for ev in attempts)
        failed = sum(1 for _, ev in _events(c, ["llm_failed"]) if _in(ev.created_at, t0, i, 0.5))
        return (
            f"{cut} responses cut short; the fallback's failed attempts were classified as "
            f"{', '.join(f'{k} ({n})' for k, n in classes.items()) or 'nothing'} and retried; "
            f"{failed} calls failed for good in the window"
        )
    faulted = sum(1 for e in log if e.get("fault") is not None)
    return f"{faulted} of {len(log)} requests faulted"


def _after_429(log: list[dict[str, Any]], limited: list[dict[str, Any]]) -> tuple[list[float], int]:
    """For each 429, the call's next request (same idempotency key): the gaps of those that
    came back to the same provider, and how many went elsewhere (a fallback)."""
    by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in log:
        key = (e.get("headers") or {}).get("idempotency-key")
        if key:
            by_key[key].append(e)
    waited: list[float] = []
    elsewhere = 0
    for e in limited:
        key = (e.get("headers") or {}).get("idempotency-key")
        following = [n for n in by_key.get(key or "", []) if int(n["seq"]) > int(e["seq"])]
        if not following:
            continue
        nxt = min(following, key=lambda n: int(n["seq"]))
        if nxt["provider"] == e["provider"]:
            waited.append(float(nxt["arrived_monotonic"]) - float(e["arrived_monotonic"]))
        else:
            elsewhere += 1
    return waited, elsewhere


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _reaction(h: Happened, c: Collected, t0: float, lease_ttl: float) -> str:
    i = h.injection
    in_flight: list[str] = list(h.detail.get("in_flight", []))
    if "skipped" in h.detail:
        return f"not done: {h.detail['skipped']}"
    if i.action in ("kill", "kill_all"):
        claimed = _claimed_after(c, in_flight, h.at)
        p = _percentiles(list(claimed.values()))
        if not in_flight:
            return "the worker held no run when it was killed; it was started again"
        ended = _ended_by(c, [r for r in in_flight if r not in claimed], h.at + 1.0)
        left = len(in_flight) - len(claimed) - len(ended)
        return (
            f"{_n(len(in_flight), 'run')} held by the killed worker; {len(claimed)} claimed "
            f"again by a live worker, p50 {p['p50']} s and max {p['max']} s after the kill "
            f"(the lease TTL is {lease_ttl:g} s); {len(ended)} had finished as it died; "
            f"{left} not recovered"
        )
    if i.action == "crash":
        return f"exit code {h.detail.get('code')}; started again (see its log)"
    if i.action == "deploy" and not in_flight:
        return (
            f"the worker drained in {h.detail.get('drain_seconds')} s and exited with code "
            f"{h.detail.get('exit_code')}; it held no run"
        )
    if i.action == "deploy":
        claimed = _claimed_after(c, in_flight, h.at)
        quick = sum(1 for t in claimed.values() if t < float(h.detail.get("drain_seconds", 0)) + 1)
        return (
            f"the worker drained in {h.detail.get('drain_seconds')} s and exited with code "
            f"{h.detail.get('exit_code')}; of the {_n(len(in_flight), 'run')} it held, "
            f"{len(claimed)} were claimed again ({quick} at once, handed back; the others "
            f"when their lease expired), the rest finished on it"
        )
    if i.action == "db_slow":
        duration = i.duration or 1.0
        committed = [ev for _, ev in _events(c, _RESULTS) if _in(ev.created_at, t0, i)]
        lost = sum(
            1
            for at, line in c.worker_warnings
            if "lease lost to another worker" in line and _in(at, t0, i, slack=lease_ttl)
        )
        return (
            f"kernos kept working: {len(committed)} step results committed in the window "
            f"({len(committed) / duration:.1f}/s); live workers whose lease renewals came too "
            f"late lost {_n(lost, 'run')} to another worker (fenced, then replayed there)"
        )
    if i.action in ("db_stall", "db_failover"):
        committed = [ev for _, ev in _events(c, _RESULTS) if _in(ev.created_at, t0, i)]
        stopped = sum(
            1
            for at, line in c.worker_warnings
            if "no lease renewal" in line and _in(at, t0, i, slack=lease_ttl)
        )
        claimed = _claimed_after(c, in_flight, h.at)
        stale = sum(stale_writes(c.journals[r]) for r in in_flight if r in c.journals)
        return (
            f"{_n(len(committed), 'step result')} committed during it; of the "
            f"{_n(len(in_flight), 'run')} the workers held, the cut-off workers stopped "
            f"{stopped} themselves (no lease renewal for a whole TTL) and {len(claimed)} were "
            f"claimed again; {stale} stale-owner writes in their journals"
        )
    return ""


def _ended_by(c: Collected, runs: list[str], at: float) -> list[str]:
    """Of ``runs``, those whose journal ended (completed, failed, cancelled) by ``at``."""
    return [
        r
        for r in runs
        if any(ev.type in _ENDS and ev.created_at <= at for ev in c.journals.get(r, []))
    ]


def _claimed_after(c: Collected, runs: list[str], at: float) -> dict[str, float]:
    """Of ``runs``, those claimed again after ``at``: how long after, each."""
    claimed: dict[str, float] = {}
    for run_id in runs:
        later = next(
            (
                ev
                for ev in c.journals.get(run_id, [])
                if ev.type == "run_claimed" and ev.created_at > at
            ),
            None,
        )
        if later is not None:
            claimed[run_id] = later.created_at - at
    return claimed
