"""Long-term memory on both backends (issue #6, section 4): the store's half of ``ctx.memory``.

The same assertions on SQLite (FTS5) and PostgreSQL (tsvector + GIN): only what both full-text
engines do is promised, and each promise of ``Store.search_memory`` has a test that tries to
break it.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from kernos.errors import InvalidInput
from kernos.store import (
    LATEST_VERSION,
    MemoryHit,
    NewMemory,
    RunState,
    SqlStore,
    new_run_id,
    open_store,
)

NS = "notes"
MAX_PAYLOAD = 64 * 1024
#: unrelated memories, so that the words a test searches for are rare (as they are in real use:
#: full-text ranking weighs a word by how few memories hold it)
FILLER = [
    "the weekly report is due on friday afternoon",
    "remember to water the plants in the office",
    "the printer on floor three needs toner",
    "lunch with the design team moved to noon",
    "quarterly numbers look better than expected",
    "parking garage closes early during holidays",
]


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[SqlStore]:
    s = open_store(db_url, max_payload=MAX_PAYLOAD)
    await s.migrate()
    try:
        yield s
    finally:
        await s.close()


async def put(store: SqlStore, text: str, namespace: str = NS, **kw: Any) -> str:
    return (await store.put_memory(NewMemory(namespace=namespace, text=text, **kw))).id


async def fill(store: SqlStore, namespace: str = NS) -> None:
    for text in FILLER:
        await put(store, text, namespace)


def texts(hits: list[MemoryHit]) -> list[str]:
    return [h.memory.text for h in hits]


def table_rows(store: SqlStore) -> int:
    with store.dialect.read() as tx:
        row = tx.fetchone("SELECT COUNT(*) FROM kernos_memories")
    assert row is not None
    return int(row[0])


# -- put and search ----------------------------------------------------------------------------


async def test_put_then_search_returns_what_was_put(store: SqlStore) -> None:
    run_id = new_run_id()
    put_back = await store.put_memory(
        NewMemory(
            namespace=NS,
            text="The user's favourite colour is teal",
            metadata={"source": "chat", "turn": 3, "tags": ["pref", "colour"], "é": {"x": None}},
            tenant="acme",
            run_id=run_id,
        )
    )
    assert put_back.id and put_back.created_at > 0
    hits = await store.search_memory(NS, "favourite colour", tenant="acme")
    assert len(hits) == 1
    assert hits[0].memory == put_back
    assert hits[0].memory.metadata == {
        "source": "chat",
        "turn": 3,
        "tags": ["pref", "colour"],
        "é": {"x": None},
    }
    assert hits[0].memory.run_id == run_id and hits[0].memory.embedding is None
    assert isinstance(hits[0].score, float)
    assert await store.count_memories(NS, tenant="acme") == 1


async def test_a_memory_holding_more_of_the_query_ranks_first(store: SqlStore) -> None:
    await fill(store)
    await put(store, "deploy the billing service")
    both = await put(store, "the billing service deploy failed on kubernetes")
    await put(store, "kubernetes upgrade scheduled")
    hits = await store.search_memory(NS, "kubernetes billing deploy", k=10)
    assert hits[0].memory.id == both
    assert set(texts(hits)) == {
        "deploy the billing service",
        "the billing service deploy failed on kubernetes",
        "kubernetes upgrade scheduled",
    }
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)


async def test_search_ignores_case_and_matches_word_stems(store: SqlStore) -> None:
    """What both engines do: case folding and English stemming (running -> run, cats -> cat).
    (Stop words and diacritics differ between them and are not promised.)"""
    await fill(store)
    await put(store, "Alice was RUNNING late because of her Cats")
    assert texts(await store.search_memory(NS, "run")) == [
        "Alice was RUNNING late because of her Cats"
    ]
    assert len(await store.search_memory(NS, "CAT alice")) == 1
    assert await store.search_memory(NS, "dog") == []


async def test_unicode_words_are_found(store: SqlStore) -> None:
    await fill(store)
    await put(store, "meeting in 東京 at the naïve café")
    assert texts(await store.search_memory(NS, "東京")) == ["meeting in 東京 at the naïve café"]
    assert len(await store.search_memory(NS, "naïve")) == 1


async def test_tenants_never_see_each_others_memories(store: SqlStore) -> None:
    """A search with tenant X never returns tenant Y's memories; None is a tenant of its own."""
    owners: dict[str | None, str] = {}
    for tenant in (None, "acme", "zeta"):
        owners[tenant] = await put(store, f"secret launch plan of {tenant}", tenant=tenant)
    for tenant in (None, "acme", "zeta"):
        hits = await store.search_memory(NS, "secret launch plan", k=10, tenant=tenant)
        assert [h.memory.id for h in hits] == [owners[tenant]]
        assert hits[0].memory.tenant == tenant
        assert await store.count_memories(NS, tenant=tenant) == 1
    assert await store.search_memory(NS, "secret", tenant="nobody") == []


