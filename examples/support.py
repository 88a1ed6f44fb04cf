"""ACME's customer-support agent: a declarative ``kernos.Agent`` with tools that change things.

    kernos sim &                                   # the provider simulator (or real keys)
    kernos worker --app examples.support           # with a kernos.toml routing "support"
    kernos run support --app examples.support --input '"Where is my order A-17?"' --wait
    kernos send RUN user "Please refund it, it arrived broken."

Every model call and tool call is a journaled step: kill the worker mid-conversation and the
next one resumes at the same turn without refunding anything twice. The billing tools come
from an MCP server (examples/billing_server.py) that the worker starts and restarts. ``issue_refund`` shows how
a tool makes its effect exactly-once: it keys the refund by ``kernos.idempotency_key()``, which
is the same on every attempt and after every crash, so a repeated call finds the refund made.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import kernos

#: the shop's orders (a real agent would call the order service)
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


def ledger_path() -> Path:
    """Where refunds are recorded: ``KERNOS_ACME_DB`` or ``.kernos/acme.db``."""
    return Path(os.environ.get("KERNOS_ACME_DB", ".kernos/acme.db"))


def _confirmation_seconds() -> float:
    """How long a refund waits for the payment provider's confirmation once it is sent:
    ``KERNOS_ACME_CONFIRM_SECONDS``, 0 by default (``make demo`` kills a worker meanwhile)."""
    return float(os.environ.get("KERNOS_ACME_CONFIRM_SECONDS", "0"))


def _ledger() -> sqlite3.Connection:
    path = ledger_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=10)
    conn.execute(
        "CREATE TABLE IF NOT EXISTS refunds (idempotency_key TEXT PRIMARY KEY, "
        "order_id TEXT NOT NULL, amount REAL NOT NULL, reason TEXT NOT NULL)"
    )
    return conn


def refunds() -> list[dict[str, Any]]:
    """Every refund made, for the demo and the tests."""
    with _ledger() as conn:
        rows = conn.execute(
            "SELECT idempotency_key, order_id, amount, reason FROM refunds ORDER BY rowid"
        ).fetchall()
    return [dict(zip(("key", "order_id", "amount", "reason"), row, strict=True)) for row in rows]


@kernos.tool(idempotent=True, timeout=10)
def lookup_order(order_id: str) -> dict[str, Any]:
    """Look up an order: its status, total and items.

    Args:
        order_id: The order's id, like A-17.
    """
    order = ORDERS.get(order_id.strip().upper())
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
    key = kernos.idempotency_key()
    with _ledger() as conn:  # the same key twice is one refund: effects happen once
        conn.execute(
            "INSERT OR IGNORE INTO refunds VALUES (?, ?, ?, ?)",
            (key, order_id.strip().upper(), amount, reason),
        )
    time.sleep(_confirmation_seconds())  # the payment provider confirms (slowly, in the demo)
    return {"refund_id": key, "order_id": order_id, "amount": amount, "currency": order["currency"]}


#: the billing service's tools, from an MCP server process (examples/billing_server.py); in
#: production it would be configured in kernos.toml and named: ``kernos.mcp_server("billing")``
billing = kernos.McpServer.stdio(
    "billing", sys.executable, [str(Path(__file__).with_name("billing_server.py"))]
)

support = kernos.Agent(
    name="support",
    model="support",  # a route in kernos.toml
    instructions=(
        "You help customers of ACME with their orders and refunds. Look an order up before "
        "you say anything about it. Refund only delivered orders, and say what you refunded."
    ),
    tools=[lookup_order, issue_refund, billing],
    max_turns=30,
    tool_budget=20,
)
