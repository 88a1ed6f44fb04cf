"""Cost from real usage: the price table, its lookups and the arithmetic (DESIGN.md, "Cost").

A call's cost is charged to its run, agent and tenant, so a wrong lookup or a cached token
billed at the full rate is a wrong bill; a model without a price costs nothing but is reported.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from kernos.gateway._prices import BUILTIN_PRICES, Price, PriceTable, undated
from kernos.gateway._types import Usage

#: Current chat models the SDKs list (anthropic 2.14.0, openai 3.57.0) and LiteLLM prices, as of
#: 2026-11-26.
CURRENT = [
    "gpt-6-astra",
    "gpt-6.1-sol",
    "gpt-6-sol",
    "gpt-6.1-terra",
    "gpt-6-luna",
    "gpt-5.6-sol",
    "gpt-5.6-terra",
    "gpt-5.6-luna",
    "gpt-5.5",
    "gpt-5.4",
    "gpt-5.4-mini",
    "gpt-5.2",
    "gpt-5.2-pro",
    "claude-opus-5-5",
    "claude-opus-5",
    "claude-fable-5-1",
    "claude-fable-5",
    "claude-mythos-5-1",
    "claude-mythos-5",
    "claude-sonnet-5-5",
    "claude-sonnet-5",
    "claude-haiku-5-5",
    "claude-opus-4-8",
    "claude-opus-4-7",
    "claude-opus-4-6",
    "claude-sonnet-4-6",
    "claude-haiku-4-5",
]

#: Deprecated with an end of life after 2026-11-26: still served, so still billed.
DEPRECATED = [
    "gpt-5.4-nano",
    "gpt-5.1",
    "gpt-5",
    "gpt-5-mini",
    "gpt-5-nano",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4o",
    "gpt-4o-mini",
    "o3",
    "claude-opus-4-5",
    "claude-sonnet-4-5",
]

#: Past their end of life, kept in the table.
RETIRED = [
    "gpt-5-chat",
    "gpt-4.1-nano",
    "o4-mini",
    "o3-mini",
    "o1",
    "claude-opus-4-1",
    "claude-opus-4",
    "claude-sonnet-4",
    "claude-3-7-sonnet",
    "claude-3-5-haiku",
]


@pytest.mark.parametrize("model", CURRENT + DEPRECATED + RETIRED)
def test_listed_models_have_a_price_and_a_window(model: str) -> None:
    price = PriceTable().lookup("any", model)
    assert price is not None
    assert price.context_window is not None


@pytest.mark.parametrize(("model", "price"), sorted(BUILTIN_PRICES.items()))
def test_builtin_prices_are_plausible(model: str, price: Price) -> None:
    """A typo in the table (a cached price above the input price, output cheaper than input,
    a window of 200 tokens) would bill every call wrongly; every listed model obeys these."""
    assert 0 < price.cached_input <= price.input < price.output
    assert price.context_window is not None
    assert price.context_window >= 128_000


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4.1-mini", Price(input=0.40, output=1.60, cached_input=0.10)),
        ("claude-sonnet-4-5", Price(input=3.0, output=15.0, cached_input=0.30)),
        ("claude-opus-4-1", Price(input=15.0, output=75.0, cached_input=1.50)),
        ("gpt-5", Price(input=1.25, output=10.0, cached_input=0.125)),
        ("o3", Price(input=2.0, output=8.0, cached_input=0.50)),
        ("gpt-6-astra", Price(input=10.0, output=50.0, cached_input=1.0)),
        ("gpt-6.1-sol", Price(input=2.0, output=10.0, cached_input=0.10)),
        ("gpt-5.6-terra", Price(input=2.0, output=12.0, cached_input=0.20)),
        ("gpt-5.5", Price(input=5.0, output=30.0, cached_input=0.50)),
        ("gpt-5.4-mini", Price(input=0.75, output=4.50, cached_input=0.075)),
        ("gpt-5.2-pro", Price(input=21.0, output=168.0, cached_input=21.0)),
        ("claude-opus-5-5", Price(input=4.0, output=20.0, cached_input=0.20)),
        ("claude-fable-5-1", Price(input=10.0, output=50.0, cached_input=0.25)),
        ("claude-opus-4-8", Price(input=5.0, output=25.0, cached_input=0.50)),
        ("claude-sonnet-4-6", Price(input=3.0, output=15.0, cached_input=0.30)),
        ("claude-haiku-5-5", Price(input=0.10, output=0.50, cached_input=0.01)),
    ],
)
def test_list_prices(model: str, expected: Price) -> None:
    price = PriceTable().lookup("openai", model)
    assert price is not None
    assert (price.input, price.output, price.cached_input) == (
        expected.input,
        expected.output,
        expected.cached_input,
    )


@pytest.mark.parametrize(
    ("name", "base"),
    [
        ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
        ("gpt-5-2025-08-07", "gpt-5"),
        ("o3-mini-2025-01-31", "o3-mini"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-opus-4-1-20250805", "claude-opus-4-1"),
        ("claude-opus-4-20250514", "claude-opus-4"),
        ("claude-3-5-haiku-20241022", "claude-3-5-haiku"),
        ("claude-3-7-sonnet-latest", "claude-3-7-sonnet"),
        ("gpt-5-chat-latest", "gpt-5-chat"),
        # the snapshots the SDKs list for models added 2026-11-26
        ("gpt-5.5-2026-04-23", "gpt-5.5"),
        ("gpt-5.4-mini-2026-03-17", "gpt-5.4-mini"),
        ("gpt-5.4-nano-2026-03-17", "gpt-5.4-nano"),
        ("gpt-5.2-2025-12-11", "gpt-5.2"),
        ("gpt-5.2-pro-2025-12-11", "gpt-5.2-pro"),
        ("gpt-5.1-2025-11-13", "gpt-5.1"),
        ("claude-opus-4-5-20251101", "claude-opus-4-5"),
        ("claude-haiku-4-5-20251001", "claude-haiku-4-5"),
        # snapshots LiteLLM knows that the SDKs do not list
        ("gpt-5.4-2026-03-05", "gpt-5.4"),
        ("gpt-6-astra-2026-09-03", "gpt-6-astra"),
        ("claude-opus-4-6-20260205", "claude-opus-4-6"),
        ("claude-opus-4-7-20260416", "claude-opus-4-7"),
    ],
)
def test_dated_names_find_their_model(name: str, base: str) -> None:
    table = PriceTable()
    assert undated(name) == base
    assert table.lookup("p", name) == table.lookup("p", base) is not None


def test_undated_leaves_other_names_alone() -> None:
    assert undated("gpt-4.1-mini") == "gpt-4.1-mini"
    assert undated("llama3.1:8b") == "llama3.1:8b"
    assert undated("claude-sonnet-4-5") == "claude-sonnet-4-5"
    # version numbers are not dates
    assert undated("gpt-5.4-mini") == "gpt-5.4-mini"
    assert undated("gpt-6.1-sol") == "gpt-6.1-sol"
    assert undated("claude-opus-4-8") == "claude-opus-4-8"
    assert undated("claude-haiku-5-5") == "claude-haiku-5-5"
    assert undated("claude-sonnet-5") == "claude-sonnet-5"


def test_a_snapshot_priced_differently_is_listed_itself() -> None:
    table = PriceTable()
    first = table.lookup("openai", "gpt-4o-2024-05-13")
    later = table.lookup("openai", "gpt-4o-2024-08-06")
    assert first is not None and later is not None
    assert (first.input, first.output) == (5.0, 15.0)
    assert (later.input, later.output) == (2.5, 10.0)


def test_overrides_win_provider_qualified_first() -> None:
    by_model = Price(input=0.3, output=1.2, cached_input=0.1)
    at_azure = Price(input=0.5, output=2.0, cached_input=0.2)
    table = PriceTable({"gpt-4.1-mini": by_model, "azure:gpt-4.1-mini": at_azure})
    assert table.lookup("azure", "gpt-4.1-mini") == at_azure
    assert table.lookup("openai", "gpt-4.1-mini") == by_model
    # a dated name reaches the overrides of its undated name before the built-in price
    assert table.lookup("azure", "gpt-4.1-mini-2025-04-14") == at_azure
    assert table.lookup("openai", "gpt-4.1-mini-2025-04-14") == by_model
    # other models are untouched
    assert table.lookup("openai", "gpt-4.1") == BUILTIN_PRICES["gpt-4.1"]


def test_an_override_can_price_a_local_model_with_colons() -> None:
    free = Price(input=0, output=0, cached_input=0, context_window=131_072)
    table = PriceTable({"ollama:llama3.1:8b": free})
    assert table.lookup("ollama", "llama3.1:8b") == free
    assert table.context_window("ollama", "llama3.1:8b") == 131_072
    assert table.cost("ollama", "llama3.1:8b", Usage(input_tokens=10_000)) == 0.0
    assert table.unknown() == set()


def test_cost_of_input_and_output() -> None:
    """1,000 input and 500 output tokens of gpt-4.1-mini ($0.40 / $1.60 per million)."""
    usage = Usage(input_tokens=1_000, output_tokens=500)
    assert PriceTable().cost("openai", "gpt-4.1-mini", usage) == pytest.approx(0.0012)


def test_cached_input_is_part_of_input_and_billed_at_the_cached_rate() -> None:
    """10,000 input tokens of which 8,000 cache reads, and 1,000 output, on claude-sonnet-4-5
    ($3 input, $0.30 cache read, $15 output): 2,000 x 3 + 8,000 x 0.3 + 1,000 x 15."""
    usage = Usage(input_tokens=10_000, cached_input_tokens=8_000, output_tokens=1_000)
    cost = PriceTable().cost("anthropic", "claude-sonnet-4-5-20250929", usage)
    assert cost == pytest.approx(0.006 + 0.0024 + 0.015)


def test_cost_on_a_large_call() -> None:
    """gpt-5: 1M input (250k cached) and 100k output = 0.75 x 1.25 + 0.25 x 0.125 + 0.1 x 10."""
    usage = Usage(input_tokens=1_000_000, cached_input_tokens=250_000, output_tokens=100_000)
    assert PriceTable().cost("openai", "gpt-5", usage) == pytest.approx(0.9375 + 0.03125 + 1.0)


@pytest.mark.parametrize(
    ("model", "usage", "dollars"),
    [
        # 40,000 x 0.75 + 60,000 x 0.075 + 20,000 x 4.50
        (
            "gpt-5.4-mini-2026-03-17",
            Usage(input_tokens=100_000, cached_input_tokens=60_000, output_tokens=20_000),
            0.030 + 0.0045 + 0.090,
        ),
        # 20,000 x 2 + 180,000 x 0.10 + 5,000 x 10
        (
            "gpt-6.1-sol",
            Usage(input_tokens=200_000, cached_input_tokens=180_000, output_tokens=5_000),
            0.040 + 0.018 + 0.050,
        ),
        # no cached-input discount: 10,000 x 21 + 1,000 x 168
        (
            "gpt-5.2-pro-2025-12-11",
            Usage(input_tokens=10_000, cached_input_tokens=8_000, output_tokens=1_000),
            0.210 + 0.168,
        ),
        # 50,000 x 2 + 150,000 x 0.10 + 10,000 x 10
        (
            "claude-sonnet-5-5",
            Usage(input_tokens=200_000, cached_input_tokens=150_000, output_tokens=10_000),
            0.100 + 0.015 + 0.100,
        ),
        # 10,000 x 5 + 1,000 x 25
        ("claude-opus-4-8", Usage(input_tokens=10_000, output_tokens=1_000), 0.050 + 0.025),
        # 50,000 x 0.10 + 5,000 x 0.50, below the 100,000-token surcharge the table leaves out
        ("claude-haiku-5-5", Usage(input_tokens=50_000, output_tokens=5_000), 0.005 + 0.0025),
    ],
)
def test_cost_of_current_models(model: str, usage: Usage, dollars: float) -> None:
    assert PriceTable().cost("p", model, usage) == pytest.approx(dollars)


@pytest.mark.parametrize(
    ("model", "dollars"),
    [
        ("claude-sonnet-4-5-20250929", 0.018 + 0.0012 + 0.030),  # end of life 2026-11-30
        ("claude-opus-4-5-20251101", 0.030 + 0.002 + 0.050),  # 2027-01-22
        ("gpt-5-2025-08-07", 0.0075 + 0.0005 + 0.020),  # 2026-12-11
        ("o3-2025-04-16", 0.012 + 0.002 + 0.016),  # 2026-12-11
        ("gpt-5.4-nano-2026-03-17", 0.0012 + 0.00008 + 0.0025),  # 2027-04-01
    ],
)
def test_deprecated_models_are_still_billed(model: str, dollars: float) -> None:
    """A deprecated model is served until its end of life, and each call until then is billed:
    6,000 fresh input, 4,000 cached input and 2,000 output tokens at its list price."""
    usage = Usage(input_tokens=10_000, cached_input_tokens=4_000, output_tokens=2_000)
    table = PriceTable()
    assert table.cost("p", model, usage) == pytest.approx(dollars)
    assert table.unknown() == set()


def test_cached_tokens_never_exceed_input_tokens() -> None:
    """A provider reporting more cached than input tokens is not allowed to make input
    negative: the cached part is capped at the input."""
    usage = Usage(input_tokens=1_000, cached_input_tokens=5_000)
    assert PriceTable().cost("openai", "gpt-4o", usage) == pytest.approx(1_000 * 1.25 / 1e6)


def test_no_tokens_cost_nothing() -> None:
    assert PriceTable().cost("openai", "gpt-4o", Usage()) == 0.0


def test_an_unknown_model_costs_nothing_and_is_remembered() -> None:
    table = PriceTable()
    usage = Usage(input_tokens=1_000, output_tokens=1_000)
    assert table.cost("vllm", "my-finetune", usage) == 0.0
    assert table.cost("vllm", "my-finetune", usage) == 0.0
    assert table.cost("openai", "gpt-4o", usage) > 0
    assert table.unknown() == {"vllm:my-finetune"}
    assert table.lookup("vllm", "my-finetune") is None


def test_unknown_returns_a_copy() -> None:
    table = PriceTable()
    table.cost("x", "y", Usage())
    table.unknown().clear()
    assert table.unknown() == {"x:y"}


def test_lookup_alone_does_not_mark_a_model_unknown() -> None:
    table = PriceTable()
    assert table.lookup("x", "y") is None
    assert table.context_window("x", "y") is None
    assert table.unknown() == set()


def test_context_windows() -> None:
    table = PriceTable({"mine": Price(input=1, output=1, cached_input=1)})
    assert table.context_window("openai", "gpt-4.1-mini-2025-04-14") == 1_047_576
    assert table.context_window("openai", "gpt-5") == 272_000
    assert table.context_window("openai", "gpt-4o") == 128_000
    assert table.context_window("anthropic", "claude-haiku-4-5") == 200_000
    assert table.context_window("anthropic", "claude-opus-4-6") == 1_000_000
    assert table.context_window("openai", "gpt-5.5-2026-04-23") == 1_050_000
    assert table.context_window("openai", "gpt-6-sol") == 922_000
    assert table.context_window("openai", "gpt-5.4-nano") == 272_000
    assert table.context_window("vllm", "mine") is None


def test_cached_input_defaults_to_input_when_left_out() -> None:
    price = Price.model_validate({"input": 2.0, "output": 8.0})
    assert price.cached_input == 2.0
    assert price.context_window is None


@pytest.mark.parametrize(
    "data",
    [
        {"input": -1.0, "output": 1.0},
        {"input": 1.0, "output": 1.0, "cached_input": -0.5},
        {"input": 1.0, "output": 1.0, "context_window": 0},
        {"input": 1.0, "output": 1.0, "currency": "EUR"},
        {"input": "1.0", "output": 1.0},
    ],
)
def test_a_bad_price_is_refused(data: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Price.model_validate(data)


def test_the_builtin_table_cannot_be_changed() -> None:
    with pytest.raises(TypeError):
        BUILTIN_PRICES["gpt-4o"] = Price(input=0, output=0, cached_input=0)  # type: ignore[index]
