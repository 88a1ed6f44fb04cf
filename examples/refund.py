"""The refund agent of the README: a step, a durable timer, and a durable wait for a message.

kernos worker --app examples.refund
kernos run refund --input '{"id": "A-17"}'
kernos send RUN customer '"yes, refund it"'
"""

from __future__ import annotations

import kernos


def lookup_order(order_id: str) -> dict[str, object]:
    """Stands in for a database or HTTP call; a step's function may be sync or async."""
    return {"id": order_id, "total": 42.0, "currency": "EUR"}


@kernos.agent("refund", version="1")
async def refund(ctx: kernos.RunContext, order: dict[str, str]) -> dict[str, object]:
    found = await ctx.step("lookup", lookup_order, order["id"])
    await ctx.sleep(float(order.get("cooling_off", 2)))
    reply = await ctx.wait_for_message("customer", timeout=86400)
    return {"found": found, "reply": reply}
