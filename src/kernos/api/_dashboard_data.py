"""What the dashboard's pages show, read from the store: projections of the journal.

Provider health and spend over time come from the same events as the cost ledger: every LLM
attempt that failed is an ``llm_attempt`` event (its provider, model, error class, latency,
what the gateway did next), every answer an ``llm_completed`` event (its response's provider,
model, latency, usage and cost). Nothing here writes.
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from kernos.gateway import ErrorClass
from kernos.governance import BudgetLine
from kernos.store import EventFields, JsonPath, Store, TimedTotals, WorkerState

from ._dashboard_charts import Chart, buckets, cumulative_line, sparkline, stacked_bars
from ._dashboard_timeline import usd_text

LLM_TYPES = ("llm_completed", "llm_attempt")
# The cost ledger's fields (as kernos.gateway.cost_report reads them): an answer's figures
# sit under "response", a failed attempt's at the top of its payload.
COST_SUMS: dict[str, list[JsonPath]] = {
    "cost": [("response", "cost"), ("cost",)],
    "input_tokens": [("response", "usage", "input_tokens"), ("usage", "input_tokens")],
    "output_tokens": [("response", "usage", "output_tokens"), ("usage", "output_tokens")],
}
MODEL_KEY: list[list[JsonPath]] = [
    [("response", "provider"), ("provider",)],
    [("response", "model"), ("model",)],
]
_HEALTH_FIELDS: dict[str, list[JsonPath]] = {
    "provider": [("response", "provider"), ("provider",)],
    "model": [("response", "model"), ("model",)],
    "error_class": [("error_class",)],
    "latency": [("response", "latency"), ("latency",)],
    "then": [("then",)],
}
_FAILURE_FIELDS: dict[str, list[JsonPath]] = {
    "provider": [("provider",)],
    "model": [("model",)],
    "error_class": [("error_class",)],
    "status": [("status",)],
    "error": [("error",)],
    "then": [("then",)],
    "delay": [("delay",)],
}
#: the error classes that count against an endpoint's circuit breaker (the gateway's rule:
#: retryable failures that say the endpoint is unwell; a 429 only slows the caller down)
BREAKER_CLASSES = frozenset(
    c.value for c in ErrorClass if c.retryable and c is not ErrorClass.RATE_LIMITED
)
#: the gateway's default ``breaker_threshold``
BREAKER_THRESHOLD = 5
#: at most this many events are read for the providers page (the newest of the window)
HEALTH_EVENTS = 20_000

#: providers page windows: label -> seconds
HEALTH_WINDOWS = {"15m": 900.0, "1h": 3600.0, "6h": 21_600.0, "24h": 86_400.0}
#: costs page windows: label -> (seconds, bucket seconds)
COST_WINDOWS = {
    "24h": (86_400.0, 3600.0),
    "7d": (604_800.0, 86_400.0),
    "30d": (2_592_000.0, 86_400.0),
}
#: series drawn apart on the spend chart; the rest add up as "other"
TOP_KEYS = 6


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by the nearest-rank method; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


@dataclass(slots=True)
class EndpointHealth:
    """One provider endpoint (``provider:model``) over the window."""

    endpoint: str
    answered: int = 0
    failed: int = 0
    by_class: Counter[str] = field(default_factory=Counter)
    fallbacks: int = 0
    answer_latency: list[float] = field(default_factory=list)
    failure_latency: list[float] = field(default_factory=list)
    last_failure: float | None = None
    last_answer: float | None = None
    #: failures counted by the breaker since the last answer, newest last
    trailing: int = 0
    #: closed, half_open or open as live workers report it (the worst), else as the journal
    #: suggests: closed, failing or "likely open"
    breaker: str = "closed"
    #: how many live workers report each state of this endpoint's breaker
    reported: Counter[str] = field(default_factory=Counter)
    activity: Chart | None = None

    @property
    def attempts(self) -> int:
        return self.answered + self.failed

    @property
    def error_rate(self) -> float:
        return self.failed / self.attempts if self.attempts else 0.0

    @property
    def p50(self) -> float | None:
        return percentile(self.answer_latency, 0.5)

    @property
    def p95(self) -> float | None:
        return percentile(self.answer_latency, 0.95)

    @property
    def failure_p50(self) -> float | None:
        return percentile(self.failure_latency, 0.5)


@dataclass(frozen=True, slots=True)
class Failure:
    at: float
    run_id: str
    endpoint: str
    error_class: str
    status: str | None
    error: str
    then: str | None
    delay: float | None


@dataclass(slots=True)
class Health:
    window: str
    since: float
    endpoints: list[EndpointHealth]
    failures: list[Failure]
    #: the window held more events than were read (the oldest were left out)
    truncated: bool
    #: live workers, and how many of them report breaker states
    workers: int = 0
    reporting: int = 0


#: a breaker state as workers report it, worst first
_WORST = ("open", "half_open", "closed")


def _float(text: str | None) -> float | None:
    try:
        return None if text is None else float(text)
    except ValueError:
        return None


def _endpoint(ev: EventFields) -> str:
    return f"{ev.fields.get('provider') or '?'}:{ev.fields.get('model') or '?'}"


async def provider_health(store: Store, *, window: str, tenant: str | None) -> Health:
    """Per endpoint: answers, failed attempts by class, latency, and its circuit breaker.

    A breaker's state is per worker process; live workers carry theirs in each heartbeat
    (``WorkerRecord.info["breakers"]``), and the worst state any of them reports is shown.
    For an endpoint no live worker reports, the journal gives an estimate: "likely open"
    after ``BREAKER_THRESHOLD`` failures that count against it with no answer since (the
    gateway then stops sending it calls, so no answer can have followed)."""
    now = time.time()
    since = now - HEALTH_WINDOWS[window]
    events = await store.event_fields(
        types=LLM_TYPES, fields=_HEALTH_FIELDS, since=since, tenant=tenant, limit=HEALTH_EVENTS
    )
    by_endpoint: dict[str, EndpointHealth] = {}
    activity: dict[str, tuple[dict[float, float], dict[float, float]]] = defaultdict(
        lambda: ({}, {})
    )
    step = HEALTH_WINDOWS[window] / 30
    for ev in reversed(events):  # oldest first, so that "trailing" ends with the newest
        key = _endpoint(ev)
        h = by_endpoint.get(key) or by_endpoint.setdefault(key, EndpointHealth(key))
        latency = _float(ev.fields.get("latency"))
        slot = math.floor(ev.at / step) * step
        ok, bad = activity[key]
        if ev.type == "llm_completed":
            h.answered += 1
            h.last_answer = ev.at
            h.trailing = 0
            if latency is not None:
                h.answer_latency.append(latency)
            ok[slot] = ok.get(slot, 0.0) + 1
            continue
        error_class = ev.fields.get("error_class") or "?"
        if error_class == "invalid_tool_arguments":  # a repair: the endpoint answered
            continue
        h.failed += 1
        h.by_class[error_class] += 1
        h.last_failure = ev.at
        if ev.fields.get("then") == "fallback":
            h.fallbacks += 1
        if latency is not None:
            h.failure_latency.append(latency)
        if error_class in BREAKER_CLASSES:
            h.trailing += 1
        bad[slot] = bad.get(slot, 0.0) + 1
    live = [w for w in await store.list_workers() if w.state == WorkerState.ALIVE]
    reporting = 0
    for worker in live:
        breakers = worker.info.get("breakers")
        if not isinstance(breakers, dict) or not breakers:
            continue
        reporting += 1
        for endpoint, state in breakers.items():
            h = by_endpoint.setdefault(str(endpoint), EndpointHealth(str(endpoint)))
            h.reported[str(state)] += 1
    starts = buckets(since, now, step)
    for key, h in by_endpoint.items():
        if h.reported:
            h.breaker = next((s for s in _WORST if h.reported[s]), "closed")
        elif h.trailing >= BREAKER_THRESHOLD:
            h.breaker = "likely open"
        elif h.trailing:
            h.breaker = "failing"
        ok, bad = activity[key]
        h.activity = sparkline(starts, {"answered": ok, "failed": bad})
    failures = await recent_failures(store, since=since, tenant=tenant)
    endpoints = sorted(by_endpoint.values(), key=lambda h: (-h.error_rate, h.endpoint))
    return Health(
        window,
        since,
        endpoints,
        failures,
        truncated=len(events) >= HEALTH_EVENTS,
        workers=len(live),
        reporting=reporting,
    )


async def recent_failures(
    store: Store, *, since: float, tenant: str | None, limit: int = 25
) -> list[Failure]:
    found = await store.event_fields(
        types=("llm_attempt",), fields=_FAILURE_FIELDS, since=since, tenant=tenant, limit=limit
    )
    return [
        Failure(
            at=ev.at,
            run_id=ev.run_id,
            endpoint=_endpoint(ev),
            error_class=ev.fields.get("error_class") or "?",
            status=ev.fields.get("status"),
            error=(ev.fields.get("error") or "")[:300],
            then=ev.fields.get("then"),
            delay=_float(ev.fields.get("delay")),
        )
        for ev in found
    ]


@dataclass(frozen=True, slots=True)
class SpendLine:
    key: str
    usd: float
    tokens: int
    events: int


@dataclass(slots=True)
class BudgetView:
    line: BudgetLine
    #: share of the limit spent (with what is reserved), for the gauge; None without a limit
    used: float | None
    chart: Chart | None = None


@dataclass(slots=True)
class Spend:
    window: str
    by: str
    chart: Chart
    lines: list[SpendLine]
    budgets: list[BudgetView]


def _group(by: str) -> str | list[list[JsonPath]]:
    return MODEL_KEY if by == "model" else by


async def spend_over_time(
    store: Store, *, by: str, window: str, tenant: str | None, now: float
) -> tuple[Chart, list[SpendLine]]:
    """Spend per bucket of the window by ``by`` (agent, model or tenant), the dearest
    ``TOP_KEYS`` apart and the rest as "other", and each key's totals."""
    seconds, bucket = COST_WINDOWS[window]
    since = now - seconds
    rows = await store.sum_events_over_time(
        types=LLM_TYPES, sums=COST_SUMS, group_by=_group(by), bucket=bucket, since=since,
        tenant=tenant,
    )  # fmt: skip
    lines = _totals(rows)
    top = [line.key for line in lines[:TOP_KEYS]]
    series: dict[str, dict[float, float]] = {k: {} for k in top}
    for row in rows:
        key = row.key if row.key in series else "other"
        values = series.setdefault(key, {})
        values[row.start] = values.get(row.start, 0.0) + row.sums["cost"]
    chart = stacked_bars(
        f"Spend per {'hour' if bucket < 86_400 else 'day'} by {by}",
        buckets(since, now, bucket),
        bucket,
        series,
        usd_text,
    )
    return chart, lines