async def test_namespaces_are_separate(store: SqlStore) -> None:
    mine = await put(store, "the api key rotates monthly", namespace="agent-a")
    await put(store, "the api key rotates weekly", namespace="agent-b")
    hits = await store.search_memory("agent-a", "api key rotates", k=10)
    assert [h.memory.id for h in hits] == [mine]
    assert await store.count_memories("agent-a") == 1
    assert await store.search_memory("agent-c", "api key") == []


async def test_metadata_filter_matches_top_level_values_exactly(store: SqlStore) -> None:
    """Exact match per key: numbers by value (1 == 1.0), never across JSON types."""
    meta: list[dict[str, Any]] = [
        {"kind": "pref", "n": 1, "flag": True, "gone": None},
        {"kind": "fact", "n": 1.5, "flag": False},
        {"kind": "pref", "n": "1", "flag": 1},
        {"kind": "pref", "weird key.$[0]": "yes"},
    ]
    ids = [await put(store, f"coffee note {i}", metadata=m) for i, m in enumerate(meta)]

    async def found(**filters: Any) -> set[int]:
        hits = await store.search_memory(NS, "coffee", k=10, metadata=filters)
        return {ids.index(h.memory.id) for h in hits}

    assert await found(kind="pref") == {0, 2, 3}
    assert await found(kind="pref", n=1) == {0}
    assert await found(n=1.0) == {0}
    assert await found(n="1") == {2}
    assert await found(n=1.5) == {1}
    assert await found(flag=True) == {0}
    assert await found(flag=1) == {2}
    assert await found(flag=False) == {1}
    assert await found(gone=None) == {0}
    assert await found(missing="x") == set()
    assert await found(**{"weird key.$[0]": "yes"}) == {3}
    assert await found() == {0, 1, 2, 3}
    for bad in ({"kind": ["pref"]}, {"kind": {"a": 1}}, {"n": math.nan}, {'a"b': 1}, {"": 1}):
        with pytest.raises(InvalidInput):
            await store.search_memory(NS, "coffee", metadata=bad)


HOSTILE_QUERIES = [
    '"',
    '"unterminated',
    "*",
    "coffee*",
    "AND OR NOT",
    "NOT coffee",
    "NEAR(",
    "NEAR(coffee tea, 2)",
    "col:x",
    "text:coffee",
    "'); drop table kernos_memories; --",
    "a & b | !c <-> d",
    "^coffee + -tea",
    "",
    "   ",
    "\x00",
    "\ud800 lone surrogate",
    "☕ 東京 ñandú 🙂",
    "((((((((",
    "\\",
    "coffee " * 2000,
    "x" * 10_000,
    " ".join(f"w{i}" for i in range(2000)),
]


@pytest.mark.parametrize("query", HOSTILE_QUERIES, ids=range(len(HOSTILE_QUERIES)))
async def test_hostile_queries_never_raise(store: SqlStore, query: str) -> None:
    """The query is user text: no FTS5 or tsquery syntax in it can make the search fail."""
    await fill(store)
    await put(store, "coffee and tea: not near the text column")
    hits = await store.search_memory(NS, query, k=5)
    assert all(h.memory.namespace == NS for h in hits)
    assert len(await store.search_memory(NS, query, k=5, metadata={"k": "v"})) == 0


