"""``ctx.memory``: long-term memory per namespace, every read and write a journaled step.

A put is journaled with what was stored; a search with its query and every hit, so replay
returns the same hits (the agent's next model call was built from them) and the trace shows
what the agent recalled and why. Memories belong to the run's tenant: a search never sees
another tenant's. Full-text search is the store's (SQLite FTS5, PostgreSQL full text); an
``Embedder`` given to the worker adds search by meaning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from kernos.errors import UsageError
from kernos.store import Memory, MemoryHit, NewMemory

if TYPE_CHECKING:
    from kernos.kernel._execution import Execution

#: the most hits one search returns (each is journaled whole)
MAX_K = 100


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors (an embeddings API, a local model). Optional: without one,
    memory is searched by its words."""

    async def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


@runtime_checkable
class Scrubber(Protocol):
    """Redacts secrets (and a tenant's personal data) from what is about to be stored: the
    governance layer's ``Redactor`` is one. Values come back as they were when clean."""

    def for_tenant(self, tenant: str | None) -> Scrubber: ...

    def json(self, value: Any) -> Any: ...

    def text(self, text: str) -> str: ...

    def json_text(self, text: str) -> str: ...


class RunMemory:
    """What ``ctx.memory`` is: puts and searches in the run's tenant, journaled."""

    def __init__(self, execution: Execution) -> None:
        self._x = execution

    async def put(
        self, namespace: str, text: str, metadata: Mapping[str, Any] | None = None
    ) -> str:
        """Remember ``text`` in ``namespace``; returns the memory's id.

        Made once: replay returns the recorded id without storing it again.
        """
        _check_namespace(namespace)
        if not isinstance(text, str) or not text.strip():
            raise UsageError("ctx.memory.put needs non-empty text to remember")
        return await self._x.memory_put(namespace, text, dict(metadata or {}))

    async def search(
        self,
        namespace: str,
        query: str,
        k: int = 5,
        *,
        metadata: Mapping[str, Any] | None = None,
    ) -> list[MemoryHit]:
        """The ``k`` memories of ``namespace`` that best match ``query``, best first.

        ``metadata`` keeps only memories whose metadata has those exact top-level values.
        Replay returns the hits the first execution got.
        """
        _check_namespace(namespace)
        if not isinstance(query, str):
            raise UsageError("ctx.memory.search needs a query string")
        if not 1 <= k <= MAX_K:
            raise UsageError(f"ctx.memory.search: k must be between 1 and {MAX_K}, not {k}")
        return await self._x.memory_search(namespace, query, k, dict(metadata or {}))


def _check_namespace(namespace: str) -> None:
    if not isinstance(namespace, str) or not namespace.strip():
        raise UsageError("a memory namespace must be a non-empty string, like 'customer:42'")


def hit_payload(hit: MemoryHit) -> dict[str, Any]:
    m = hit.memory
    return {
        "id": m.id,
        "text": m.text,
        "metadata": m.metadata,
        "score": hit.score,
        "created_at": m.created_at,
        "run_id": m.run_id,
    }


def hit_of(payload: Mapping[str, Any], namespace: str, tenant: str | None) -> MemoryHit:
    memory = Memory(
        id=str(payload["id"]),
        namespace=namespace,
        text=str(payload["text"]),
        metadata=dict(payload.get("metadata") or {}),
        tenant=tenant,
        run_id=payload.get("run_id"),
        embedding=None,
        created_at=float(payload.get("created_at") or 0.0),
    )
    return MemoryHit(memory=memory, score=float(payload["score"]))


def new_memory(
    namespace: str,
    text: str,
    metadata: dict[str, Any],
    *,
    tenant: str | None,
    run_id: str,
    embedding: list[float] | None,
    key: str,
) -> NewMemory:
    return NewMemory(
        id=key,
        namespace=namespace,
        text=text,
        metadata=metadata,
        tenant=tenant,
        run_id=run_id,
        embedding=embedding,
    )
