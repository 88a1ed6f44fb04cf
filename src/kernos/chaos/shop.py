"""The shop the chaos scenarios run: ACME's support agent, with tools whose effects are counted.

It is the support agent of ``examples/support.py`` (order lookups and refunds, a large refund
held for a person by policy), packaged so that ``kernos chaos`` runs from any installation. Its
tools write to a ledger (a SQLite file named by ``KERNOS_CHAOS_LEDGER``) that records every
*execution* of a tool beside the *effect* it had, because that difference is what the scenario
measures:

- ``lookup_order`` is a read, declared idempotent: running it twice is harmless, and the
  report counts the repeats only as information;
- ``issue_refund`` changes money: it keys the refund by ``kernos.idempotency_key()``, so a call
  repeated after a crash finds its refund made. Two refunds for one conversation is a
  *duplicate effect*, and the scenario fails on any;
- ``notify_customer`` sends a message without a key, on purpose: the report shows how often an
  unkeyed effect ran twice (at-least-once delivery), the cost of a tool that does not use the
  key it is given.

A conversation's model replies come from the provider simulator's ``plan`` model, which plays
the plan the customer's message carries (``conversation`` builds both), so each conversation
is decided by its input and any number run at once.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Literal

import kernos
from kernos.sim import PLAN_MARKER

__all__ = [
    "LARGE_REFUND",
    "ORDERS",
    "Kind",
    "conversation",
    "effects",
    "issue_refund",
    "ledger_path",
    "lookup_order",
    "notify_customer",
    "support",
]

#: the shop's orders
ORDERS: dict[str, dict[str, Any]] = {
    "A-17": {"status": "delivered", "total": 42.5, "currency": "EUR", "items": ["kettle"]},
    "B-2": {"status": "in transit", "total": 12.0, "currency": "EUR", "items": ["filters"]},
    "C-9": {
        "status": "delivered",
        "total": 310.0,
        "currency": "EUR",
        "items": ["espresso machine"],
    },
}

#: refunds above this many EUR wait for a person (the policy ``kernos chaos`` writes)
LARGE_REFUND = 100.0

#: what a conversation is about: a question, a refund, or a refund a person must approve
Kind = Literal["question", "refund", "large_refund"]


def ledger_path() -> Path:
    """The ledger's file: ``KERNOS_CHAOS_LEDGER``, or ``.kernos/chaos-ledger.db``."""
    return Path(os.environ.get("KERNOS_CHAOS_LEDGER", ".kernos/chaos-ledger.db"))


def _ledger() -> sqlite3.Connection:
    path = ledger_path()
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


def _executed(conn: sqlite3.Connection, tool: str) -> str:
    """Record one execution of ``tool``; returns the call's idempotency key."""
    key = kernos.idempotency_key()
    run_id = key.split(":", 1)[0]
    conn.execute(
        "INSERT INTO executions VALUES (?, ?, ?, ?, ?)",
        (tool, run_id, key, os.getpid(), time.time()),
    )
    return key


def effects() -> dict[str, Any]:
    """What the tools did, for the report: executions per tool and key, refunds and messages
    per run (a ledger that does not exist yet has done nothing)."""
    if not ledger_path().exists():
        return {"executions": [], "refunds": [], "messages": []}
    with _ledger() as conn:
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


@kernos.tool(idempotent=True, timeout=10)
def lookup_order(order_id: str) -> dict[str, Any]:
    """Look up an order: its status, total and items.

    Args:
        order_id: The order's id, like A-17.
    """
    order = ORDERS.get(order_id.strip().upper())
    with _ledger() as conn:
        _executed(conn, "lookup_order")
    if order is None:
        raise LookupError(f"no order {order_id!r}; order ids look like A-17")
    return {"order_id": order_id.strip().upper(), **order}


@kernos.tool(timeout=10)
def issue_refund(order_id: str, amount: float, reason: str) -> dict[str, Any]:
    """Refund a customer. Only for delivered orders, at most the order's total.

    Args:
        order_id: The order to refund.
        amount: How much, in the order's currency.
        reason: Why, in a few words, for the accounts team.
    """
    order = ORDERS.get(order_id.strip().upper())
    if order is None:
        raise LookupError(f"no order {order_id!r}")
    if order["status"] != "delivered":
        raise ValueError(f"order {order_id} is {order['status']}; only delivered orders refund")
    if not 0 < amount <= order["total"]:
        raise ValueError(f"the amount must be between 0 and {order['total']}, not {amount}")
    with _ledger() as conn:  # the same key twice is one refund: the effect happens once
        key = _executed(conn, "issue_refund")
        conn.execute(
            "INSERT OR IGNORE INTO refunds VALUES (?, ?, ?, ?)",
            (key, key.split(":", 1)[0], order_id.strip().upper(), amount),
        )
    return {"refund_id": key, "order_id": order_id, "amount": amount, "currency": order["currency"]}


@kernos.tool(timeout=10)
def notify_customer(order_id: str, text: str) -> str:
    """Send the customer a message about their order (an e-mail, in a real shop).

    Args:
        order_id: The order the message is about.
        text: The message.
    """
    with _ledger() as conn:  # no key: a repeat after a crash sends the message again
        key = _executed(conn, "notify_customer")
        conn.execute(
            "INSERT INTO messages VALUES (?, ?, ?)", (key.split(":", 1)[0], order_id, text)
        )
    return "sent"


support = kernos.Agent(
    name="support",
    model="support",  # a route in the kernos.toml that the scenario writes
    instructions=(
        "You help customers of ACME with their orders and refunds. Look an order up before "
        "you say anything about it. Refund only delivered orders, and say what you refunded."
    ),
    tools=[lookup_order, issue_refund, notify_customer],
    max_turns=10,
    tool_budget=8,
)


def conversation(kind: Kind) -> dict[str, str]:
    """A customer's first message (the run's input), with the plan the simulated model plays."""
    if kind == "question":
        text = "Where is my order B-2?"
        plan: list[dict[str, Any]] = [
            {"tool": "lookup_order", "arguments": {"order_id": "B-2"}},
            {"text": "Your filters (order B-2) are in transit."},
        ]
    else:
        order, amount = ("A-17", 42.5) if kind == "refund" else ("C-9", 310.0)
        item = ORDERS[order]["items"][0]
        text = f"My {item} (order {order}) arrived broken. Can I have my money back?"
        plan = [
            {"tool": "lookup_order", "arguments": {"order_id": order}},
            {
                "tool": "issue_refund",
                "arguments": {"order_id": order, "amount": amount, "reason": "arrived broken"},
            },
            {
                "tool": "notify_customer",
                "arguments": {"order_id": order, "text": f"We refunded {amount:.2f} EUR."},
            },
            {"text": f"I refunded {amount:.2f} EUR for order {order}."},
        ]
    return {"message": f"{text}\n\n{PLAN_MARKER} {json.dumps(plan)}"}
