"""A tool-calling agent whose tool leaves effects in a file, for tests that kill its worker.

Each call of ``refund`` writes ``start`` when it begins and ``done`` when its effect is made,
with its idempotency key, to the file ``KERNOS_TEST_EFFECTS`` names; it takes long enough
(``KERNOS_TEST_TOOL_SECONDS``) for a test to SIGKILL the worker in the middle of it.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import kernos


def _effects() -> Path:
    return Path(os.environ["KERNOS_TEST_EFFECTS"])


def _write(line: dict[str, str]) -> None:
    with _effects().open("a") as out:
        out.write(json.dumps(line) + "\n")
        out.flush()
        os.fsync(out.fileno())


@kernos.tool
async def refund(order_id: str) -> str:
    """Refund an order in full.

    Args:
        order_id: The order to refund.
    """
    key = kernos.idempotency_key()
    _write({"event": "start", "order": order_id, "key": key})
    await asyncio.sleep(float(os.environ.get("KERNOS_TEST_TOOL_SECONDS", "0.5")))
    _write({"event": "done", "order": order_id, "key": key})
    return f"refunded {order_id}"


support = kernos.Agent(
    "support",
    model="oa:gpt-4.1-mini",
    instructions="You refund orders.",
    tools=[refund],
)
