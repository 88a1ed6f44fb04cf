"""Secrets planted in a run's input, a tool's output and error, and the model's replies never
reach the database (rows or file bytes), the logs, the CLI's output or the audit export: each
is redacted before anything is stored, and live code sees what replay will see."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from _cli_support import run_kernos
from _gateway_support import OA, config_for

import kernos
from kernos.agents import Agent
from kernos.gateway import default_services
from kernos.governance import Redactor
from kernos.kernel import Client, Registry, output_of
from kernos.sim import Reply, SimServer
from kernos.sim import ToolCall as Call
from kernos.store import RunState, SqlStore
from kernos.testing import FAST, running_worker

# Built by concatenation so that no secret-looking literal sits in the repository.
OPENAI_KEY = "sk-" + "proj-" + "Zq8Lm2Vx7Rt4Kp9Wn3Bc6Hd1Fg5Js0Ya"
AWS_KEY = "AKIA" + "Q3ZP7LM2X9TR4WNB"
GITHUB_TOKEN = "ghp_" + "x7Kq2Lm9Vn4Rt8Wp3Zs6Bd1Fh5Jc0Yg2Ea12"  # 36 after ghp_
SECRETS = (OPENAI_KEY, AWS_KEY, GITHUB_TOKEN)
ROOT = Path(__file__).resolve().parents[2]
TABLES = (
    "kernos_runs",
    "kernos_journal",
    "kernos_messages",
    "kernos_approvals",
    "kernos_audit",
    "kernos_memories",
)


def leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


async def database_text(client: Client) -> str:
    store = client.store
    assert isinstance(store, SqlStore)

    def dump() -> str:
        with store.dialect.read() as tx:
            return "\n".join(str(tx.fetchall(f"SELECT * FROM {t}", ())) for t in TABLES)

    return await asyncio.to_thread(dump)


def cli(db_url: str, *args: str) -> str:
    done = run_kernos(db_url, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


async def test_planted_secrets_reach_no_store_log_cli_or_export(
    client: Client,
    registry: Registry,
    kernos_sim: SimServer,
    db_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen_by_tool: list[str] = []

    @kernos.tool
    def fetch_credentials(service: str) -> str:
        """Fetch a service's credentials."""
        return f"credentials for {service}: aws_access_key_id={AWS_KEY}"

    @kernos.tool
    def rotate(key: str) -> str:
        """Rotate a key."""
        seen_by_tool.append(key)
        raise RuntimeError(f"rotation failed for {key}: vault sealed")

    Agent("ops", model=OA, tools=[fetch_credentials, rotate], registry=registry)
    kernos_sim.script(
        "oa",
        Reply(tool_calls=(Call(name="fetch_credentials", arguments={"service": "s3"}),)),
        Reply(tool_calls=(Call(name="rotate", arguments={"key": GITHUB_TOKEN}),)),
        Reply(text=f"Done. For the record the token was {GITHUB_TOKEN}."),
    )
    redactor = Redactor()
    client.redactor = redactor
    caplog.set_level(logging.DEBUG)
    services = default_services(config_for(kernos_sim))
    async with running_worker(client, registry, FAST, services=services, redactor=redactor):
        run = await client.start("ops", f"Use my key {OPENAI_KEY} and rotate what you find.")
        done = await client.wait(run.id, timeout=30)
    assert done.state == RunState.COMPLETED, done.error
    assert "[REDACTED:github_token]" in output_of(done)
    # the model's reply was redacted before the loop used it: live sees what replay will see
    assert seen_by_tool == ["[REDACTED:github_token]"]

    assert leaks(await database_text(client)) == []
    if db_url.startswith("sqlite:///"):
        path = Path(db_url.removeprefix("sqlite:///"))
        raw = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
        assert [s for s in SECRETS if s.encode() in raw] == []  # not even in the WAL
    assert leaks(caplog.text) == []
    for command in (
        ("trace", run.id, "--json"),
        ("inspect", run.id, "--json"),
        ("logs", run.id),
        ("trace", run.id),
        ("audit", "export"),
    ):
        assert leaks(cli(db_url, *command)) == [], command
    journal = await client.journal(run.id)
    texts = str([e.payload for e in journal])
    assert "[REDACTED:openai_key]" in str((await client.get(run.id)).input)
    assert "[REDACTED:aws_access_key]" in texts and "[REDACTED:github_token]" in texts
