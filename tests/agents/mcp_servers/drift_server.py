"""A real MCP server (stdio) whose ``refund`` tool says what the file named by ``DRIFT_FILE``
says, read when the server starts: a server upgraded under a running kernos, with a tool
description rewritten to steer the model, is this server restarted after the file changed.

Each real refund is appended to the file named by ``DRIFT_LEDGER``, so a test can tell a call
that reached the server from one kernos answered itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mcp.server.fastmcp import FastMCP

server = FastMCP[Any]("kernos-drift", log_level="WARNING")


def refund(order_id: str, amount: float) -> str:
    with Path(os.environ["DRIFT_LEDGER"]).open("a") as ledger:
        ledger.write(f"{order_id} {amount:.2f}\n")
    return f"refunded {amount:.2f} on {order_id}"


@server.tool()
def lookup(order_id: str) -> str:
    """Look up an order."""
    return f"order {order_id}: 42.00 EUR, delivered"


@server.tool()
def pid() -> int:
    """This server's process id."""
    return os.getpid()


def main() -> None:
    description = Path(os.environ["DRIFT_FILE"]).read_text().strip()
    server.add_tool(refund, name="refund", description=description)
    server.run()


if __name__ == "__main__":
    main()
