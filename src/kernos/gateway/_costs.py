"""The cost ledger: what LLM calls cost, per run, agent, tenant or model, read from the journal.

No second record is kept (DESIGN.md: one write per step serves all four needs). Every answered
call's ``llm_completed`` event carries its response's usage and cost, and every failed attempt's
``llm_attempt`` event carries what the provider billed for it (a stream cut after some output
still costs its tokens); the ledger is their sum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kernos.errors import InvalidInput
from kernos.store import JsonPath, Store

CostGroup = Literal["run", "agent", "tenant", "model"]
GROUPS: tuple[CostGroup, ...] = ("run", "agent", "tenant", "model")

_TYPES = ("llm_completed", "llm_attempt")
# the answer's figures sit under "response"; an attempt's at the top of its payload
_SUMS: dict[str, list[JsonPath]] = {
    "cost": [("response", "cost"), ("cost",)],
    "input_tokens": [("response", "usage", "input_tokens"), ("usage", "input_tokens")],
    "output_tokens": [("response", "usage", "output_tokens"), ("usage", "output_tokens")],
    "cached_input_tokens": [
        ("response", "usage", "cached_input_tokens"),
        ("usage", "cached_input_tokens"),
    ],
}
_MODEL: list[list[JsonPath]] = [
    [("response", "provider"), ("provider",)],
    [("response", "model"), ("model",)],
]


@dataclass(frozen=True, slots=True)
class CostLine:
    """One group's totals: calls answered, attempts that failed, tokens and dollars."""

    key: str
    events: int
    cost: float
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int


async def cost_report(
    store: Store, *, by: CostGroup = "agent", since: float | None = None, limit: int = 1000
) -> list[CostLine]:
    """Totals from the journal, most expensive first. ``since`` is a wall-clock time."""
    if by not in GROUPS:
        raise InvalidInput(f"cannot total costs by {by!r}: use one of {', '.join(GROUPS)}")
    group = _MODEL if by == "model" else by
    rows = await store.sum_events(
        types=_TYPES, sums=_SUMS, group_by=group, since=since, limit=limit
    )
    return [
        CostLine(
            key=row.key,
            events=row.events,
            cost=row.sums["cost"],
            input_tokens=int(row.sums["input_tokens"]),
            output_tokens=int(row.sums["output_tokens"]),
            cached_input_tokens=int(row.sums["cached_input_tokens"]),
        )
        for row in rows
    ]
