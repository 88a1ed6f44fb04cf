"""``/v1/tools/pins``: MCP tools as pinned, changes waiting for review, and accepting one
(what ``kernos tools list|diff|accept`` do).

Pins are fleet-wide: every tenant's agents are offered a server's tools as pinned, and a
tool's description is what a prompt-injecting server would change. So both routes need an
admin key without a tenant: listing shows what other tenants' agents use, and accepting
changes what all of them are offered. The store audits an acceptance (``tool.accept``, by the
key) in the same transaction as the change.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from ._auth import FleetAdmin
from ._models import AcceptChange, ToolPinList, ToolPinOut
from ._problems import not_found, problem_responses
from ._state import Svc

router = APIRouter(
    prefix="/v1/tools/pins",
    tags=["tools"],
    responses=problem_responses(400, 401, 403, 413, 422, 503),
)

_NAME = r"^[^\x00/]{1,200}$"
Server = Annotated[str, Path(pattern=_NAME, description="The MCP server's name")]
Tool = Annotated[str, Path(pattern=_NAME, description="The tool's name")]


@router.get("", response_model=ToolPinList, summary="List pinned MCP tools")
async def list_pins(
    _: FleetAdmin,
    svc: Svc,
    server: Annotated[
        str | None, Query(pattern=_NAME, description="Only this MCP server's tools")
    ] = None,
) -> ToolPinList:
    """Each tool's pinned hash and definition and, for a ``changed`` one (withheld from
    models), the pending definition to review. Tools are pinned when a run first lists them."""
    pins = await svc.client.store.list_tool_pins(server)
    return ToolPinList(pins=[ToolPinOut.of(p) for p in pins])


@router.post(
    "/{server}/{tool}/accept",
    response_model=ToolPinOut,
    summary="Accept a tool's changed definition",
    responses=problem_responses(404, 409),
)
async def accept(
    server: Server, tool: Tool, principal: FleetAdmin, svc: Svc, body: AcceptChange | None = None
) -> ToolPinOut:
    """Make the pending definition the pinned one: the tool is offered to models again from
    the next run start (or replay). With ``hash`` (a prefix of the pending hash reviewed),
    a tool changed again since is not accepted (409); 409 too when nothing is pending."""
    store = svc.client.store
    if not any(p.tool == tool for p in await store.list_tool_pins(server)):
        raise not_found(f"tool {tool!r} of MCP server {server!r}")
    done = await store.accept_tool_change(
        server, tool, by=principal.actor, expected_hash=body.hash if body else None
    )
    return ToolPinOut.of(done)
