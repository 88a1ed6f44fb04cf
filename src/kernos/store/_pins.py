"""MCP tool pins: the definition of each server's tools as first seen or accepted by an admin.

A tool's definition (its name, description and input schema: everything a model reads about
it) is what a prompt-injecting server would change to steer a model, after the tool was
trusted. So the first listing pins each tool by a hash of its definition; a later listing whose
definition hashes differently is recorded as *pending* and the tool is withheld from models
until an admin accepts the change (then the pending definition becomes the pinned one).

Guarantees, and why they take the shape they do:

- **Read-mostly.** Every run of an agent with MCP tools observes its servers' listings when it
  starts (and at every replay), so the common case, nothing new, is one read transaction and
  no write. Only a new tool, or a definition not yet recorded, opens a write transaction.
- **Recorded once.** Pinning, a change first seen, and an acceptance each commit together with
  their audit entry (``tool.pin``, ``tool.changed``, ``tool.accept``); seeing the same pending
  definition again writes nothing, so a server that stays changed does not flood the log.
- **No race between workers.** Writers of pins serialise on one lock (PostgreSQL: a
  transaction-scoped advisory lock taken first; SQLite: its single writer) and re-read under
  it, so two workers seeing a new server at once pin it once, and an acceptance cannot
  interleave with a change being recorded. Taking that lock before the audit log's own lock,
  always, means the two can never deadlock.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from kernos.errors import InvalidInput, InvalidState
from kernos.store._dialect import Tx
from kernos.store._oversight import append_audit
from kernos.store._records import PinStatus, ToolDefinition, ToolPin

#: a fixed key for PostgreSQL's advisory lock that serialises writers of pins
PIN_LOCK = 7_431_902_012
_COLUMNS = (
    "server, tool, hash, definition, pending_hash, pending_definition, first_seen_at, "
    "accepted_at, accepted_by, pending_seen_at"
)


def canonical(definition: ToolDefinition) -> str:
    """The definition as canonical JSON (sorted keys, no spaces): what its hash covers and
    what the store keeps, in the MCP spelling (``inputSchema``)."""
    return json.dumps(
        {
            "name": definition.name,
            "description": definition.description,
            "inputSchema": definition.input_schema,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )


def definition_hash(definition: ToolDefinition) -> str:
    """sha256 (hex) of the definition's canonical JSON: equal exactly when a model would be
    told the same thing (key order in the schema does not matter)."""
    return hashlib.sha256(canonical(definition).encode()).hexdigest()


def _parse(text: str) -> ToolDefinition:
    data = json.loads(text)
    return ToolDefinition(
        name=str(data["name"]),
        description=str(data["description"]),
        input_schema=dict(data["inputSchema"]),
    )


def _pin(row: Sequence[Any]) -> ToolPin:
    return ToolPin(
        server=row[0],
        tool=row[1],
        hash=row[2],
        definition=_parse(row[3]),
        pending_hash=row[4],
        pending_definition=None if row[5] is None else _parse(row[5]),
        first_seen_at=float(row[6]),
        accepted_at=float(row[7]),
        accepted_by=row[8],
        pending_seen_at=None if row[9] is None else float(row[9]),
    )


def check_definitions(server: str, definitions: Sequence[ToolDefinition]) -> dict[str, str]:
    """Each tool's hash, by name; ``InvalidInput`` for a listing no server would give."""
    if not server:
        raise InvalidInput("tool pins need the MCP server's name")
    hashes: dict[str, str] = {}
    for definition in definitions:
        if not definition.name:
            raise InvalidInput(f"MCP server {server!r} listed a tool without a name")
        if definition.name in hashes:
            raise InvalidInput(f"MCP server {server!r} listed two tools named {definition.name!r}")
        hashes[definition.name] = definition_hash(definition)
    return hashes


def list_pins(tx: Tx, server: str | None) -> list[ToolPin]:
    if server is None:
        rows = tx.fetchall(f"SELECT {_COLUMNS} FROM kernos_tool_pins ORDER BY server, tool", ())
    else:
        rows = tx.fetchall(
            f"SELECT {_COLUMNS} FROM kernos_tool_pins WHERE server = ? ORDER BY tool", (server,)
        )
    return [_pin(r) for r in rows]


def statuses_if_recorded(
    pins: Sequence[ToolPin], hashes: Mapping[str, str]
) -> dict[str, PinStatus] | None:
    """Each tool's status when the listing needs no write (every tool known, every change
    already pending), else None."""
    by_tool = {p.tool: p for p in pins}
    found: dict[str, PinStatus] = {}
    for tool, digest in hashes.items():
        pin = by_tool.get(tool)
        if pin is None:
            return None
        if digest == pin.hash:
            found[tool] = PinStatus.PINNED
        elif digest == pin.pending_hash:
            found[tool] = PinStatus.CHANGED
        else:
            return None
    return found


