"""What a call costs: list prices per model, and the arithmetic from a call's real usage.

Every call is charged to its run, agent and tenant (DESIGN.md, "Gateway": cost), so the price
of a model must be known before the bill is. The built-in table holds the list prices of
current OpenAI and Anthropic models; ``[prices]`` in ``kernos.toml`` overrides or extends it
(a negotiated discount, a local model that costs nothing, a model newer than this table).

A model the table does not know costs 0.0 rather than failing the call: a missing price must
not take an agent down. The table remembers such models so that the caller can warn once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kernos.gateway._types import Usage

#: prices are quoted per this many tokens
PER_TOKENS: Final = 1_000_000


class Price(BaseModel):
    """A model's list price in US dollars per million tokens, and its context window.

    ``cached_input`` is the price of input tokens read from the provider's prompt cache
    (OpenAI "cached input", Anthropic "cache reads"). In ``kernos.toml`` it may be left out and
    then equals ``input``: a provider without a prompt cache bills every input token in full.

    ``context_window`` is the most input tokens a request may carry (for ``gpt-5``, 272,000 of
    its 400,000 total, the rest being reserved for output); ``None`` when unknown. Memory
    compacts a conversation before it reaches this.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cached_input: float = Field(ge=0)
    context_window: int | None = Field(default=None, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _cached_input_defaults_to_input(cls, data: object) -> object:
        if not isinstance(data, Mapping) or "cached_input" in data or "input" not in data:
            return data
        price = data["input"]
        # a bad input is reported once, as itself, rather than again through cached_input
        valid = isinstance(price, int | float) and not isinstance(price, bool) and price >= 0
        return {**data, "cached_input": price if valid else 0.0}


def _p(input: float, output: float, cached: float, window: int) -> Price:
    return Price(input=input, output=output, cached_input=cached, context_window=window)


#: List prices, USD per million tokens: input, output, cached input; context window in input
#: tokens. Verified 2026-11-26 against LiteLLM's model_prices_and_context_window.json in litellm
#: 1.110.2 (1.77.5 for the Anthropic models 1.110.2 dropped as retired). The older models, up to
#: gpt-5.1 and claude-opus-4-5, were also checked by their author against the providers'
#: published prices (openai.com/api/pricing, anthropic.com/pricing); for the newer ones (gpt-5.2
#: and later, claude-opus-4-6 and later) LiteLLM is the single source, not cross-checked. Keys
#: are undated names; a dated name falls back to its undated one unless it is listed itself
#: because its price differs.
#:
#: Not modelled: long-context surcharges. LiteLLM bills a whole call at a higher rate once its
#: input exceeds a threshold: above 272,000 tokens 2x input and cached input and 1.5x output for
#: gpt-5.4, gpt-5.5, gpt-5.6-* and gpt-6*, above 100,000 tokens 5x for claude-haiku-5-5. Such a
#: call is billed here at the base rate, i.e. too low.
#:
#: A date after an entry is its end of life: Anthropic's from the anthropic SDK's
#: DEPRECATED_MODELS, OpenAI's from LiteLLM's deprecation_date. Entries past it stay priced.
BUILTIN_PRICES: Final[Mapping[str, Price]] = MappingProxyType(
    {
        # OpenAI; cached input is OpenAI's automatic prompt caching, 0.1x input (0.05x on
        # gpt-6.1-*).
        "gpt-6-astra": _p(10.0, 50.0, 1.0, 922_000),
        "gpt-6.1-sol": _p(2.0, 10.0, 0.10, 922_000),
        "gpt-6-sol": _p(2.0, 10.0, 0.20, 922_000),
        "gpt-6.1-terra": _p(1.0, 5.0, 0.05, 922_000),
        "gpt-6-luna": _p(0.10, 0.50, 0.01, 922_000),
        "gpt-5.6-sol": _p(4.0, 20.0, 0.40, 922_000),
        "gpt-5.6-terra": _p(2.0, 12.0, 0.20, 922_000),
        "gpt-5.6-luna": _p(0.20, 1.20, 0.02, 922_000),
        "gpt-5.5": _p(5.0, 30.0, 0.50, 1_050_000),
        "gpt-5.4": _p(2.50, 15.0, 0.25, 1_050_000),
        "gpt-5.4-mini": _p(0.75, 4.50, 0.075, 272_000),
        "gpt-5.4-nano": _p(0.20, 1.25, 0.02, 272_000),  # 2027-04-01
        "gpt-5.2": _p(1.75, 14.0, 0.175, 272_000),
        # no cached-input discount; served by the Responses API only, not Chat Completions
        "gpt-5.2-pro": _p(21.0, 168.0, 21.0, 272_000),
        "gpt-5.1": _p(1.25, 10.0, 0.125, 272_000),  # 2027-04-01
        "gpt-5": _p(1.25, 10.0, 0.125, 272_000),  # 2026-12-11
        "gpt-5-mini": _p(0.25, 2.0, 0.025, 272_000),  # 2026-12-11
        "gpt-5-nano": _p(0.05, 0.40, 0.005, 272_000),  # 2026-12-11
        "gpt-5-chat": _p(1.25, 10.0, 0.125, 128_000),  # 2026-07-23
        "gpt-4.1": _p(2.0, 8.0, 0.50, 1_047_576),  # 2027-01-14
        "gpt-4.1-mini": _p(0.40, 1.60, 0.10, 1_047_576),  # 2027-01-14
        "gpt-4.1-nano": _p(0.10, 0.40, 0.025, 1_047_576),  # 2026-10-23
        "gpt-4o": _p(2.50, 10.0, 1.25, 128_000),  # 2027-01-14
        # the first gpt-4o snapshot kept its launch price and has no cached-input discount
        "gpt-4o-2024-05-13": _p(5.0, 15.0, 5.0, 128_000),  # 2026-10-23
        "gpt-4o-mini": _p(0.15, 0.60, 0.075, 128_000),  # 2027-01-14
        "o3": _p(2.0, 8.0, 0.50, 200_000),  # 2026-12-11
        "o4-mini": _p(1.10, 4.40, 0.275, 200_000),  # 2026-10-23
        "o3-mini": _p(1.10, 4.40, 0.55, 200_000),  # 2026-10-23
        "o1": _p(15.0, 60.0, 7.50, 200_000),  # 2026-10-23
        # Anthropic; cached input is a cache read, 0.1x input (0.05x on claude-opus-5-5 and
        # claude-sonnet-5-5, 0.025x on the -5-1 models). Cache writes (1.25x input) are not in
        # Usage and are billed here at the input price.
        "claude-opus-5-5": _p(4.0, 20.0, 0.20, 1_000_000),
        "claude-opus-5": _p(5.0, 25.0, 0.50, 1_000_000),
        "claude-fable-5-1": _p(10.0, 50.0, 0.25, 1_000_000),
        "claude-fable-5": _p(10.0, 50.0, 1.0, 1_000_000),
        "claude-mythos-5-1": _p(10.0, 50.0, 0.25, 1_000_000),
        "claude-mythos-5": _p(10.0, 50.0, 1.0, 1_000_000),
        "claude-sonnet-5-5": _p(2.0, 10.0, 0.10, 1_000_000),
        "claude-sonnet-5": _p(2.0, 10.0, 0.20, 1_000_000),
        "claude-haiku-5-5": _p(0.10, 0.50, 0.01, 1_000_000),
        "claude-opus-4-8": _p(5.0, 25.0, 0.50, 1_000_000),
        "claude-opus-4-7": _p(5.0, 25.0, 0.50, 1_000_000),
        "claude-opus-4-6": _p(5.0, 25.0, 0.50, 1_000_000),
        "claude-sonnet-4-6": _p(3.0, 15.0, 0.30, 1_000_000),
        "claude-opus-4-5": _p(5.0, 25.0, 0.50, 200_000),  # 2027-01-22
        "claude-sonnet-4-5": _p(3.0, 15.0, 0.30, 200_000),  # 2026-11-30
        "claude-haiku-4-5": _p(1.0, 5.0, 0.10, 200_000),
        # retired: no longer in litellm 1.110.2
        "claude-opus-4-1": _p(15.0, 75.0, 1.50, 200_000),
        "claude-opus-4": _p(15.0, 75.0, 1.50, 200_000),
        "claude-sonnet-4": _p(3.0, 15.0, 0.30, 200_000),
        "claude-3-7-sonnet": _p(3.0, 15.0, 0.30, 200_000),
        "claude-3-5-haiku": _p(0.80, 4.0, 0.08, 200_000),
    }
)

# OpenAI dates its snapshots "-2025-04-14", Anthropic "-20250929"; both alias "-latest".
_SNAPSHOT = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|latest)$")


