"""Long-term memory: the pure logic behind ``Store.put_memory`` and ``Store.search_memory``.

The SQL lives in ``_sql.py`` (and what differs between the two databases in the dialects); this
module holds what is the same on both: checking input, turning a user's query into plain search
terms, encoding embeddings, cosine similarity and the fusion of two rankings.

Search contract (both backends):

- A query is user text, never search syntax: it is cut into words (``\\w+``), each searched for
  literally, any one of them sufficing (OR); the more of them a memory holds (and the rarer
  they are), the higher it ranks. Only the first ``MAX_QUERY_TERMS`` distinct words count. A
  query without words finds nothing; no query can make the search raise.
- Words match case-insensitively and by stem (``running`` finds ``run``). PostgreSQL also
  drops English stop words and SQLite also folds diacritics (``café`` finds ``cafe``): rely on
  neither across backends.
- With an ``embedding``, the result fuses two rankings by reciprocal rank fusion (RRF, k=60):
  the full-text candidates and the memories nearest by cosine among the newest
  ``VECTOR_SCAN_LIMIT`` embedded memories of the namespace and tenant whose embedding has the
  query's dimension (older ones are reached by words only). Cosine is computed in Python: this
  is meant for namespaces of a few thousand embedded memories, not for a vector database.

Limits worth knowing:

- The full-text index spans all namespaces; a search finds the matches of its words, then keeps
  its namespace's (SQLite always; PostgreSQL when its statistics say so, else it reads the
  namespace's rows through the btree index). A tiny namespace searched for words that are
  common in a huge other one pays for the other's matches.
- The vector side reads up to ``VECTOR_SCAN_LIMIT`` embeddings per search (about 3 kB each at
  384 dimensions) and costs tens of milliseconds of CPU at that bound.
- PostgreSQL cannot index a text whose tsvector is over 1 MB (``InvalidInput``); SQLite can.
"""

from __future__ import annotations

import json
import math
import operator
import re
import sys
from array import array
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from kernos.errors import InvalidInput

#: at most this many hits per search
MAX_SEARCH_K = 100
#: distinct words of a query that are searched for; the rest are ignored
MAX_QUERY_TERMS = 32
#: embedded memories (newest first) a vector search compares the query's embedding against
VECTOR_SCAN_LIMIT = 2000
#: longest namespace or tenant name (they are index keys)
MAX_NAME_LENGTH = 256
#: RRF's constant: how much the first ranks weigh more than the next ones (Cormack et al., 2009)
RRF_K = 60

_WORD = re.compile(r"\w+")
_INT64 = 2**63

#: a top-level metadata value a search can filter on
Scalar = str | int | float | bool | None


