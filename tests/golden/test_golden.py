"""Golden histories: journals recorded by real runs, replayed against the current code.

A change to the kernel or an example agent that can no longer replay a journal written by an
earlier version fails here, before it strands runs in production (guarantees 1 and 8).
To record a new one, run the agent for real and save its journal (see refund_v1.json).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from kernos.kernel import REGISTRY, Client, Worker, WorkerConfig, connect, output_of
from kernos.store import Event, RunState, SqlStore

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
GOLDEN = sorted(HERE.glob("*.json"))


def _load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


async def _plant(client: Client, golden: dict[str, Any]) -> str:
    """Put the recorded run, minus its ending, into a fresh database, ready to be claimed."""
    store = client.store
    assert isinstance(store, SqlStore)
    events = [Event(**e) for e in golden["events"] if not e["type"].startswith("run_completed")]
    with store.dialect.write() as tx:
        tx.execute(
            "INSERT INTO kernos_runs (id, agent, agent_version, state, input, priority, "
            "created_at, updated_at, run_at, lease_token, claims) "
            "VALUES (?, ?, ?, 'queued', ?, 0, 0, 0, 0, 10, 3)",
            (golden["run_id"], golden["agent"], golden["version"], json.dumps(golden["input"])),
        )
        for ev in events:
            tx.execute(
                "INSERT INTO kernos_journal (run_id, seq, type, step, name, attempt, payload, "
                "created_at, duration) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    golden["run_id"],
                    ev.seq,
                    ev.type,
                    ev.step,
                    ev.name,
                    ev.attempt,
                    json.dumps(ev.payload),
                    ev.created_at,
                    ev.duration,
                ),
            )
    return str(golden["run_id"])


@pytest.mark.parametrize("path", GOLDEN, ids=[p.stem for p in GOLDEN])
async def test_recorded_journal_replays_to_the_recorded_output(
    path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    __import__("examples.refund")
    assert "examples" in sys.modules
    golden = _load(path)
    client = await connect(db_url, registry=REGISTRY)
    try:
        run_id = await _plant(client, golden)
        worker = Worker(client.store, REGISTRY, WorkerConfig(poll_interval=0.05))
        import asyncio

        task = asyncio.create_task(worker.run())
        done = await client.wait(run_id, timeout=20)
        worker.stop()
        await task
        assert done.state == RunState.COMPLETED, done.error
        assert output_of(done) == golden["output"]
        replayed = await client.journal(run_id)
        live = [e.type for e in replayed[len(golden["events"]) - 1 :]]
        assert live == ["run_claimed", "run_completed"], "replay must not re-run any step"
    finally:
        await client.close()
