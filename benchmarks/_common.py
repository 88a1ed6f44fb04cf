"""Shared plumbing of the benchmarks: backends, result rows, the table.

Nothing here imports kernos, so the peer benchmark (run with ``.bench-venv``'s python, where
kernos is not installed) shares it with ``run.py``.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STATE_DIR = ROOT / ".kernos"
PEERS_JSON = STATE_DIR / "bench-peers.json"
PG_BASE_URL = os.environ.get("KERNOS_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ("sqlite", "postgresql")


@dataclass(frozen=True, slots=True)
class Database:
    """One private database for one benchmark: a fresh SQLite file or a PostgreSQL schema."""

    backend: str
    url: str  # kernos URL
    path: str | None = None  # SQLite file
    schema: str | None = None  # PostgreSQL schema
    conninfo: str | None = None  # psycopg conninfo whose search_path is the schema


def pg_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_BASE_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except Exception:
        return False


@contextmanager
def database(backend: str, tag: str) -> Iterator[Database]:
    """A private, empty database for one measurement, removed afterwards."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix=f"kernos-bench-{tag}-", dir=_tmp_dir()) as d:
            path = os.path.join(d, "bench.db")
            yield Database("sqlite", f"sqlite:///{path}", path=path)
        return
    import psycopg

    schema = f"bench_{tag}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_BASE_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in PG_BASE_URL else "?"
    url = f"{PG_BASE_URL}{sep}options=-csearch_path%3D{schema}"
    try:
        yield Database("postgresql", url, schema=schema, conninfo=url)
    finally:
        with psycopg.connect(PG_BASE_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def _tmp_dir() -> str:
    """Benchmarks write to the repo's disk (.kernos/), not a tmpfs: fsync must cost what it costs."""
    d = STATE_DIR / "bench-tmp"
    d.mkdir(parents=True, exist_ok=True)
    return str(d)


@dataclass(slots=True)
class Row:
    """One line of the table.

    ``better`` says which way is good: "lower" (latency, memory) or "higher" (throughput).
    ``ratio`` is value / floor for latencies, value / floor-rate for throughputs.
    """

    bench: str
    backend: str
    system: str
    what: str
    value: float
    unit: str
    floor: float | None = None
    ratio: float | None = None
    target: str = ""
    ok: bool | None = None
    better: str = "lower"
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Row:
        return cls(**data)


def b_shape(runs: int, total: int) -> int:
    """Steps per run for (b) with ``runs`` concurrent runs: the same for kernos and the peers."""
    return min(total, 1000) if runs == 1 else max(total // runs, 10)


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        text = f"{value:,.0f}"
    elif abs(value) >= 100:
        text = f"{value:.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip()


def render(rows: list[Row], title: str) -> str:
    header = ("", "backend", "system", "measure", "value", "floor", "ratio", "target", "")
    lines = [
        (
            r.bench,
            r.backend,
            r.system,
            r.what,
            fmt(r.value, r.unit),
            fmt(r.floor, r.unit) if r.floor is not None else "-",
            f"{r.ratio:.2f}x" if r.ratio is not None else "-",
            r.target,
            {True: "ok", False: "MISS", None: ""}[r.ok],
        )
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines, strict=True)]
    out = [title, "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    for line in lines:
        out.append("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)))
    notes = [f"  [{r.bench}/{r.backend}/{r.system}] {r.note}" for r in rows if r.note]
    if notes:
        out.append("")
        out.extend(notes)
    return "\n".join(out)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start