@pytest.mark.parametrize("query", ["", "   ", "?!", '"', "*", "((", "--", "…"])
async def test_a_query_without_words_finds_nothing(store: SqlStore, query: str) -> None:
    await fill(store)
    assert await store.search_memory(NS, query) == []


async def test_operators_in_a_query_are_plain_words(store: SqlStore) -> None:
    """``NOT coffee`` finds coffee (NOT is no operator), ``text:coffee`` does not name a
    column, ``coffee*`` is no prefix search."""
    await fill(store)
    await put(store, "coffee is ready")
    await put(store, "coffeemaker is broken")
    assert texts(await store.search_memory(NS, "NOT coffee")) == ["coffee is ready"]
    assert texts(await store.search_memory(NS, "text:coffee")) == ["coffee is ready"]
    assert texts(await store.search_memory(NS, "coffee*")) == ["coffee is ready"]


async def test_k_bounds(store: SqlStore) -> None:
    for i in range(12):
        await put(store, f"status update number {i}")
    assert len(await store.search_memory(NS, "status", k=1)) == 1
    assert len(await store.search_memory(NS, "status")) == 5
    assert len(await store.search_memory(NS, "status", k=100)) == 12
    for k in (0, -1, 101):
        with pytest.raises(InvalidInput, match="k="):
            await store.search_memory(NS, "status", k=k)


