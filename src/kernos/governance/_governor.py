"""The checks before effects (guarantee 6): access policy and budgets, as the kernel's
``Gatekeeper``.

Before each tool and LLM call the kernel asks ``Governor.check``; the verdict is journaled at
the call's position (``<kind>_checked``) before anything happens, so a replay decides the same
and the trace shows which rule decided. Denials and approvals the policy requires go to the
audit log too.

Budgets (money and tokens, per run, agent or tenant, per run / day / month) are checked before
each LLM call with an estimate (the prompt's characters / 3 for tokens, a conservative count,
plus the call's ``max_tokens`` for the answer, at the route's dearest model's price). The
estimate is reserved in the store, all budgets or none, and settled with the real cost when the
call ends: concurrent calls on any number of workers cannot overspend by more than each call's
estimation error. A budget that is spent suspends the run (waiting for: budget, until the
period turns or a person raises the limit and resumes it) or fails the call, as configured.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kernos.errors import ConfigError
from kernos.gateway import (
    GatewayConfig,
    find_config_file,
    load_config,
    problem_reason,
    read_config_file,
)
from kernos.governance._policy import Policy, Subject, load_policy
from kernos.governance._redact import Redactor
from kernos.kernel import CallCheck, Verdict
from kernos.store import BudgetCharge, Store

log = logging.getLogger("kernos.governance")

#: the answer's tokens assumed when a call does not set max_tokens
DEFAULT_ANSWER_TOKENS = 1024
#: characters per token of the estimate (real text runs ~4; fewer over-counts, safely)
CHARS_PER_TOKEN = 3
#: how often a run parked on a spent run-budget looks again (a person may raise it)
RECHECK_SECONDS = 300.0


class Budget(BaseModel):
    """One ``[[budgets]]`` entry of kernos.toml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    #: what it counts for: each run, agent or tenant (``match``: only that agent/tenant)
    per: Literal["run", "agent", "tenant"]
    match: str | None = None
    period: Literal["run", "day", "month"] = "day"
    usd: float | None = Field(default=None, gt=0)
    tokens: int | None = Field(default=None, gt=0)
    on_exceed: Literal["suspend", "fail"] = "suspend"

    def key(self, call: CallCheck) -> str | None:
        """The key this call counts under, or None when the budget does not apply."""
        key = {"run": call.run_id, "agent": call.agent, "tenant": call.tenant}[self.per]
        if self.match is not None and key != self.match:
            return None
        return key

    def period_start(self, now: float) -> float:
        if self.period == "run":
            return 0.0
        day = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        if self.period == "month":
            day = day.replace(day=1)
        return day.timestamp()

    def period_end(self, now: float) -> float | None:
        start = datetime.fromtimestamp(self.period_start(now), UTC)
        if self.period == "day":
            return start.timestamp() + 86_400
        if self.period == "month":
            year, month = (
                (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
            )
            return start.replace(year=year, month=month).timestamp()
        return None


@dataclass(frozen=True, slots=True)
class Estimate:
    usd: float
    tokens: int


class Governor:
    """Policy and budgets for one worker (a ``kernos.kernel.Gatekeeper``)."""

    def __init__(
        self,
        store: Store,
        *,
        policy: Policy | None = None,
        budgets: Sequence[Budget] = (),
        gateway: GatewayConfig | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        self.store = store
        #: the audit log gets the call's arguments redacted like the journal's
        self.redactor = redactor or Redactor()
        self.policy = policy
        self.budgets = list(budgets)
        self.gateway = gateway or GatewayConfig()
        self._prices = self.gateway.price_table()

    async def check(self, call: CallCheck) -> Verdict:
        payload: dict[str, Any] = {}
        if self.policy is not None:
            decision = self.policy.decide(_subject(call))
            payload = decision.payload()
            if decision.effect != "allow":
                await self.store.append_audit(
                    actor=f"policy:{decision.rule or 'default'}",
                    action=f"policy.{decision.effect}",
                    tenant=call.tenant,
                    target=call.run_id,
                    details=self.redactor.for_tenant(call.tenant).json(
                        {
                            "kind": call.kind,
                            "name": call.name,
                            "arguments": dict(call.arguments),
                            "reason": decision.reason,
                            "agent": call.agent,
                        }
                    ),
                )
                return Verdict(decision.effect, decision.reason, payload=payload)
        if call.kind != "llm":
            return Verdict("allow", payload.get("reason", ""), payload=payload)
        return await self._budgets(call, payload)

    async def _budgets(self, call: CallCheck, payload: dict[str, Any]) -> Verdict:
        now = time.time()
        applicable = [(b, key) for b in self.budgets if (key := b.key(call)) is not None]
        if not applicable:
            return Verdict("allow", payload=payload)
        estimate = self.estimate(call)
        charges = [
            BudgetCharge(
                budget=b.name,
                key=key,
                period_start=b.period_start(now),
                limit_usd=b.usd,
                limit_tokens=b.tokens,
                usd=estimate.usd,
                tokens=estimate.tokens,
            )
            for b, key in applicable
        ]
        verdict = await self.store.reserve_budget(
            charges, hold=call.key or None, run_id=call.run_id
        )
        if verdict.ok:
            payload = {
                **payload,
                "budgets": [c.budget for c in charges],
                "estimate_usd": round(estimate.usd, 8),
                "estimate_tokens": estimate.tokens,
            }
            return Verdict("allow", payload=payload, hold=charges)
        assert verdict.exceeded is not None
        spent = verdict.exceeded
        budget = next(b for b, _ in applicable if b.name == spent.budget)
        limit = f"{budget.usd:g} USD" if budget.usd is not None else f"{budget.tokens:,} tokens"
        reason = (
            f"budget {budget.name!r} ({budget.per} {spent.key}, per {budget.period}: {limit}) "
            f"has {verdict.spent_usd:.4f} USD and {verdict.spent_tokens:,} tokens spent or "
            f"reserved; this call (about {estimate.usd:.4f} USD, {estimate.tokens:,} tokens) "
            f"would exceed it"
        )
        await self.store.append_audit(
            actor=f"budget:{budget.name}",
            action=f"budget.{'deny' if budget.on_exceed == 'fail' else 'suspend'}",
            tenant=call.tenant,
            target=call.run_id,
            details={"reason": reason, "route": call.name},
        )
        if budget.on_exceed == "fail":
            return Verdict("deny", reason, payload={**payload, "budget": budget.name})
        retry_at = budget.period_end(now) or now + RECHECK_SECONDS
        return Verdict("wait", reason, retry_at=min(retry_at, now + RECHECK_SECONDS))

    async def settle(self, call: CallCheck, verdict: Verdict, result: Any) -> None:
        if not verdict.hold:
            return
        usd = float(getattr(result, "cost", 0.0) or 0.0) if result is not None else 0.0
        usage = getattr(result, "usage", None)
        tokens = int(getattr(usage, "total_tokens", 0) or 0) if usage is not None else 0
        await self.store.settle_budget(verdict.hold, usd=usd, tokens=tokens, hold=call.key or None)

    async def resume(self, call: CallCheck, payload: Mapping[str, Any]) -> Verdict | None:
        """A call going ahead on an earlier decision: it takes over what an earlier attempt
        reserved (a killed worker's, kept under the call's id), or, with nothing held (it
        was settled at a park, or a person approved the call just now), is checked against
        the budgets again and reserves anew."""
        if call.kind != "llm":
            return None
        held = await self.store.held_budget(call.key) if call.key else []
        if held:
            return Verdict("allow", payload=dict(payload), hold=held)
        verdict = await self._budgets(call, {})
        return None if verdict.effect == "allow" and not verdict.hold else verdict

    def estimate(self, call: CallCheck) -> Estimate:
        """A call's cost before it is made: over- rather than under-counted."""
        text = json.dumps(
            [_plain(m) for m in call.messages], ensure_ascii=False, separators=(",", ":")
        )
        prompt = math.ceil(len(text) / CHARS_PER_TOKEN)
        answer = int(call.params.get("max_tokens") or DEFAULT_ANSWER_TOKENS)
        usd = 0.0
        for provider, model in self._models(call.name):
            price = self._prices.lookup(provider, model)
            if price is not None:
                usd = max(usd, (prompt * price.input + answer * price.output) / 1_000_000)
        return Estimate(usd, prompt + answer)

    def _models(self, route: str) -> list[tuple[str, str]]:
        if route in self.gateway.routes:
            return [(e.provider, e.model) for e in self.gateway.routes[route]]
        provider, _, model = route.partition(":")
        return [(provider, model)] if model else []


def _plain(message: Any) -> Any:
    dump = getattr(message, "model_dump", None)
    return dump(mode="json") if callable(dump) else message


def _subject(call: CallCheck) -> Subject:
    if call.kind == "tool":
        return Subject.for_tool(
            call.name,
            call.arguments,
            agent=call.agent,
            tenant=call.tenant,
            principal=call.principal,
        )
    params = {k: v for k, v in call.params.items() if isinstance(v, str | int | float | bool)}
    return Subject.for_llm(
        call.name, agent=call.agent, tenant=call.tenant, principal=call.principal, params=params
    )


def load_budgets(
    path: str | Path | None = None, *, env: Mapping[str, str] = os.environ
) -> list[Budget]:
    """``[[budgets]]`` of kernos.toml (none when the file or the section is absent)."""
    file = find_config_file(path, env)
    if file is None:
        return []
    entries = read_config_file(file).get("budgets", [])
    if not isinstance(entries, list):
        raise ConfigError(f"{file}: budgets must be an array of tables ([[budgets]])")
    budgets: list[Budget] = []
    for i, entry in enumerate(entries):
        try:
            budgets.append(Budget.model_validate(entry))
        except ValidationError as exc:
            problems = "; ".join(
                f"budgets[{i}].{'.'.join(str(p) for p in e['loc'])}: {problem_reason(e)}"
                for e in exc.errors()
            )
            raise ConfigError(f"{file}: {problems}") from None
    names = [b.name for b in budgets]
    if len(set(names)) != len(names):
        raise ConfigError(f"{file}: budgets: two budgets share a name; names must be unique")
    return budgets


def governor_from_config(
    store: Store,
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] = os.environ,
    redactor: Redactor | None = None,
) -> Governor | None:
    """The worker's checks from kernos.toml (``[policy]``, ``[[budgets]]``), or None if it
    configures neither (then calls are made unchecked, at no cost)."""
    policy = load_policy(path, env=env)
    if policy is not None:
        for warning in policy.warnings:
            log.warning("policy: %s", warning)
    budgets = load_budgets(path, env=env)
    if policy is None and not budgets:
        return None
    return Governor(
        store,
        policy=policy,
        budgets=budgets,
        gateway=load_config(path, env=env),
        redactor=redactor,
    )
