"""The cost ledger: per run, agent, tenant and model, read from the journal, in Python and CLI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _gateway_support import AN, OA, ConfigFactory

import kernos
from kernos.gateway import cost_report, default_services
from kernos.kernel import Client, Registry
from kernos.sim import Fault, SimServer
from kernos.store import RunState
from kernos.testing import FAST, running_worker

ROOT = Path(__file__).resolve().parents[2]


def register(registry: Registry) -> None:
    @kernos.agent("asker", registry=registry)
    async def asker(ctx: kernos.RunContext, route: str) -> float:
        answer = await ctx.llm(route, [{"role": "user", "content": "what does it cost?"}])
        return float(answer.cost)

    @kernos.agent("boss", registry=registry)
    async def boss(ctx: kernos.RunContext, _: Any) -> float:
        own = await ctx.llm(AN, [{"role": "user", "content": "plan the work, in detail"}])
        child = await ctx.spawn("asker", OA)
        return float(own.cost) + float(await child.result())


async def test_costs_by_tenant_agent_model_and_run(
    sim: SimServer,
    client: Client,
    registry: Registry,
    make_config: ConfigFactory,
    db_url: str,
) -> None:
    register(registry)
    sim.add_fault("oa", Fault(kind="overloaded", count=1))  # one failed attempt, journaled
    async with running_worker(client, registry, FAST, services=default_services(make_config())):
        boss = await client.start("boss", None, tenant="acme")
        solo = await client.start("asker", AN, tenant="zeta")
        done = [await client.wait(r.id, timeout=30) for r in (boss, solo)]
    assert [d.state for d in done] == [RunState.COMPLETED, RunState.COMPLETED], done
    boss_cost, solo_cost = (float(kernos.kernel.output_of(d)) for d in done)
    assert boss_cost > 0 and solo_cost > 0

    by_tenant = {line.key: line for line in await cost_report(client.store, by="tenant")}
    # the child's call is charged to its parent's tenant
    assert by_tenant["acme"].cost == pytest.approx(boss_cost)
    assert by_tenant["zeta"].cost == pytest.approx(solo_cost)
    assert by_tenant["acme"].events == 3  # two answers and one failed attempt

    by_agent = {line.key: line.cost for line in await cost_report(client.store, by="agent")}
    assert set(by_agent) == {"boss", "asker"}
    assert sum(by_agent.values()) == pytest.approx(boss_cost + solo_cost)

    by_model = {line.key: line for line in await cost_report(client.store, by="model")}
    assert set(by_model) == {"oa:gpt-4.1-mini", "an:claude-haiku-4-5"}
    assert by_model["an:claude-haiku-4-5"].input_tokens > 0

    by_run = {line.key for line in await cost_report(client.store, by="run")}
    assert {boss.id, solo.id} <= by_run and len(by_run) == 3

    # the same ledger from the command line
    shown = await asyncio.to_thread(kernos_cli, db_url, "costs", "--by", "tenant", "--json")
    lines = {line["key"]: line for line in json.loads(shown.stdout)}
    assert lines["acme"]["cost"] == pytest.approx(boss_cost)
    table = await asyncio.to_thread(kernos_cli, db_url, "costs", "--by", "model", "--since", "1h")
    assert "an:claude-haiku-4-5" in table.stdout and "total" in table.stdout

    # and the LLM calls read well in inspect, trace and logs
    inspect = await asyncio.to_thread(kernos_cli, db_url, "inspect", boss.id)
    assert "llm" in inspect.stdout and "completed" in inspect.stdout
    trace = await asyncio.to_thread(kernos_cli, db_url, "trace", boss.id)
    assert "llm_completed" in trace.stdout and "an:claude-haiku-4-5" in trace.stdout
    logs = await asyncio.to_thread(kernos_cli, db_url, "logs", solo.id)
    assert "llm_completed" in logs.stdout and "tokens" in logs.stdout
    child = next(r for r in (await client.runs(tenant="acme")) if r.agent == "asker")
    failed = await asyncio.to_thread(kernos_cli, db_url, "trace", child.id)
    assert "overloaded 503 -> retry in" in failed.stdout


def kernos_cli(db_url: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "kernos", *args],
        env={**os.environ, "KERNOS_DATABASE_URL": db_url, "COLUMNS": "160"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if ok:
        assert done.returncode == 0, done.stderr
    return done


def test_a_bad_grouping_or_since_is_a_usage_error(sqlite_url: str) -> None:
    for args, expected in (
        (["--by", "planet"], "--by 'planet' is not a grouping"),
        (["--since", "yesterday-ish"], "neither a duration"),
    ):
        done = kernos_cli(sqlite_url, "costs", *args, ok=False)
        assert done.returncode == 2, done.stderr
        assert expected in done.stderr


def test_tenant_names_are_checked() -> None:
    from kernos.kernel._client import check_tenant

    assert check_tenant(None) == "default"
    assert check_tenant("acme-corp.eu") == "acme-corp.eu"
    with pytest.raises(kernos.InvalidInput, match="not a valid name"):
        check_tenant("a b")