def _bad_inputs() -> list[tuple[str, dict[str, Any]]]:
    ok: dict[str, Any] = {"namespace": NS, "text": "a fact"}
    return [
        ("empty namespace", {**ok, "namespace": ""}),
        ("blank namespace", {**ok, "namespace": "  "}),
        ("long namespace", {**ok, "namespace": "n" * 257}),
        ("empty text", {**ok, "text": ""}),
        ("blank text", {**ok, "text": " \n\t"}),
        ("oversize text", {**ok, "text": "word " * (MAX_PAYLOAD // 5 + 1)}),
        ("NUL in text", {**ok, "text": "a\x00b"}),
        ("lone surrogate", {**ok, "text": "a\ud800b"}),
        ("empty tenant", {**ok, "tenant": ""}),
        ("metadata not an object", {**ok, "metadata": ["a"]}),
        ("metadata not JSON", {**ok, "metadata": {"x": object()}}),
        ("metadata non-string key", {**ok, "metadata": {1: "a"}}),
        ("metadata tuple", {**ok, "metadata": {"x": (1, 2)}}),
        ("metadata NaN", {**ok, "metadata": {"x": math.nan}}),
        ("metadata NUL", {**ok, "metadata": {"x": "a\x00"}}),
        ("metadata oversize", {**ok, "metadata": {"x": "y" * MAX_PAYLOAD}}),
        ("embedding empty", {**ok, "embedding": []}),
        ("embedding NaN", {**ok, "embedding": [1.0, math.nan]}),
        ("embedding zeros", {**ok, "embedding": [0.0, 0.0]}),
        ("embedding strings", {**ok, "embedding": ["a", "b"]}),
        ("embedding oversize", {**ok, "embedding": [1.0] * (MAX_PAYLOAD // 8 + 1)}),
    ]


@pytest.mark.parametrize(("case", "fields"), _bad_inputs(), ids=[c for c, _ in _bad_inputs()])
async def test_bad_input_is_rejected_and_stores_nothing(
    store: SqlStore, case: str, fields: dict[str, Any]
) -> None:
    """Guarantee 7: a rejected request changes no state."""
    with pytest.raises(InvalidInput):
        await store.put_memory(NewMemory(**fields))
    assert table_rows(store) == 0


async def test_search_rejects_a_malformed_call(store: SqlStore) -> None:
    for namespace in ("", "n" * 257, "a\x00"):
        with pytest.raises(InvalidInput):
            await store.search_memory(namespace, "x")
    with pytest.raises(InvalidInput):
        await store.search_memory(NS, "x", tenant="")
    with pytest.raises(InvalidInput):
        await store.search_memory(NS, "x", embedding=[math.inf])


# -- embeddings --------------------------------------------------------------------------------


async def test_an_embedding_finds_a_memory_without_shared_words(store: SqlStore) -> None:
    """With embeddings, RRF fuses the full-text and cosine rankings: a memory that shares no
    word with the query but lies near it in embedding space is found."""
    await fill(store)
    cat = await put(store, "the cat sat on the mat", embedding=[1.0, 0.0, 0.0])
    feline = await put(store, "a feline dozes on a rug", embedding=[0.9, 0.2, 0.0])
    await put(store, "stock prices fell sharply", embedding=[0.0, 1.0, 0.0])
    await put(store, "an opposite thought", embedding=[-1.0, 0.0, 0.0])
    await put(store, "a different model's vector", embedding=[1.0, 0.0])
    without = await store.search_memory(NS, "cat", k=5)
    assert [h.memory.id for h in without] == [cat]
    hits = await store.search_memory(NS, "cat", k=5, embedding=[1.0, 0.05, 0.0])
    ids = [h.memory.id for h in hits]
    assert ids[:2] == [cat, feline]  # cat: both rankings; feline: the nearer of the rest
    assert "an opposite thought" not in texts(hits)  # cosine < 0 is not near
    assert "a different model's vector" not in texts(hits)  # other dimension: not compared
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    found = next(h.memory for h in hits if h.memory.id == feline)
    assert found.embedding == [0.9, 0.2, 0.0]


async def test_an_embedding_search_respects_tenant_and_filter(store: SqlStore) -> None:
    near = [1.0, 0.0]
    mine = await put(store, "alpha", tenant="t1", metadata={"k": 1}, embedding=near)
    await put(store, "beta", tenant="t2", metadata={"k": 1}, embedding=near)
    await put(store, "gamma", tenant="t1", metadata={"k": 2}, embedding=near)
    hits = await store.search_memory(NS, "zzz", tenant="t1", embedding=near, metadata={"k": 1})
    assert [h.memory.id for h in hits] == [mine]


async def test_embeddings_round_trip_exactly(store: SqlStore) -> None:
    rnd = random.Random(7)
    vector = [rnd.uniform(-1, 1) for _ in range(256)]
    put_back = await store.put_memory(NewMemory(namespace=NS, text="vec", embedding=vector))
    assert put_back.embedding == vector
    hits = await store.search_memory(NS, "vec", embedding=vector)
    assert hits[0].memory.embedding == vector


async def test_an_embedding_search_with_no_embedded_memories_is_full_text(store: SqlStore) -> None:
    await fill(store)
    await put(store, "only words here")
    hits = await store.search_memory(NS, "words", embedding=[0.3, 0.4])
    assert texts(hits) == ["only words here"]


# -- delete, count, schema -----------------------------------------------------------------------


async def test_delete_forgets_a_memory_and_its_index_entry(store: SqlStore) -> None:
    await fill(store)
    gone = await put(store, "temporary password is hunter2", embedding=[1.0, 0.0])
    kept = await put(store, "permanent password policy", embedding=[1.0, 0.0])
    assert await store.delete_memory(gone) is True
    assert await store.delete_memory(gone) is False
    assert await store.delete_memory("no-such-id") is False
    assert [h.memory.id for h in await store.search_memory(NS, "password hunter2")] == [kept]
    assert [h.memory.id for h in await store.search_memory(NS, "x", embedding=[1, 0])] == [kept]
    assert await store.count_memories(NS) == len(FILLER) + 1
    if store.backend == "sqlite":
        with store.dialect.write() as tx:  # the external-content index matches its table
            tx.execute(
                "INSERT INTO kernos_memories_fts (kernos_memories_fts, rank) "
                "VALUES ('integrity-check', 1)"
            )


async def test_upgrading_a_schema_3_database_adds_memory(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database made before memory existed (schema 3) migrates in place, runs intact."""
    from kernos.store import _schema, _sql

    monkeypatch.setattr(_sql, "MIGRATIONS", _schema.MIGRATIONS[:3])
    monkeypatch.setattr(_sql, "LATEST_VERSION", 3)
    old = open_store(db_url)
    try:
        assert (await old.migrate()).current == 3

        def insert_old_run() -> None:  # as code of schema 3 wrote it (today's code has more)
            with old.dialect.write() as tx:
                tx.execute(
                    "INSERT INTO kernos_runs (id, agent, agent_version, state, input, "
                    "created_at, updated_at, run_at, tenant) "
                    "VALUES ('r-old', 'a', '1', 'queued', '1', 1.0, 1.0, 1.0, 'acme')"
                )

        await asyncio.to_thread(insert_old_run)
    finally:
        await old.close()
    monkeypatch.undo()
    new = open_store(db_url)
    try:
        status = await new.migrate()
        assert status.current == LATEST_VERSION and status.up_to_date
        run = await new.get_run("r-old")
        assert run.state == RunState.QUEUED and run.tenant == "acme"
        await new.put_memory(NewMemory(namespace=NS, text="migrated and searchable"))
        assert texts(await new.search_memory(NS, "searchable")) == ["migrated and searchable"]
    finally:
        await new.close()


async def test_search_reads_the_full_text_index(store: SqlStore) -> None:
    """Full-text search goes through the FTS5 / GIN index, not a scan of the memories of the
    namespace (checked on the query plan, with statistics, as a running database has them)."""
    rnd = random.Random(3)
    rows = [
        (f"m{i}", NS, " ".join(f"w{rnd.randrange(50_000)}" for _ in range(20))) for i in range(5000)
    ]
    with store.dialect.write() as tx:
        tx.executemany(
            "INSERT INTO kernos_memories (id, namespace, text, metadata, created_at) "
            "VALUES (?, ?, ?, '{}', 0)",
            rows,
        )
        tx.execute("ANALYZE")
    from kernos.store._memory import query_terms

    terms = query_terms("w1 w2 zebra")
    ts = store.dialect.text_search(terms)
    sql = (
        f"SELECT m.id, {ts.score} AS score FROM {ts.source} WHERE {ts.condition} "
        "AND m.namespace = ? AND m.tenant IS NULL ORDER BY score DESC LIMIT 5"
    )
    explain = "EXPLAIN QUERY PLAN " if store.backend == "sqlite" else "EXPLAIN "
    with store.dialect.read() as tx:
        plan = "\n".join(str(r[-1]) for r in tx.fetchall(explain + sql, (*ts.params, NS)))
    if store.backend == "sqlite":
        assert "kernos_memories_fts VIRTUAL TABLE INDEX" in plan, plan
        assert "SCAN m" not in plan, plan
    else:
        assert "kernos_memories_tsv" in plan, plan
        assert "Seq Scan" not in plan, plan
    matching = {r[0] for r in rows if {"w1", "w2"} & set(r[2].split())}
    hits = await store.search_memory(NS, "w1 w2 zebra", k=100)
    assert {h.memory.id for h in hits} == matching and matching


async def test_postgres_refuses_a_text_too_large_for_its_index(pg_url: str) -> None:
    """PostgreSQL cannot build a tsvector over 1 MB: that is the caller's input, refused with
    ``InvalidInput`` (not retryable ``StoreUnavailable``), and nothing is stored."""
    import hashlib

    store = open_store(pg_url, max_payload=4 * 1024 * 1024)
    await store.migrate()
    try:
        text = " ".join(hashlib.md5(str(i).encode()).hexdigest() for i in range(40_000))
        with pytest.raises(InvalidInput, match="over a limit of PostgreSQL"):
            await store.put_memory(NewMemory(namespace=NS, text=text))
        assert table_rows(store) == 0
    finally:
        await store.close()


async def test_a_put_with_a_chosen_id_is_made_once(store: SqlStore) -> None:
    """A run's put made again after a crash (same ``<run_id>:<step>`` id) stores nothing more."""
    first = await store.put_memory(NewMemory(NS, "the customer prefers email", id="R1:4"))
    again = await store.put_memory(NewMemory(NS, "the customer prefers email", id="R1:4"))
    assert first.id == again.id == "R1:4"
    assert await store.count_memories(NS) == 1
    hits = await store.search_memory(NS, "email")
    assert [h.memory.id for h in hits] == ["R1:4"]
