"""``budget_report``: spend against each configured budget this period, the one computation
behind ``kernos budgets`` and ``GET /v1/budgets``."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
from _cli_support import kernos_async

from kernos.governance import Budget, budget_report, load_budgets
from kernos.kernel import Client
from kernos.store import BudgetCharge

NOW = 1_750_000_000.0  # 2025-06-15T15:06:40Z
TOML = """
[[budgets]]
name = "acme-daily"
per = "tenant"
match = "acme"
period = "day"
usd = 5.0

[[budgets]]
name = "run-tokens"
per = "run"
period = "run"
tokens = 10000
on_exceed = "fail"
"""


async def charge(
    client: Client, budget: Budget, key: str, usd: float, tokens: int, *, at: float
) -> None:
    """Spend as a settled call leaves it: reserved, then settled with the real cost."""
    reserved = [
        BudgetCharge(
            budget=budget.name,
            key=key,
            period_start=budget.period_start(at),
            limit_usd=budget.usd,
            limit_tokens=budget.tokens,
            usd=0.01,
            tokens=10,
        )
    ]
    assert (await client.store.reserve_budget(reserved)).ok
    await client.store.settle_budget(reserved, usd=usd, tokens=tokens)


async def test_lines_are_this_periods_spend_of_configured_budgets(
    client: Client, tmp_path: Path
) -> None:
    (tmp_path / "kernos.toml").write_text(TOML)
    daily, per_run = load_budgets(tmp_path / "kernos.toml")
    await charge(client, daily, "acme", 1.25, 800, at=NOW)
    await charge(client, daily, "acme", 9.0, 9000, at=NOW - 86_400)  # yesterday: not counted
    await charge(client, per_run, "run-1", 0.5, 2500, at=NOW)
    gone = Budget(name="removed", per="agent", usd=1.0)
    await charge(client, gone, "echo", 0.5, 100, at=NOW)  # no longer configured

    lines = await budget_report(client.store, [daily, per_run], now=NOW)

    assert [(x.budget, x.key) for x in lines] == [("acme-daily", "acme"), ("run-tokens", "run-1")]
    acme, run = lines
    assert (acme.spent_usd, acme.spent_tokens, acme.left_usd, acme.left_tokens) == (
        1.25,
        800,
        3.75,
        None,
    )
    assert (acme.period_start, acme.period_end) == (1_749_945_600.0, 1_750_032_000.0)
    assert (run.per, run.period, run.period_start, run.period_end) == ("run", "run", 0.0, None)
    assert (run.left_usd, run.left_tokens, run.on_exceed) == (None, 7500, "fail")
    assert await budget_report(client.store, [], now=NOW) == []


async def test_reservations_of_calls_in_flight_count_against_what_is_left(
    client: Client,
) -> None:
    budget = Budget(name="daily", per="tenant", usd=2.0, tokens=1000)
    held = BudgetCharge("daily", "acme", budget.period_start(NOW), 2.0, 1000, 0.5, 300)
    assert (await client.store.reserve_budget([held])).ok
    [line] = await budget_report(client.store, [budget], now=NOW)
    assert (line.reserved_usd, line.reserved_tokens, line.spent_usd) == (0.5, 300, 0.0)
    assert (line.left_usd, line.left_tokens) == (1.5, 700)


async def test_kernos_budgets_prints_the_same_figures(
    client: Client, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = tmp_path / "kernos.toml"
    toml.write_text(TOML)
    monkeypatch.setenv("KERNOS_CONFIG", str(toml))
    daily, per_run = load_budgets(toml)
    await charge(client, daily, "acme", 1.25, 800, at=__import__("time").time())
    as_json = await kernos_async(db_url, "budgets", "--json")
    assert as_json.returncode == 0, as_json.stderr
    [line] = await budget_report(client.store, [daily, per_run])
    assert json.loads(as_json.stdout) == [asdict(line)]
    table = await kernos_async(db_url, "budgets")
    assert table.returncode == 0, table.stderr
    assert "tenant acme" in table.stdout and "$3.7500" in table.stdout
    monkeypatch.setenv("KERNOS_CONFIG", str(tmp_path / "none.toml"))
    (tmp_path / "none.toml").write_text("")
    empty = await kernos_async(db_url, "budgets")
    assert "no budgets: add [[budgets]]" in empty.stdout
