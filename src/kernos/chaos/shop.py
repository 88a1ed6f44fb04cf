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

Importing this module registers the ``support`` agent: only the workers of a scenario (``--app
kernos.chaos.shop``) import it; the runner and the CLI use ``kernos.chaos._conversations``.
"""

from __future__ import annotations

from typing import Any

import kernos
from kernos.chaos._conversations import LARGE_REFUND, ORDERS, Kind, conversation
from kernos.chaos._ledger import effects, ledger_path, open_ledger, record_execution

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


@kernos.tool(idempotent=True, timeout=10)
def lookup_order(order_id: str) -> dict[str, Any]:
    """Look up an order: its status, total and items.

    Args:
        order_id: The order's id, like A-17.
    """
    order = ORDERS.get(order_id.strip().upper())
    with open_ledger() as conn:
        record_execution(conn, "lookup_order")
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
    with open_ledger() as conn:  # the same key twice is one refund: the effect happens once
        key = record_execution(conn, "issue_refund")
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
    with open_ledger() as conn:  # no key: a repeat after a crash sends the message again
        key = record_execution(conn, "notify_customer")
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
