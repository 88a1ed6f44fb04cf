"""Spend against each configured budget this period: the one computation behind ``kernos
budgets`` and ``GET /v1/budgets``, so the two can never disagree.

The store keeps a usage row per budget, key and period (``Store.budget_usage``); a row counts
here only when its budget is still configured and its period is the current one (an earlier
day's spend, or a budget since removed from kernos.toml, limits nothing).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from kernos.governance._governor import Budget
from kernos.store import Store


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetLine:
    """One budget's spend for one key (a run, agent or tenant) in the current period.

    ``left_*`` is the limit less what is spent and what calls in flight have reserved (None
    when the budget has no limit of that kind); it is negative when a budget is overspent by
    the estimation error of calls already made. ``period_end`` is None for per-run periods.
    """

    budget: str
    per: Literal["run", "agent", "tenant"]
    key: str
    period: Literal["run", "day", "month"]
    period_start: float
    period_end: float | None
    spent_usd: float
    spent_tokens: int
    reserved_usd: float
    reserved_tokens: int
    limit_usd: float | None
    limit_tokens: int | None
    left_usd: float | None
    left_tokens: int | None
    on_exceed: Literal["suspend", "fail"]


async def budget_report(
    store: Store, budgets: Sequence[Budget], *, now: float | None = None
) -> list[BudgetLine]:
    """Spend, reservations and what is left of each budget with spend this period, by
    budget and key. No budgets configured: no lines, and no query."""
    if not budgets:
        return []
    at = time.time() if now is None else now
    configured = {b.name: b for b in budgets}
    since = min(b.period_start(at) for b in budgets)
    lines: list[BudgetLine] = []
    for u in await store.budget_usage(since=since):
        budget = configured.get(u.budget)
        if budget is None or u.period_start != budget.period_start(at):
            continue
        left_usd = None if budget.usd is None else budget.usd - u.usd - u.reserved_usd
        left_tokens = (
            None if budget.tokens is None else budget.tokens - u.tokens - u.reserved_tokens
        )
        lines.append(
            BudgetLine(
                budget=u.budget,
                per=budget.per,
                key=u.key,
                period=budget.period,
                period_start=u.period_start,
                period_end=budget.period_end(at),
                spent_usd=round(u.usd, 6),
                spent_tokens=u.tokens,
                reserved_usd=round(u.reserved_usd, 6),
                reserved_tokens=u.reserved_tokens,
                limit_usd=budget.usd,
                limit_tokens=budget.tokens,
                left_usd=None if left_usd is None else round(left_usd, 6),
                left_tokens=left_tokens,
                on_exceed=budget.on_exceed,
            )
        )
    return lines
