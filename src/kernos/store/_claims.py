"""Which of the candidate runs a claim takes: per-agent and per-tenant allowances, fairness.

A claim reads candidate runs in the claim order (highest priority, then oldest ``run_at``, then
id) and chooses among them here, in plain Python, inside the claim's transaction.

- Without tenant limits (``tenants=None``: no ``[tenants]`` table in kernos.toml) a claim
  takes the candidates in order, skipping those whose agent is at its limit. It reads
  ``limit`` rows, as it always has: the claim's hot path is unchanged.
- With them, it reads a window larger than ``limit`` and takes the candidates round-robin
  across tenants within each priority, each tenant's runs in their own order (FIFO per
  tenant). A higher priority still comes first: fairness only orders runs of equal priority.

The limits themselves are counted by the store (runs ``running`` with a live lease, across the
fleet) under an advisory lock per agent and per tenant; here they are only allowances to spend.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import groupby

from kernos.errors import InvalidInput
from kernos.store._dialect import Tx, placeholders
from kernos.store._records import Run

#: a fair claim of ``limit`` runs reads candidates in windows of this many times ``limit``
FAIR_WINDOW = 2
#: and reads at most this many windows (each one more scan of the claimable runs)
MAX_WINDOWS = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class TenantLimits:
    """Per-tenant concurrency limits held across the whole fleet, and fair claims (the
    ``[tenants]`` table of kernos.toml).

    A tenant's limit is the most of its runs that may be ``running`` (with a live lease) at
    once, counted over every worker of the database. ``limits`` names tenants whose limit is
    not ``default``; ``default`` None leaves the other tenants unlimited. Passing a
    ``TenantLimits`` at all, even one with no limit, makes claims fair across tenants.
    """

    #: the limit of every tenant that ``limits`` does not name (None: no limit)
    default: int | None = None
    #: tenant -> its limit, overriding ``default``
    limits: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.default is not None:
            _check_limit("default", self.default)
        for tenant, limit in self.limits.items():
            _check_limit(f"tenant {tenant!r}", limit)
        object.__setattr__(self, "limits", dict(self.limits))

    def limit_of(self, tenant: str) -> int | None:
        """The most runs of ``tenant`` that may be running at once (None: no limit)."""
        return self.limits.get(tenant, self.default)

    @property
    def limited(self) -> bool:
        """True when some tenant has a limit (else only fairness is asked for)."""
        return self.default is not None or bool(self.limits)

    def describe(self) -> str:
        """One line for a worker's log: ``default 50, acme 200`` or ``none``."""
        parts = [] if self.default is None else [f"default {self.default}"]
        parts += [f"{tenant} {limit}" for tenant, limit in sorted(self.limits.items())]
        return ", ".join(parts) or "none"


def _check_limit(what: str, limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidInput(
            f"the concurrency limit of {what} must be a whole number of runs, at least 1, "
            f"not {limit!r} (to hold a tenant's runs, pause them instead)"
        )


@dataclass(slots=True)
class Allowance:
    """How many more runs a claim may take per limited agent and per limited tenant; an agent
    or tenant that is not a key has no limit."""

    agents: dict[str, int] = field(default_factory=dict)
    tenants: dict[str, int] = field(default_factory=dict)

    def admits(self, run: Run) -> bool:
        return self.agents.get(run.agent, 1) > 0 and self.tenants.get(run.tenant, 1) > 0

    def take(self, run: Run) -> None:
        if run.agent in self.agents:
            self.agents[run.agent] -= 1
        if run.tenant in self.tenants:
            self.tenants[run.tenant] -= 1

    def blocked_agents(self) -> set[str]:
        return {agent for agent, left in self.agents.items() if left <= 0}


def choose_in_order(candidates: Iterable[Run], limit: int, allowance: Allowance) -> list[Run]:
    """Up to ``limit`` runs in the claim order, skipping those the allowance does not admit."""
    chosen: list[Run] = []
    for run in candidates:
        if len(chosen) >= limit:
            break
        if allowance.admits(run):
            allowance.take(run)
            chosen.append(run)
    return chosen


def choose_round_robin(candidates: Sequence[Run], limit: int, allowance: Allowance) -> list[Run]:
    """Up to ``limit`` runs: all that can be taken at a higher priority before any at a lower
    one; within a priority, one run per tenant in turn (tenants in the order of their oldest
    candidate), each tenant's runs in the claim order. ``candidates`` are in the claim order.

    A run the allowance does not admit is passed over and its tenant's next run is tried: the
    allowances only shrink, so a run passed over could not be taken later in this claim."""
    chosen: list[Run] = []
    for _, level in groupby(candidates, key=lambda run: run.priority):
        queues: dict[str, deque[Run]] = {}
        for candidate in level:
            queues.setdefault(candidate.tenant, deque()).append(candidate)
        while queues and len(chosen) < limit:
            for tenant in list(queues):
                run = _next_admitted(queues[tenant], allowance)
                if run is None:
                    del queues[tenant]
                    continue
                allowance.take(run)
                chosen.append(run)
                if len(chosen) >= limit:
                    break
        if len(chosen) >= limit:
            break
    return chosen


def _next_admitted(queue: deque[Run], allowance: Allowance) -> Run | None:
    while queue:
        run = queue.popleft()
        if allowance.admits(run):
            return run
    return None


def saturated(
    candidates: Sequence[Run], limit: int, allowance: Allowance
) -> tuple[set[str], set[str]]:
    """The agents and tenants of which ``candidates`` already hold every run a claim of
    ``limit`` could take (their allowance, or ``limit``): more of their runs would never be
    chosen, so the claim's next window of candidates leaves them out and reaches the runs of
    other tenants queued behind them."""
    admitted = [run for run in candidates if allowance.admits(run)]
    per_agent = Counter(run.agent for run in admitted)
    per_tenant = Counter(run.tenant for run in admitted)
    agents = {a for a, n in per_agent.items() if a in allowance.agents and n >= allowance.agents[a]}
    tenants = {t for t, n in per_tenant.items() if n >= min(limit, allowance.tenants.get(t, limit))}
    return agents, tenants


def count_running(tx: Tx, now: float, tenants: Sequence[str] | None) -> dict[str, int]:
    """Runs ``running`` with a live lease, per tenant, over the whole fleet: of ``tenants``, or
    of every tenant when None (read through the ``(state, lease_expires_at)`` index: the cost
    grows with the runs in flight, not with the queue)."""
    if tenants is not None and not tenants:
        return {}
    only = "" if tenants is None else f" AND tenant IN ({placeholders(len(tenants))})"
    rows = tx.fetchall(
        "SELECT tenant, COUNT(*) FROM kernos_runs WHERE state = 'running' "
        f"AND lease_expires_at >= ?{only} GROUP BY tenant",
        (now, *(tenants or ())),
    )
    return {str(tenant): int(count) for tenant, count in rows}


def limited_tenants(runs: Iterable[Run], tenants: TenantLimits) -> list[str]:
    """The tenants of ``runs`` that have a limit, sorted."""
    return sorted({run.tenant for run in runs if tenants.limit_of(run.tenant) is not None})


def tenant_allowance(
    names: Iterable[str], running: Mapping[str, int], tenants: TenantLimits
) -> dict[str, int]:
    """What each limited tenant of ``names`` may still start, given its ``running`` count."""
    allowance: dict[str, int] = {}
    for tenant in names:
        limit = tenants.limit_of(tenant)
        if limit is not None:
            allowance[tenant] = limit - running.get(tenant, 0)
    return allowance