def _totals(rows: Sequence[TimedTotals]) -> list[SpendLine]:
    usd: dict[str, float] = defaultdict(float)
    tokens: dict[str, int] = defaultdict(int)
    events: dict[str, int] = defaultdict(int)
    for row in rows:
        usd[row.key] += row.sums["cost"]
        tokens[row.key] += int(row.sums["input_tokens"] + row.sums["output_tokens"])
        events[row.key] += row.events
    return sorted(
        (SpendLine(k, usd[k], tokens[k], events[k]) for k in usd), key=lambda s: (-s.usd, s.key)
    )


async def budget_views(
    store: Store, lines: Sequence[BudgetLine], *, tenant: str | None, now: float, charts: int = 6
) -> list[BudgetView]:
    """Each budget line with its gauge; per-agent and per-tenant lines with a money limit get
    their spend this period as a line against the limit (at most ``charts`` of them)."""
    views: list[BudgetView] = []
    for line in lines:
        used = None
        if line.limit_usd:
            used = (line.spent_usd + line.reserved_usd) / line.limit_usd
        elif line.limit_tokens:
            used = (line.spent_tokens + line.reserved_tokens) / line.limit_tokens
        views.append(BudgetView(line, used))
    drawn = 0
    for view in views:
        line = view.line
        if drawn >= charts or line.per == "run" or not line.limit_usd:
            continue
        bucket = 3600.0 if line.period == "day" else 86_400.0
        rows = await store.sum_events_over_time(
            types=LLM_TYPES, sums={"cost": COST_SUMS["cost"]}, group_by=line.per, bucket=bucket,
            since=line.period_start, tenant=tenant,
        )  # fmt: skip
        values = {r.start: r.sums["cost"] for r in rows if r.key == line.key}
        view.chart = cumulative_line(
            f"{line.budget}: {line.per} {line.key}, this {line.period}",
            buckets(line.period_start, now, bucket),
            bucket,
            values,
            line.limit_usd,
            usd_text,
            width=560.0,
            height=220.0,
        )
        drawn += 1
    return views