def undated(model: str) -> str:
    """The model's name without a snapshot date or ``-latest`` (``gpt-4.1-mini-2025-04-14`` →
    ``gpt-4.1-mini``); unchanged when it has neither."""
    return _SNAPSHOT.sub("", model)


class PriceTable:
    """Prices by model: overrides first, then the built-in list prices.

    ``overrides`` maps ``"provider:model"`` or ``"model"`` to a price. For a call to ``model``
    at ``provider`` the first match wins, in this order: the provider-qualified override, the
    model-name override, the built-in price; each tried with the exact name, then undated.
    """

    def __init__(self, overrides: Mapping[str, Price] | None = None) -> None:
        self._overrides: Mapping[str, Price] = MappingProxyType(dict(overrides or {}))
        self._unknown: set[str] = set()

    def lookup(self, provider: str, model: str) -> Price | None:
        """The price of ``model`` served by ``provider``, or ``None`` when nobody set one."""
        names = (model, undated(model))
        for source, prefix in (
            (self._overrides, f"{provider}:"),
            (self._overrides, ""),
            (BUILTIN_PRICES, ""),
        ):
            for name in names:
                price = source.get(prefix + name)
                if price is not None:
                    return price
        return None

    def cost(self, provider: str, model: str, usage: Usage) -> float:
        """US dollars for one call's ``usage``; 0.0 for a model without a price (remembered in
        :meth:`unknown`).

        Cached input tokens are part of ``usage.input_tokens`` and billed at the cached rate;
        the rest of the input at the input rate.
        """
        price = self.lookup(provider, model)
        if price is None:
            self._unknown.add(f"{provider}:{model}")
            return 0.0
        cached = min(usage.cached_input_tokens, usage.input_tokens)
        fresh = usage.input_tokens - cached
        dollars = (
            fresh * price.input + cached * price.cached_input + usage.output_tokens * price.output
        )
        return dollars / PER_TOKENS

    def context_window(self, provider: str, model: str) -> int | None:
        """The most input tokens ``model`` accepts, or ``None`` when unknown."""
        price = self.lookup(provider, model)
        return None if price is None else price.context_window

    def unknown(self) -> set[str]:
        """``provider:model`` of every model :meth:`cost` was asked about and had no price for,
        so that the caller can warn once per model (a copy: the caller may mutate it)."""
        return set(self._unknown)
