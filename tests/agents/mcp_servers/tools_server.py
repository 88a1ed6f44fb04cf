"""A real MCP server for the tests, built with the SDK's FastMCP: ``python tools_server.py``
serves stdio, ``python tools_server.py --http PORT`` streamable HTTP on 127.0.0.1:PORT.

Its tools exercise what kernos must handle: annotations, errors, structured results, calls
that never end (to be killed mid-call), calls that only finish when 20 of them are in flight
at once, and a tool list that changes at runtime. With ``MCP_TEST_REFUSE`` naming a file that
exists, the server exits at once, as a server that cannot start does.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import uvicorn
from mcp.server.fastmcp import Context, FastMCP
from mcp.server.session import ServerSession
from mcp.types import CallToolResult, Tool, ToolAnnotations

Ctx = Context[ServerSession, Any, Any]


class CountingServer(FastMCP[Any]):
    """Counts tools/list requests, so a test can see the client's cache at work."""

    listings = 0

    async def list_tools(self) -> list[Tool]:
        CountingServer.listings += 1
        return await super().list_tools()


server = CountingServer("kernos-test", log_level="WARNING")
arrived = 0
all_arrived = asyncio.Event()


@server.tool(annotations=ToolAnnotations(readOnlyHint=True))
def add(a: int, b: int) -> int:
    """Add two whole numbers."""
    return a + b


@server.tool(annotations=ToolAnnotations(idempotentHint=True))
def set_flag(name: str) -> str:
    """Set a flag (setting it twice is the same as once)."""
    return f"{name} set"


@server.tool()
def refund(order_id: str, amount: float) -> str:
    """Refund an order."""
    return f"refunded {amount:.2f} on {order_id}"


@server.tool()
def fail(message: str) -> str:
    """Always fails with ``message``."""
    raise ValueError(message)


@server.tool()
def structured_only() -> CallToolResult:
    """A result with structured content and no text."""
    return CallToolResult(content=[], structuredContent={"total": 3, "currency": "EUR"})


@server.tool()
def pid() -> int:
    """This server's process id."""
    return os.getpid()


@server.tool()
async def block(marker: str) -> str:
    """Write ``marker`` (a file path), then never answer."""
    await asyncio.to_thread(Path(marker).write_text, str(os.getpid()))
    await asyncio.Event().wait()
    return "unreachable"


@server.tool()
async def gather(n: int) -> int:
    """Answer only once ``n`` calls of gather are in flight together; returns the pid."""
    global arrived
    arrived += 1
    if arrived >= n:
        all_arrived.set()
    await all_arrived.wait()
    return os.getpid()


@server.tool()
def listings() -> int:
    """How many times the tools were listed."""
    return CountingServer.listings


@server.tool()
async def add_tool_now(ctx: Ctx) -> str:
    """Add the tool ``late`` and tell the client that the list changed."""

    def late(word: str) -> str:
        """A tool added at runtime."""
        return word.upper()

    server.add_tool(late)
    await ctx.session.send_tool_list_changed()
    return "added"


def main() -> None:
    refuse = os.environ.get("MCP_TEST_REFUSE")
    if refuse and Path(refuse).exists():
        sys.exit(3)
    if len(sys.argv) == 3 and sys.argv[1] == "--http":
        uvicorn.run(
            server.streamable_http_app(),
            host="127.0.0.1",
            port=int(sys.argv[2]),
            log_level="warning",
        )
    else:
        server.run()


if __name__ == "__main__":
    main()
