"""Journals written straight into the store: runs with as many events as a test needs, in
the shapes a real run writes (LLM attempts that failed and fell back, answers, tool calls,
memory searches, steps), without a worker or a model."""

from __future__ import annotations

import time
from typing import Any

from kernos.store import Event, NewRun, RunState, Store, new_run_id

#: the agent of written runs: no worker has it, so none claims them but the writer
AGENT = ("written", "1")


def _events(start: int, count: int, t0: float, every: float) -> list[Event]:
    out: list[Event] = []
    for seq in range(start, start + count):
        at = t0 + seq * every
        step = seq // 5 + 1
        kind = seq % 5
        payload: dict[str, Any]
        if kind == 0:
            payload = {
                "n": 1, "provider": "oa", "model": "gpt-4.1-mini", "error_class": "rate_limited",
                "error": "429 slow down", "status": 429, "started_at": at - 0.2,
                "latency": 0.2, "delay": 0.1, "then": "retry",
                "usage": {"input_tokens": 0, "output_tokens": 0}, "cost": 0.0,
            }  # fmt: skip
            out.append(Event(seq, "llm_attempt", step, "chat", 1, payload, at, 0.2))
        elif kind == 1:
            payload = {
                "response": {
                    "text": f"answer {seq}", "tool_calls": [], "provider": "oa",
                    "model": "gpt-4.1-mini", "latency": 0.05, "attempts": 2, "cost": 0.001,
                    "usage": {"input_tokens": 100, "output_tokens": 20},
                }
            }  # fmt: skip
            out.append(Event(seq, "llm_completed", step, "chat", 2, payload, at, 0.05))
        elif kind == 2:
            payload = {"arguments": {"order": seq}, "result": f"looked up {seq}"}
            out.append(Event(seq, "tool_completed", step, "lookup", 1, payload, at, 0.01))
        elif kind == 3:
            payload = {"query": f"order {seq}", "k": 3, "metadata": None, "hits": []}
            out.append(Event(seq, "memory_search", step, "notes", 0, payload, at, 0.002))
        else:
            out.append(
                Event(seq, "step_completed", step, f"step-{seq}", 1, {"result": seq}, at, 0.001)
            )
    return out


async def written_run(
    store: Store,
    events: int,
    *,
    tenant: str = "acme",
    finish: bool = True,
    every: float = 0.01,
    batch: int = 1000,
) -> str:
    """A run of ``events`` journal events, completed unless ``finish`` is False (then it is
    left running, its lease held by the writer)."""
    run_id = new_run_id()
    await store.create_run(
        NewRun(id=run_id, agent=AGENT[0], agent_version=AGENT[1], input='"written"', tenant=tenant)
    )
    claims = await store.claim(
        worker_id="writer", agents=[AGENT], limit=1, lease_ttl=3600.0, agent_limits={}
    )
    claim = next(c for c in claims if c.run.id == run_id)
    t0 = time.time() - events * every
    for start in range(1, events + 1, batch):
        count = min(batch, events + 1 - start)
        await store.append(run_id, claim.token, _events(start, count, t0, every))
    if finish:
        await store.finish(
            run_id,
            claim.token,
            state=RunState.COMPLETED,
            events=[Event(events + 1, "run_completed", payload={})],
            output='"done"',
        )
    return run_id
