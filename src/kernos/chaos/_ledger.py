"""The shop's ledger: every execution of a tool beside the effect it had (see ``shop``).

Apart from ``shop`` so that the runner can read it without importing the agent."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import kernos

__all__ = ["effects", "ledger_path", "open_ledger", "record_execution"]


def ledger_path() -> Path:
    """The ledger's file: ``KERNOS_CHAOS_LEDGER``, or ``.kernos/chaos-ledger.db``."""
    return Path(os.environ.get("KERNOS_CHAOS_LEDGER", ".kernos/chaos-ledger.db"))


def open_ledger(path: Path | None = None) -> sqlite3.Connection:
    """The ledger, its tables created if need be (a scenario's workers share the file)."""
    path = path or ledger_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30)
    conn.executescript(
        "CREATE TABLE IF NOT EXISTS executions (tool TEXT NOT NULL, run_id TEXT NOT NULL, "
        "key TEXT NOT NULL, pid INTEGER NOT NULL, at REAL NOT NULL);"
        "CREATE TABLE IF NOT EXISTS refunds (key TEXT PRIMARY KEY, run_id TEXT NOT NULL, "
        "order_id TEXT NOT NULL, amount REAL NOT NULL);"
        "CREATE TABLE IF NOT EXISTS messages (run_id TEXT NOT NULL, order_id TEXT NOT NULL, "
        "text TEXT NOT NULL);"
    )
    return conn


def record_execution(conn: sqlite3.Connection, tool: str) -> str:
    """Record one execution of ``tool``; returns the call's idempotency key."""
    key = kernos.idempotency_key()
    run_id = key.split(":", 1)[0]
    conn.execute(
        "INSERT INTO executions VALUES (?, ?, ?, ?, ?)",
        (tool, run_id, key, os.getpid(), time.time()),
    )
    return key


def effects(path: Path | None = None) -> dict[str, Any]:
    """What the tools did, for the report: executions per tool and key, refunds and messages
    per run (a ledger that does not exist yet has done nothing)."""
    path = path or ledger_path()
    if not path.exists():
        return {"executions": [], "refunds": [], "messages": []}
    with open_ledger(path) as conn:
        executions = conn.execute(
            "SELECT tool, run_id, key, COUNT(*) FROM executions GROUP BY tool, run_id, key"
        ).fetchall()
        refunds = conn.execute("SELECT run_id, order_id, amount, key FROM refunds").fetchall()
        messages = conn.execute("SELECT run_id, order_id FROM messages").fetchall()
    return {
        "executions": [{"tool": t, "run_id": r, "key": k, "count": n} for t, r, k, n in executions],
        "refunds": [{"run_id": r, "order_id": o, "amount": a, "key": k} for r, o, a, k in refunds],
        "messages": [{"run_id": r, "order_id": o} for r, o in messages],
    }
