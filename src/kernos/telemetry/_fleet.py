"""The fleet's metrics, as ``kernos serve`` exposes them at ``/metrics``: read from the database.

A worker counts what it does; the API process counts what the whole system holds, at scrape
time, from one ``Store.fleet_status()`` read: runs by state, live runs by agent and version,
waiting runs by what they wait for, queue depth and the part of it no live worker serves,
workers by state and their load, pending approvals, and each LLM endpoint's breaker as the
live workers last reported it (the worst of them). Every label is bounded: states, reasons,
agents and versions, endpoints; never a run or worker id.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from kernos.store import FleetStatus, RunState, WorkerState
from kernos.telemetry._metrics import BREAKER_STATES


def fleet_metrics(status: FleetStatus) -> bytes:
    """The Prometheus text exposition of ``status``."""
    r = CollectorRegistry()
    runs = Gauge("kernos_runs", "Runs by state.", ["state"], registry=r)
    for state in RunState:
        runs.labels(state.value).set(status.runs.get(state, 0))
    live = Gauge(
        "kernos_live_runs",
        "Live runs (queued, running, waiting, paused) by agent, version and state.",
        ["agent", "version", "state"],
        registry=r,
    )
    for v in status.versions:
        for run_state, count in v.runs.items():
            live.labels(v.agent, v.version, RunState(run_state).value).set(count)
    waiting = Gauge(
        "kernos_waiting_runs", "Waiting runs by what they wait for.", ["reason"], registry=r
    )
    for reason, count in status.waiting.items():
        waiting.labels(reason).set(count)
    Gauge("kernos_queue_depth", "Runs a worker could claim now.", registry=r).set(status.ready)
    Gauge(
        "kernos_queue_unserved",
        "Ready runs whose agent version no live worker executes.",
        registry=r,
    ).set(status.unserved)
    Gauge(
        "kernos_approvals_pending",
        "Runs waiting for a person's decision.",
        registry=r,
    ).set(status.waiting.get("approval", 0))
    workers = Gauge("kernos_workers", "Workers by state.", ["state"], registry=r)
    for worker_state in WorkerState:
        workers.labels(worker_state.value).set(sum(w.state == worker_state for w in status.workers))
    alive = [w for w in status.workers if w.state == WorkerState.ALIVE]
    Gauge("kernos_fleet_capacity", "Runs the live workers may execute at once.", registry=r).set(
        sum(w.concurrency for w in alive)
    )
    Gauge("kernos_fleet_active_runs", "Runs the live workers were executing.", registry=r).set(
        sum(w.active for w in alive)
    )
    breakers = Gauge(
        "kernos_breaker_state",
        "Circuit breaker per LLM endpoint, the worst any live worker reported: "
        "0 closed, 1 half-open, 2 open.",
        ["endpoint"],
        registry=r,
    )
    worst: dict[str, int] = {}
    for w in alive:
        reported = w.info.get("breakers") or {}
        if isinstance(reported, dict):
            for endpoint, state in reported.items():
                level = BREAKER_STATES.get(str(state), 0)
                worst[str(endpoint)] = max(worst.get(str(endpoint), 0), level)
    for endpoint, level in sorted(worst.items()):
        breakers.labels(endpoint).set(level)
    return generate_latest(r)