def check_name(what: str, value: str) -> None:
    """Namespaces and tenants are index keys: short, non-empty, storable on both databases."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"the {what} of a memory must be a non-empty string, not {value!r}")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidInput(
            f"the {what} {value[:40]!r}... is {len(value)} characters, over the limit of "
            f"{MAX_NAME_LENGTH}; use a shorter name"
        )
    check_text(f"the {what} {value[:40]!r}", value)


def check_text(what: str, value: str) -> None:
    """Text both databases store unchanged: UTF-8 encodable, no NUL (PostgreSQL refuses it)."""
    if "\x00" in value:
        raise InvalidInput(f"{what} contains a NUL character, which PostgreSQL cannot store")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(f"{what} is not valid Unicode ({exc.reason}); fix its encoding") from exc


def encode_metadata(metadata: Mapping[str, Any]) -> str:
    """Metadata as compact JSON; refused unless it is a JSON object that reads back equal
    (no tuples, non-string keys, NaN), so that what a search returns is what was put."""
    if not isinstance(metadata, Mapping):
        raise InvalidInput(f"memory metadata must be a JSON object, not {type(metadata).__name__}")
    try:
        text = json.dumps(metadata, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"memory metadata is not JSON: {exc}") from exc
    if json.loads(text) != metadata:
        raise InvalidInput(
            "memory metadata does not survive JSON unchanged (non-string keys or tuples?); "
            "use plain dicts with string keys, lists, strings, numbers, booleans and None"
        )
    if "\\u0000" in text:
        raise InvalidInput("memory metadata contains a NUL character, which PostgreSQL refuses")
    check_text("memory metadata", text)
    return text


def check_filter(metadata: Mapping[str, Any]) -> list[tuple[str, Scalar]]:
    """A search's metadata filter: top-level keys, each equal to a JSON scalar.

    Numbers compare by value (``1`` matches ``1.0``), never across types (``True`` is not
    ``1``, ``"1"`` is not ``1``); ``None`` matches a key present with ``null``.
    """
    if not isinstance(metadata, Mapping):
        raise InvalidInput(f"a metadata filter must be a dict, not {type(metadata).__name__}")
    pairs: list[tuple[str, Scalar]] = []
    for key, value in metadata.items():
        if not isinstance(key, str) or not key or '"' in key:
            raise InvalidInput(
                f"cannot filter on metadata key {key!r}: keys must be non-empty strings "
                f"without double quotes"
            )
        check_text(f"the metadata filter key {key!r}", key)
        if isinstance(value, str):
            check_text(f"the metadata filter value of {key!r}", value)
        elif isinstance(value, bool) or value is None:
            pass
        elif isinstance(value, int):
            if not -_INT64 <= value < _INT64:
                raise InvalidInput(f"the metadata filter value of {key!r} is out of range")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise InvalidInput(f"the metadata filter value of {key!r} is not finite")
        else:
            raise InvalidInput(
                f"the metadata filter value of {key!r} is a {type(value).__name__}; a filter "
                f"matches a string, number, boolean or None exactly"
            )
        pairs.append((key, value))
    return pairs


def check_embedding(embedding: Sequence[float]) -> list[float]:
    """A usable embedding: finite numbers, not all zero (cosine needs a direction)."""
    if isinstance(embedding, str | bytes) or not isinstance(embedding, Sequence):
        raise InvalidInput(f"an embedding must be a list of floats, not {type(embedding)}")
    try:
        values = [float(v) for v in embedding]
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"an embedding must be a list of floats: {exc}") from exc
    if not values:
        raise InvalidInput("an embedding must not be empty")
    if not all(math.isfinite(v) for v in values):
        raise InvalidInput("an embedding holds NaN or infinity; check the model that made it")
    if not any(values):
        raise InvalidInput("an embedding of only zeros has no direction to compare by cosine")
    return values


def pack_embedding(values: Sequence[float]) -> bytes:
    """Little-endian float64s: exact round trip, and decoded far faster than JSON."""
    packed = array("d", values)
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tobytes()


def _floats(data: bytes) -> array[float]:
    values = array("d")
    values.frombytes(data)
    if sys.byteorder == "big":
        values.byteswap()
    return values


def unpack_embedding(data: bytes) -> list[float]:
    return _floats(data).tolist()


def query_terms(query: str) -> list[str]:
    """The words of a user's query, to be searched for literally: nothing in them is syntax.

    Distinct (case-insensitively), in order, at most ``MAX_QUERY_TERMS``.
    """
    seen: set[str] = set()
    terms: list[str] = []
    for match in _WORD.finditer(query):
        word = match.group()
        folded = word.casefold()
        if folded in seen:
            continue
        seen.add(folded)
        terms.append(word)
        if len(terms) == MAX_QUERY_TERMS:
            break
    return terms


def fts5_query(terms: Sequence[str]) -> str:
    """An FTS5 MATCH expression for any of ``terms``: each a quoted string, so that ``AND``,
    ``NEAR``, ``*``, ``col:`` and the like are words to find, never operators."""
    return " OR ".join('"' + term.replace('"', '""') + '"' for term in terms)


def norm(values: Sequence[float]) -> float:
    return math.sqrt(sum(map(operator.mul, values, values)))


def nearest(
    query: Sequence[float], rows: Iterable[tuple[int, bytes, float]], limit: int
) -> list[tuple[int, float]]:
    """The ``limit`` rows (key, packed embedding, its norm) most similar to ``query`` by
    cosine, best first; rows pointing away from it (cosine <= 0) are not near anything and
    are left out."""
    query_norm = norm(query)
    scored = []
    for key, data, row_norm in rows:
        similarity = sum(map(operator.mul, query, _floats(data))) / (query_norm * row_norm)
        if similarity > 0:
            scored.append((key, similarity))
    scored.sort(key=lambda pair: (-pair[1], -pair[0]))
    return scored[:limit]


def fuse(rankings: Sequence[Sequence[int]], limit: int) -> list[tuple[int, float]]:
    """Reciprocal rank fusion: each key scores ``sum(1 / (RRF_K + rank))`` over the rankings
    (best first, rank from 1) that hold it. Needs no common scale between bm25, ``ts_rank_cd``
    and cosine; ties go to the newer memory (the larger key)."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, key in enumerate(ranking, start=1):
            scores[key] = scores.get(key, 0.0) + 1.0 / (RRF_K + rank)
    fused = sorted(scores.items(), key=lambda pair: (-pair[1], -pair[0]))
    return fused[:limit]
