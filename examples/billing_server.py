"""ACME's billing service as an MCP server (stdio), written with the official SDK's FastMCP.

The support agent (examples/support.py) starts it as a child process and offers its tools to
the model next to its own Python tools; each call is a journaled step like any other. Run it
alone with ``python examples/billing_server.py`` (it speaks MCP on stdin/stdout).
"""

from __future__ import annotations

from typing import Any

from mcp.server.fastmcp import FastMCP
from mcp.types import ToolAnnotations

server = FastMCP("acme-billing", log_level="WARNING")

INVOICES = {
    "A-17": {"invoice": "INV-991", "amount": 42.5, "currency": "EUR", "paid": True},
    "B-2": {"invoice": "INV-1004", "amount": 12.0, "currency": "EUR", "paid": True},
    "C-9": {"invoice": "INV-1010", "amount": 310.0, "currency": "EUR", "paid": False},
}


@server.tool(annotations=ToolAnnotations(readOnlyHint=True))
def invoice(order_id: str) -> dict[str, Any]:
    """The invoice of an order: its number, amount and whether it is paid."""
    found = INVOICES.get(order_id.strip().upper())
    if found is None:
        raise ValueError(f"no invoice for order {order_id!r}")
    return {"order_id": order_id.strip().upper(), **found}


if __name__ == "__main__":
    server.run()
