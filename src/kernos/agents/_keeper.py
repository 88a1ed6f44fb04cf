"""Keeping an agent's conversation inside its model's window, turn after turn.

Before each model call the conversation is counted (offline, see ``_context``). Past
``compact_at`` of the input budget it is compacted: the older turns are summarised by a model
call (a journaled ``ctx.llm``), and a ``note`` named ``context_compacted`` records the plan:
which messages were replaced, verbatim, and the summary that stands for them. Replay reapplies
the recorded plan, so the conversation a resumed run continues is the one the model saw.
A conversation that cannot fit even compacted raises ``ContextOverflow`` before any provider
is asked (never a provider's 400, never a silent cut).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

from kernos.agents._context import CompactionPlan, TokenCounter, plan_compaction, summary_prompt
from kernos.agents._windows import input_budget
from kernos.errors import AgentFailed, ConfigError, ContextOverflow
from kernos.gateway import Message, ToolSpec, load_config
from kernos.kernel import RunContext

#: compaction rounds per turn: a second pass summarises the first summary; more means the
#: kept parts themselves are too large, which the overflow error says
MAX_ROUNDS = 2
#: the answer's room when the agent sets no ``max_tokens``
DEFAULT_ANSWER_TOKENS = 4096


@dataclass(frozen=True, slots=True)
class _Limit:
    model: str
    budget: int


class ContextKeeper:
    """The window policy of one agent (its route's tightest model decides)."""

    def __init__(
        self,
        agent: str,
        route: str,
        *,
        window: int | None,
        max_tokens: int | None,
        keep_last: int,
        compact_at: float,
        summary_route: str,
    ) -> None:
        if not 0.1 <= compact_at <= 1.0:
            raise ValueError(f"compact_at must be between 0.1 and 1.0, not {compact_at}")
        self.agent = agent
        self.route = route
        self.window = window
        self.max_tokens = max_tokens or DEFAULT_ANSWER_TOKENS
        self.keep_last = keep_last
        self.compact_at = compact_at
        self.summary_route = summary_route

    @cached_property
    def limit(self) -> _Limit | None:
        """The smallest input budget among the route's models (a fallback may answer), or None
        when no window is known: then nothing is compacted and the provider's own limit holds."""
        limits = []
        for model in _models_of(self.route):
            budget = input_budget(model, max_tokens=self.max_tokens, window=self.window)
            if budget is not None:
                limits.append(_Limit(model, budget))
        if not limits and self.window is not None:
            limits.append(_Limit(self.route, self.window - self.max_tokens))
        return min(limits, key=lambda limit: limit.budget) if limits else None

    @cached_property
    def counter(self) -> TokenCounter:
        assert self.limit is not None
        return TokenCounter(self.limit.model)

    async def fit(
        self,
        ctx: RunContext,
        messages: list[Message],
        tools: Sequence[ToolSpec],
        pinned: Sequence[Message],
    ) -> list[Message]:
        """``messages``, compacted if they near the window."""
        limit = self.limit
        if limit is None:
            return messages
        if "counter" not in self.__dict__:
            # the first count loads the tokenizer (~0.3 s): not on the worker's event loop
            await asyncio.to_thread(lambda: self.counter)
        counter = self.counter

        def count(ms: Sequence[Message]) -> int:
            return counter.count(ms, tools)

        target = int(limit.budget * self.compact_at)
        for _ in range(MAX_ROUNDS):
            if count(messages) <= target:
                return messages
            plan = self._plan(messages, pinned, count, target, limit.budget)
            messages = await self._compact(ctx, messages, plan)
        tokens = count(messages)
        if tokens > limit.budget:
            raise ContextOverflow(
                tokens=tokens,
                budget=limit.budget,
                kept=len(messages),
                largest=None,
                summary_reserve=None,
                keep_last=self.keep_last,
                pinned=len(pinned),
            )
        return messages

    def _plan(
        self,
        messages: list[Message],
        pinned: Sequence[Message],
        count: Callable[[Sequence[Message]], int],
        target: int,
        budget: int,
    ) -> CompactionPlan:
        indexes = [i for i, m in enumerate(messages) if m in pinned]
        try:
            plan = plan_compaction(
                messages, budget=target, count=count, keep_last=self.keep_last, pinned=indexes
            )
        except ContextOverflow:
            # cannot get down to the target: fitting the window itself is enough
            plan = plan_compaction(
                messages, budget=budget, count=count, keep_last=self.keep_last, pinned=indexes
            )
        assert plan is not None  # it was over the target, hence over what it plans for
        return plan

    async def _compact(
        self, ctx: RunContext, messages: list[Message], plan: CompactionPlan
    ) -> list[Message]:
        limit = plan.summary_max_tokens
        answer = await ctx.llm(
            self.summary_route, summary_prompt(plan.messages, max_tokens=limit), max_tokens=limit
        )
        summary = answer.text.strip()
        if not summary:
            raise AgentFailed(
                self.agent,
                "compaction",
                f"the model of route {self.summary_route!r} returned an empty summary of "
                f"{len(plan.messages)} message(s); nothing was dropped, the run stopped instead",
            )
        recorded = ctx.note("context_compacted", lambda: {**plan.payload(), "summary": summary})
        made = CompactionPlan.model_validate({k: v for k, v in recorded.items() if k != "summary"})
        return made.apply(messages, str(recorded["summary"]))


def _models_of(route: str) -> list[str]:
    """``provider:model`` of each model of ``route`` (kernos.toml), or the route itself when it
    names one model."""
    try:
        config = load_config()
    except ConfigError:
        config = None
    if config is not None and route in config.routes:
        return [f"{e.provider}:{e.model}" for e in config.routes[route]]
    return [route] if ":" in route else []
