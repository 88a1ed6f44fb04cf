"""``kernos tools``: the pinned definitions of MCP servers' tools, and the changes an admin must
review before a changed tool is offered to a model again.

``diff`` shows what changed in the words a model reads (the description line by line, then the
input schema as indented JSON); ``accept`` makes the pending definition the pinned one, audited.
Accepting with ``--hash`` (the prefix ``diff`` prints) accepts only the change that was
reviewed: if the server changed the tool again meanwhile, nothing is accepted.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from rich.table import Table

from kernos.errors import InvalidInput
from kernos.kernel import format_time
from kernos.store import ToolDefinition, ToolPin

from ._common import DbOpt, JsonOpt, _client, command, out
from ._oversight import _me
from ._render import dumps

tools_app = typer.Typer(
    help="MCP tools as pinned: list them, review a changed definition, accept it.",
    no_args_is_help=True,
)

#: hash characters shown (and enough to accept with --hash)
SHORT = 12

ByOpt = Annotated[
    str | None,
    typer.Option("--by", help="Who accepts (default: your user name).", show_default=False),
]


def definition_dict(d: ToolDefinition) -> dict[str, Any]:
    return {"name": d.name, "description": d.description, "inputSchema": d.input_schema}


def pin_dict(p: ToolPin) -> dict[str, Any]:
    return {
        "server": p.server,
        "tool": p.tool,
        "status": "changed" if p.changed else "pinned",
        "hash": p.hash,
        "definition": definition_dict(p.definition),
        "pending_hash": p.pending_hash,
        "pending_definition": (
            None if p.pending_definition is None else definition_dict(p.pending_definition)
        ),
        "first_seen_at": p.first_seen_at,
        "accepted_at": p.accepted_at,
        "accepted_by": p.accepted_by,
        "pending_seen_at": p.pending_seen_at,
    }


def _lines(d: ToolDefinition) -> list[str]:
    """A definition as lines a person can diff: a long description changes by its lines, a
    schema by its keys."""
    schema = json.dumps(d.input_schema, indent=2, sort_keys=True, ensure_ascii=False)
    return [
        f"name: {d.name}",
        "description:",
        *(f"  {line}" for line in (d.description.splitlines() or [""])),
        "inputSchema:",
        *(f"  {line}" for line in schema.splitlines()),
    ]


def pin_diff(p: ToolPin) -> list[str]:
    """The unified diff from the pinned definition to the pending one (empty: none)."""
    if p.pending_definition is None or p.pending_hash is None:
        return []
    return list(
        difflib.unified_diff(
            _lines(p.definition),
            _lines(p.pending_definition),
            fromfile=f"{p.server}/{p.tool} pinned  sha256:{p.hash[:SHORT]}",
            tofile=f"{p.server}/{p.tool} pending sha256:{p.pending_hash[:SHORT]}",
            lineterm="",
        )
    )


def _pins_of(pins: Sequence[ToolPin], server: str, tool: str | None) -> list[ToolPin]:
    if not pins:
        raise InvalidInput(
            f"no tools of MCP server {server!r} are pinned: its tools are pinned the first time "
            f"an agent run lists them (see `kernos tools list`)"
        )
    if tool is None:
        return list(pins)
    found = [p for p in pins if p.tool == tool]
    if not found:
        raise InvalidInput(
            f"MCP server {server!r} has no pinned tool {tool!r}; its tools: "
            f"{', '.join(p.tool for p in pins)}"
        )
    return found


@tools_app.command("list")
@command
async def tools_list(
    server: Annotated[str | None, typer.Option(help="Only this MCP server's tools.")] = None,
    as_json: JsonOpt = False,
    database: DbOpt = None,
) -> None:
    """List pinned MCP tools; a CHANGED one is withheld from models until accepted."""
    async with await _client(database) as client:
        pins = await client.store.list_tool_pins(server)
    if as_json:
        out.print(dumps([pin_dict(p) for p in pins]))
        return
    if not pins:
        where = f" of MCP server {server!r}" if server else ""
        out.print(f"no pinned tools{where} (they are pinned when an agent run first lists them)")
        return
    table = Table(box=None, header_style="bold")
    for column in ("SERVER", "TOOL", "STATUS", "HASH", "ACCEPTED", "BY", "PENDING"):
        table.add_column(column)
    for p in pins:
        table.add_row(
            p.server,
            p.tool,
            "CHANGED" if p.changed else "pinned",
            p.hash[:SHORT],
            format_time(p.accepted_at),
            p.accepted_by,
            f"{p.pending_hash[:SHORT]} since {format_time(p.pending_seen_at)}"
            if p.pending_hash
            else "",
        )
    out.print(table)
    changed = sorted({p.server for p in pins if p.changed})
    for name in changed:
        out.print(f"changed tools are withheld from models: review with `kernos tools diff {name}`")


@tools_app.command("diff")
@command
async def tools_diff(
    server: Annotated[str, typer.Argument(metavar="SERVER")],
    tool: Annotated[str | None, typer.Argument(metavar="[TOOL]")] = None,
    database: DbOpt = None,
) -> None:
    """Show what changed in a server's tools (or one tool) since they were pinned.

    A unified diff of what a model reads, the description and the input schema, from the
    pinned definition to the pending one, and the command that accepts exactly that change.
    """
    async with await _client(database) as client:
        pins = _pins_of(await client.store.list_tool_pins(server), server, tool)
    pending = [p for p in pins if p.changed]
    if not pending:
        what = f"tool {tool!r} of MCP server {server!r}" if tool else f"MCP server {server!r}"
        out.print(f"no changes pending for {what}: its tools are offered as pinned")
        return
    for p in pending:
        out.print("\n".join(pin_diff(p)))
        assert p.pending_hash is not None
        out.print(
            f"accept with: kernos tools accept {p.server} {p.tool} "
            f"--hash {p.pending_hash[:SHORT]}\n"
        )


@tools_app.command("accept")
@command
async def tools_accept(
    server: Annotated[str, typer.Argument(metavar="SERVER")],
    tool: Annotated[str, typer.Argument(metavar="TOOL")],
    expected: Annotated[
        str | None,
        typer.Option(
            "--hash",
            help="The pending hash you reviewed (a prefix, as `kernos tools diff` shows): "
            "accept only that change.",
            show_default=False,
        ),
    ] = None,
    by: ByOpt = None,
    database: DbOpt = None,
) -> None:
    """Accept a tool's changed definition: it is offered to models again.

    The pending definition becomes the pinned one, offered from the next run start (or
    replay) on; audited as tool.accept with the old and new hash. Exit code 2 when nothing
    is pending, or when --hash no longer names the pending change.
    """
    async with await _client(database) as client:
        before = _pins_of(await client.store.list_tool_pins(server), server, tool)[0]
        done = await client.store.accept_tool_change(
            server, tool, by=_me(by), expected_hash=expected
        )
    out.print(
        f"tool {server}/{tool} accepted by {done.accepted_by}: sha256 "
        f"{before.hash[:SHORT]} -> {done.hash[:SHORT]}; offered to models from the next run"
    )
