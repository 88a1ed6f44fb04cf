"""``ctx.memory``: puts and searches journaled, replayed without touching the store again,
scoped to the run's tenant, and searchable by meaning when the worker has an embedder."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import kernos
from kernos.kernel import Client, Registry, output_of
from kernos.store import RunState
from kernos.testing import FAST, running_worker, wait_until


def register(registry: Registry) -> None:
    @kernos.agent("rememberer", registry=registry)
    async def rememberer(ctx: kernos.RunContext, job: dict[str, Any]) -> list[dict[str, Any]]:
        for text in job["remember"]:
            await ctx.memory.put("notes", text, {"source": "chat"})
        hits = await ctx.memory.search("notes", job["query"], k=2)
        if job.get("then_wait"):
            await ctx.wait_for_message("go")  # replays everything above from the journal
        return [{"text": h.memory.text, "score": h.score} for h in hits]


async def test_memory_calls_are_journaled_and_replayed(client: Client, registry: Registry) -> None:
    register(registry)
    job = {
        "remember": ["The customer prefers email.", "Order A-17 arrived broken.", "Likes tea."],
        "query": "broken order",
        "then_wait": True,
    }
    async with running_worker(client, registry, FAST, services={}):
        run = await client.start("rememberer", job, tenant="acme")
        await wait_until(lambda: _state(client, run.id, RunState.WAITING), timeout=15)
        await client.send(run.id, "go", None)
        done = await client.wait(run.id, timeout=15)
    assert done.state == RunState.COMPLETED, done.error
    hits = output_of(done)
    assert hits[0]["text"] == "Order A-17 arrived broken."
    assert await client.store.count_memories("notes", tenant="acme") == 3  # not put twice
    events = await client.journal(run.id)
    puts = [e for e in events if e.type == "memory_put"]
    assert [e.payload["text"] for e in puts] == job["remember"]
    search = next(e for e in events if e.type == "memory_search")
    assert search.payload["query"] == "broken order"
    assert [h["text"] for h in search.payload["hits"]] == [h["text"] for h in hits]


async def test_a_run_only_sees_its_tenants_memories(client: Client, registry: Registry) -> None:
    register(registry)
    async with running_worker(client, registry, FAST, services={}):
        a = await client.start(
            "rememberer", {"remember": ["acme secret plan"], "query": "plan"}, tenant="acme"
        )
        await client.wait(a.id, timeout=15)
        b = await client.start(
            "rememberer", {"remember": ["globex plan"], "query": "plan"}, tenant="globex"
        )
        done = await client.wait(b.id, timeout=15)
    assert [h["text"] for h in output_of(done)] == ["globex plan"]


class Letters:
    """A toy embedder: a vector of letter counts. Real ones call an embeddings API."""

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return [[float(t.lower().count(c)) for c in "abcdefghijklmnopqrstuvwxyz"] for t in texts]


async def test_an_embedder_finds_memories_without_shared_words(
    client: Client, registry: Registry
) -> None:
    register(registry)
    async with running_worker(client, registry, FAST, services={}, embedder=Letters()):
        run = await client.start(
            "rememberer", {"remember": ["zzz zzz", "aaa bbb"], "query": "zzzz"}
        )
        done = await client.wait(run.id, timeout=15)
    assert done.state == RunState.COMPLETED, done.error
    assert output_of(done)[0]["text"] == "zzz zzz"


async def _state(client: Client, run_id: str, state: RunState) -> bool:
    return (await client.get(run_id)).state == state
