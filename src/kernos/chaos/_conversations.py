"""The shop's conversations: the orders, and what each kind of customer says and the model
plans, kept apart from ``shop`` so that building a conversation registers no agent (importing
``shop`` defines the ``support`` agent, which only a scenario's workers should serve)."""

from __future__ import annotations

import json
from typing import Any, Literal

from kernos.sim import PLAN_MARKER

__all__ = ["LARGE_REFUND", "ORDERS", "Kind", "conversation"]

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
