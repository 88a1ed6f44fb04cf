"""The agent of `make demo`: an order pipeline whose steps have effects you can count.

Each step appends one line to an effects log, with its idempotency key, so the demo can show
that a worker killed mid-run is followed by one that continues from the journal and repeats no
completed step. Before e-mailing the customer it asks a model (route ``support`` in the
kernos.toml that ``KERNOS_CONFIG`` names: the demo points it at the provider simulator, whose
first provider is overloaded and whose second rate-limits once).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import kernos

EFFECTS = Path(os.environ.get("KERNOS_DEMO_EFFECTS", ".kernos/demo-effects.log"))
STEP_SECONDS = float(os.environ.get("KERNOS_DEMO_STEP_SECONDS", "0.6"))
STAGES = [
    "validate_order",
    "reserve_stock",
    "charge_card",
    "create_shipment",
    "notify_warehouse",
    "email_customer",
    "update_crm",
    "close_ticket",
]


def _effect(stage: str, order_id: str) -> dict[str, str]:
    key = kernos.idempotency_key()
    EFFECTS.parent.mkdir(parents=True, exist_ok=True)
    with EFFECTS.open("a") as f:
        f.write(f"{stage} {order_id} {key}\n")
    return {"stage": stage, "key": key}


async def do_stage(stage: str, order_id: str, text: str = "") -> dict[str, str]:
    await asyncio.sleep(STEP_SECONDS)  # the slow part: an API call, a payment provider...
    return await asyncio.to_thread(_effect, stage, order_id)


@kernos.agent("pipeline", version="1")
async def pipeline(ctx: kernos.RunContext, order: dict[str, str]) -> dict[str, object]:
    done = []
    for stage in STAGES:
        if stage == "email_customer":
            draft = await ctx.llm(
                "support",
                [
                    {"role": "system", "content": "You write short, friendly order updates."},
                    {"role": "user", "content": f"Order {order['id']} has shipped."},
                ],
                max_tokens=200,
            )
            result = await ctx.step(stage, do_stage, stage, order["id"], draft.text)
        else:
            result = await ctx.step(stage, do_stage, stage, order["id"])
        done.append(result["stage"])
    return {"order": order["id"], "stages": done}