def _lock(tx: Tx, postgres: bool) -> None:
    if postgres:
        tx.execute("SELECT pg_advisory_xact_lock(?)", (PIN_LOCK,))


def record_listing(
    tx: Tx,
    server: str,
    definitions: Sequence[ToolDefinition],
    hashes: Mapping[str, str],
    *,
    actor: str,
    postgres: bool,
    now: float,
) -> dict[str, PinStatus]:
    """Pin new tools and record changed definitions as pending, with their audit entries,
    in the caller's write transaction (see the module's docstring)."""
    _lock(tx, postgres)
    pins = {p.tool: p for p in list_pins(tx, server)}
    found: dict[str, PinStatus] = {}
    for definition in sorted(definitions, key=lambda d: d.name):
        tool, digest = definition.name, hashes[definition.name]
        pin = pins.get(tool)
        target = f"{server}/{tool}"
        if pin is None:
            tx.execute(
                f"INSERT INTO kernos_tool_pins ({_COLUMNS}) "
                "VALUES (?, ?, ?, ?, NULL, NULL, ?, ?, ?, NULL)",
                (server, tool, digest, canonical(definition), now, now, actor),
            )
            found[tool] = PinStatus.NEW
            append_audit(
                tx,
                postgres=postgres,
                actor=actor,
                action="tool.pin",
                target=target,
                details={"server": server, "tool": tool, "hash": digest},
                now=now,
            )
        elif digest == pin.hash:
            found[tool] = PinStatus.PINNED
        elif digest == pin.pending_hash:
            found[tool] = PinStatus.CHANGED
        else:
            tx.execute(
                "UPDATE kernos_tool_pins SET pending_hash = ?, pending_definition = ?, "
                "pending_seen_at = ? WHERE server = ? AND tool = ?",
                (digest, canonical(definition), now, server, tool),
            )
            found[tool] = PinStatus.CHANGED
            changed: dict[str, Any] = {
                "server": server,
                "tool": tool,
                "pinned_hash": pin.hash,
                "pending_hash": digest,
            }
            if pin.pending_hash is not None:
                changed["replaces_pending_hash"] = pin.pending_hash
            append_audit(
                tx,
                postgres=postgres,
                actor=actor,
                action="tool.changed",
                target=target,
                details=changed,
                now=now,
            )
    return found


def accept_change(
    tx: Tx,
    server: str,
    tool: str,
    *,
    by: str,
    expected_hash: str | None,
    postgres: bool,
    now: float | None = None,
) -> ToolPin:
    """Make the pending definition the pinned one, audited (``tool.accept``) in the same
    transaction. ``expected_hash``: the pending hash the admin reviewed; if another change
    was seen since, nothing is accepted (``InvalidState``)."""
    _lock(tx, postgres)
    at = time.time() if now is None else now
    row = tx.fetchone(
        f"SELECT {_COLUMNS} FROM kernos_tool_pins WHERE server = ? AND tool = ?", (server, tool)
    )
    if row is None:
        raise InvalidInput(
            f"no tool {tool!r} of MCP server {server!r} is pinned (see `kernos tools list`)"
        )
    pin = _pin(row)
    if pin.pending_hash is None or pin.pending_definition is None:
        raise InvalidState(
            f"tool {tool!r} of MCP server {server!r} has no change pending: it is offered as "
            f"pinned (sha256 {pin.hash[:12]}), accepted by {pin.accepted_by}"
        )
    if expected_hash is not None and not pin.pending_hash.startswith(expected_hash.lower()):
        raise InvalidState(
            f"the change pending for tool {tool!r} of MCP server {server!r} is now sha256 "
            f"{pin.pending_hash[:12]}, not the {expected_hash} you reviewed; nothing was "
            f"accepted (review it again: kernos tools diff {server} {tool})"
        )
    tx.execute(
        "UPDATE kernos_tool_pins SET hash = pending_hash, definition = pending_definition, "
        "pending_hash = NULL, pending_definition = NULL, pending_seen_at = NULL, "
        "accepted_at = ?, accepted_by = ? WHERE server = ? AND tool = ?",
        (at, by, server, tool),
    )
    append_audit(
        tx,
        postgres=postgres,
        actor=by,
        action="tool.accept",
        target=f"{server}/{tool}",
        details={
            "server": server,
            "tool": tool,
            "old_hash": pin.hash,
            "new_hash": pin.pending_hash,
        },
        now=at,
    )
    return ToolPin(
        server=server,
        tool=tool,
        hash=pin.pending_hash,
        definition=pin.pending_definition,
        pending_hash=None,
        pending_definition=None,
        first_seen_at=pin.first_seen_at,
        accepted_at=at,
        accepted_by=by,
        pending_seen_at=None,
    )
