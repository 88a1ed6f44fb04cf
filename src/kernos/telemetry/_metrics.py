"""Prometheus metrics of a worker, counted from what it commits.

Names and labels follow Prometheus conventions (``_total`` counters, ``_seconds`` histograms,
base units). Labels are bounded: agent, kind, provider, model, error class and state come from
code and configuration; tenants are the one open set, so each metric keeps at most
``MAX_TENANTS`` of them and counts the rest as ``other``. Run ids are never labels (a trace
finds a run; a metric counts them).

The numbers come from the same committed events as the traces (``Observer.committed``), so a
step answered from the journal on replay is not counted twice, plus claims and lease
renewals. Breaker states are read at scrape time from the worker's services.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from kernos.store import Event, Run

#: distinct tenants a metric labels before the rest are counted as "other"
MAX_TENANTS = 100
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_CLAIM = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_KIND_OF = {
    "step_completed": ("step", "completed"),
    "step_failed": ("step", "failed"),
    "llm_completed": ("llm", "completed"),
    "llm_failed": ("llm", "failed"),
    "tool_completed": ("tool", "completed"),
    "tool_failed": ("tool", "failed"),
    "memory_put": ("memory", "completed"),
    "memory_search": ("memory", "completed"),
}


class _Tenants:
    """Keeps the tenant label's cardinality bounded."""

    def __init__(self, limit: int = MAX_TENANTS) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, tenant: str) -> str:
        if tenant in self._seen:
            return tenant
        with self._lock:
            if len(self._seen) < self.limit:
                self._seen.add(tenant)
                return tenant
        return "other"


class WorkerMetrics:
    """A kernel ``Observer`` keeping a worker's Prometheus metrics in its own registry."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        breakers: Callable[[], Mapping[str, str]] | None = None,
        active: Callable[[], int] | None = None,
    ) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self._children: dict[tuple[str, tuple[str, str]], tuple[Any, Any]] = {}
        self._tenant = _Tenants()
        self.claims = Counter(
            "kernos_run_claims", "Runs claimed by this worker.", ["agent"], registry=r
        )
        self.claim_wait = Histogram(
            "kernos_claim_wait_seconds",
            "From a run being ready (queued, woken, due) to this worker claiming it.",
            buckets=_CLAIM,
            registry=r,
        )
        self.lease_renewals = Counter(
            "kernos_lease_renewals", "Leases renewed by heartbeats.", registry=r
        )
        self.lease_losses = Counter(
            "kernos_lease_losses",
            "Leases found lost (taken over, or not renewed for a whole TTL).",
            registry=r,
        )
        self.steps = Counter(
            "kernos_steps",
            "Journaled calls that ended, by kind (step, llm, tool, memory) and outcome.",
            ["agent", "kind", "outcome"],
            registry=r,
        )
        self.step_seconds = Histogram(
            "kernos_step_duration_seconds",
            "Duration of journaled calls, by kind.",
            ["agent", "kind"],
            buckets=_LATENCY,
            registry=r,
        )
        self.llm_attempts = Counter(
            "kernos_llm_attempts",
            "LLM attempts by provider and error class (none: answered).",
            ["provider", "error_class"],
            registry=r,
        )
        self.llm_seconds = Histogram(
            "kernos_llm_attempt_duration_seconds",
            "Duration of LLM attempts, by provider.",
            ["provider"],
            buckets=_LATENCY,
            registry=r,
        )
        self.tokens = Counter(
            "kernos_llm_tokens",
            "Tokens billed, by model, tenant and direction (input, output).",
            ["model", "tenant", "direction"],
            registry=r,
        )
        self.cost = Counter(
            "kernos_llm_cost_usd",
            "Cost of LLM calls in US dollars, by model and tenant.",
            ["model", "tenant"],
            registry=r,
        )
        self.finished = Counter(
            "kernos_runs_finished",
            "Runs this worker finished, by agent and final state.",
            ["agent", "state"],
            registry=r,
        )
        if active is not None:
            gauge = Gauge("kernos_worker_active_runs", "Runs executing now.", registry=r)
            gauge.set_function(lambda: float(active()))
        if breakers is not None:
            r.register(_Breakers(breakers))

    # -- Observer -------------------------------------------------------------------------------

    def claimed(self, run: Run, waited: float) -> None:
        self.claims.labels(run.agent).inc()
        self.claim_wait.observe(waited)

    def leases(self, renewed: int, lost: int) -> None:
        if renewed:
            self.lease_renewals.inc(renewed)
        if lost:
            self.lease_losses.inc(lost)

    def committed(self, run: Run, events: Sequence[Event]) -> None:
        for ev in events:
            kind = _KIND_OF.get(ev.type)
            if kind is not None:
                # label lookups cost more than the increments: each series' child is cached
                key = (run.agent, kind)
                children = self._children.get(key)
                if children is None:
                    children = self._children[key] = (
                        self.steps.labels(run.agent, kind[0], kind[1]),
                        self.step_seconds.labels(run.agent, kind[0]),
                    )
                children[0].inc()
                if ev.duration is not None:
                    children[1].observe(ev.duration)
            if ev.type == "llm_attempt":
                self._attempt(ev.payload)
            elif ev.type == "llm_completed":
                self._answered(run, ev.payload.get("response") or {})
            elif ev.type in ("run_completed", "run_failed", "run_cancelled"):
                self.finished.labels(run.agent, ev.type.removeprefix("run_")).inc()

    def _attempt(self, p: Mapping[str, Any]) -> None:
        provider = str(p.get("provider") or "unknown")
        self.llm_attempts.labels(provider, str(p.get("error_class") or "unknown")).inc()
        if p.get("latency") is not None:
            self.llm_seconds.labels(provider).observe(float(p["latency"]))

    def _answered(self, run: Run, response: Mapping[str, Any]) -> None:
        provider = str(response.get("provider") or "unknown")
        model = str(response.get("model") or "unknown")
        self.llm_attempts.labels(provider, "none").inc()
        if response.get("latency") is not None:
            self.llm_seconds.labels(provider).observe(float(response["latency"]))
        tenant = self._tenant(run.tenant)
        usage: Mapping[str, Any] = response.get("usage") or {}
        for direction in ("input", "output"):
            tokens = int(usage.get(f"{direction}_tokens") or 0)
            if tokens:
                self.tokens.labels(model, tenant, direction).inc(tokens)
        cost = float(response.get("cost") or 0.0)
        if cost:
            self.cost.labels(model, tenant).inc(cost)


class _Breakers(Collector):
    """Each endpoint's circuit breaker, read when Prometheus scrapes."""

    def __init__(self, read: Callable[[], Mapping[str, str]]) -> None:
        self.read = read

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "kernos_breaker_state",
            "Circuit breaker per LLM endpoint: 0 closed, 1 half-open, 2 open.",
            labels=["endpoint"],
        )
        for endpoint, state in sorted(self.read().items()):
            family.add_metric([endpoint], BREAKER_STATES.get(state, 0))
        yield family
