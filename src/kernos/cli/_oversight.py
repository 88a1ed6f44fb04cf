"""``kernos approvals``, ``kernos audit`` and ``kernos keys``: people deciding, and the record
of who did what.

A decision is made once: a second ``approve`` (or two people at the same moment) gets a clear
"already decided by ..." and exit code 2. An approval's answer is checked against the schema
the run asked with before it is recorded, so a run never receives an answer it cannot use.
"""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from kernos.errors import InvalidInput
from kernos.kernel import Client, format_time, parse_json
from kernos.store import Approval, ApprovalState, AuditEntry

from ._common import DbOpt, JsonOpt, _client, command, out
from ._render import dumps, parse_since

approvals_app = typer.Typer(
    help="Decisions runs wait for: approve, reject, or edit a tool's arguments.",
    no_args_is_help=True,
)
audit_app = typer.Typer(
    help="The hash-chained audit log: verify it, export it.", no_args_is_help=True
)
keys_app = typer.Typer(help="API keys for kernos serve (stored hashed).", no_args_is_help=True)

ByOpt = Annotated[
    str | None,
    typer.Option("--by", help="Who decides (default: your user name).", show_default=False),
]
ReasonOpt = Annotated[str | None, typer.Option("--reason", help="Why, for the run and the audit.")]


def _me(by: str | None) -> str:
    if by:
        return by
    try:
        return f"user:{getpass.getuser()}"
    except (KeyError, OSError):
        return "user:unknown"


def approval_dict(a: Approval) -> dict[str, Any]:
    return {
        "id": a.id,
        "run_id": a.run_id,
        "tenant": a.tenant,
        "kind": a.kind,
        "question": a.question,
        "details": a.details,
        "state": a.state.value,
        "decided_by": a.decided_by,
        "reason": a.reason,
        "answer": a.answer,
        "created_at": a.created_at,
        "expires_at": a.expires_at,
        "decided_at": a.decided_at,
        "escalates": a.escalates,
        "escalated_at": a.escalated_at,
    }


@approvals_app.command("list")
@command
async def approvals_list(
    state: Annotated[
        str, typer.Option(help="pending, approved, rejected, expired, or all.")
    ] = "pending",
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's.")] = None,
    as_json: JsonOpt = False,
    database: DbOpt = None,
) -> None:
    """Approvals, oldest first (the pending ones by default)."""
    if state != "all" and state not in {s.value for s in ApprovalState}:
        raise InvalidInput(f"{state!r} is not an approval state (pending, approved, ...)")
    async with await _client(database) as client:
        found = await client.store.list_approvals(
            state=None if state == "all" else state, tenant=tenant, limit=1000
        )
    if as_json:
        out.print(dumps([approval_dict(a) for a in found]))
        return
    table = Table(box=None, header_style="bold")
    for column in ("ID", "STATE", "KIND", "TENANT", "ASKED", "QUESTION"):
        table.add_column(column)
    for a in found:
        state_text = f"{a.state.value} (escalated)" if a.escalated_at is not None else a.state.value
        table.add_row(a.id, state_text, a.kind, a.tenant, format_time(a.created_at), a.question)
    out.print(table if found else f"no {state} approvals")


@approvals_app.command("show")
@command
async def approvals_show(
    approval_id: Annotated[str, typer.Argument(metavar="ID")],
    database: DbOpt = None,
) -> None:
    """One approval: the question, what it is about, and its decision."""
    async with await _client(database) as client:
        found = await client.store.get_approval(approval_id)
    out.print(dumps(approval_dict(found)))


async def _decide(
    client: Client,
    approval_id: str,
    *,
    approve: bool,
    by: str | None,
    reason: str | None,
    answer: Any,
) -> Approval:
    return await client.decide(
        approval_id, approve=approve, by=_me(by), reason=reason, answer=answer
    )


@approvals_app.command("approve")
@command
async def approvals_approve(
    approval_id: Annotated[str, typer.Argument(metavar="ID")],
    answer: Annotated[
        str | None, typer.Option("--answer", help="Your answer, as JSON (checked).")
    ] = None,
    reason: ReasonOpt = None,
    by: ByOpt = None,
    database: DbOpt = None,
) -> None:
    """Approve (with an answer, when the run asked a question)."""
    value = None if answer is None else parse_json(answer, "the answer")
    async with await _client(database) as client:
        done = await _decide(client, approval_id, approve=True, by=by, reason=reason, answer=value)
    out.print(f"approval {done.id} approved by {done.decided_by}; run {done.run_id} resumes")


@approvals_app.command("edit")
@command
async def approvals_edit(
    approval_id: Annotated[str, typer.Argument(metavar="ID")],
    arguments: Annotated[str, typer.Argument(metavar="JSON", help="The tool's new arguments.")],
    reason: ReasonOpt = None,
    by: ByOpt = None,
    database: DbOpt = None,
) -> None:
    """Approve a tool call with edited arguments (a JSON object)."""
    value = parse_json(arguments, "the edited arguments")
    async with await _client(database) as client:
        found = await client.store.get_approval(approval_id)
        if not found.kind.startswith("tool:"):
            raise InvalidInput(
                f"approval {approval_id} is a question, not a tool call: use "
                f"`kernos approvals approve {approval_id} --answer JSON`"
            )
        done = await _decide(client, approval_id, approve=True, by=by, reason=reason, answer=value)
    out.print(
        f"approval {done.id} approved by {done.decided_by} with edited arguments; "
        f"run {done.run_id} resumes"
    )


@approvals_app.command("reject")
@command
async def approvals_reject(
    approval_id: Annotated[str, typer.Argument(metavar="ID")],
    reason: ReasonOpt = None,
    by: ByOpt = None,
    database: DbOpt = None,
) -> None:
    """Reject, saying why (the run, or its model, is told)."""
    async with await _client(database) as client:
        done = await _decide(client, approval_id, approve=False, by=by, reason=reason, answer=None)
    out.print(f"approval {done.id} rejected by {done.decided_by}; run {done.run_id} resumes")


# -- audit ------------------------------------------------------------------------------------


def audit_dict(e: AuditEntry) -> dict[str, Any]:
    return {
        "seq": e.seq,
        "at": e.at,
        "actor": e.actor,
        "tenant": e.tenant,
        "action": e.action,
        "target": e.target,
        "details": e.details,
        "prev_hash": e.prev_hash,
        "hash": e.hash,
    }


@audit_app.command("verify")
@command
async def audit_verify(database: DbOpt = None) -> None:
    """Recompute the hash chain; name the first entry that was modified, deleted, inserted or
    reordered (exit code 1)."""
    async with await _client(database) as client:
        check = await client.store.verify_audit()
    if check.ok:
        out.print(f"audit log intact: {check.entries} entries, every link verified")
        return
    out.print(
        f"audit log TAMPERED at entry {check.first_bad_seq}: {check.problem} "
        f"({check.entries} entries before it verified)"
    )
    raise typer.Exit(1)


@audit_app.command("export")
@command
async def audit_export(
    since: Annotated[
        str | None, typer.Option(help="Only entries since: 1h, 7d, or an ISO date.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file (default: stdout).")
    ] = None,
    database: DbOpt = None,
) -> None:
    """Write the audit log as JSON Lines, one entry per line, in chain order."""
    start = parse_since(since) if since else None
    lines: list[str] = []
    async with await _client(database) as client:
        after = 0
        while True:
            page = await client.store.list_audit(since=start, after_seq=after, limit=1000)
            lines.extend(json.dumps(audit_dict(e), ensure_ascii=False) for e in page)
            if len(page) < 1000:
                break
            after = page[-1].seq
    text = "".join(f"{line}\n" for line in lines)
    if output is None:
        out.print(text, end="")
    else:
        output.write_text(text)
        out.print(f"{len(lines)} audit entries written to {output}")


@audit_app.command("list")
@command
async def audit_list(
    since: Annotated[str | None, typer.Option(help="Only entries since: 1h, 7d, ...")] = None,
    as_json: JsonOpt = False,
    database: DbOpt = None,
) -> None:
    """The latest audit entries (who did what, to what)."""
    start = parse_since(since) if since else None
    async with await _client(database) as client:
        entries = await client.store.list_audit(since=start, limit=200)
    if as_json:
        out.print(dumps([audit_dict(e) for e in entries]))
        return
    table = Table(box=None, header_style="bold")
    for column in ("SEQ", "AT", "ACTOR", "ACTION", "TARGET", "DETAILS"):
        table.add_column(column)
    for e in entries:
        table.add_row(
            str(e.seq), format_time(e.at), e.actor, e.action, e.target or "", dumps(e.details)
        )
    out.print(table)


# -- keys -------------------------------------------------------------------------------------


@keys_app.command("create")
@command
async def keys_create(
    role: Annotated[str, typer.Option(help="viewer, operator, approver or admin.")],
    tenant: Annotated[
        str | None, typer.Option(help="The tenant it may see (none: every tenant, admin only).")
    ] = None,
    name: Annotated[str, typer.Option(help="Who or what uses it.")] = "api",
    database: DbOpt = None,
) -> None:
    """Create an API key; its secret is printed once and stored only as a hash."""
    async with await _client(database, create=True) as client:
        await client.store.migrate()
        key, secret = await client.store.create_api_key(
            name=name, tenant=tenant, role=role, by=_me(None)
        )
    out.print(f"key {key.id} ({key.role}, tenant {key.tenant or 'every tenant'}):")
    out.print(secret)
    out.print("keep the secret now: it cannot be shown again")


@keys_app.command("list")
@command
async def keys_list(as_json: JsonOpt = False, database: DbOpt = None) -> None:
    """API keys (never their secrets)."""
    async with await _client(database) as client:
        keys = await client.store.list_api_keys()
    rows = [
        {
            "id": k.id,
            "name": k.name,
            "tenant": k.tenant,
            "role": k.role,
            "created_at": k.created_at,
            "revoked_at": k.revoked_at,
        }
        for k in keys
    ]
    if as_json:
        out.print(dumps(rows))
        return
    table = Table(box=None, header_style="bold")
    for column in ("ID", "NAME", "ROLE", "TENANT", "CREATED", "REVOKED"):
        table.add_column(column)
    for k in keys:
        table.add_row(
            k.id,
            k.name,
            k.role,
            k.tenant or "*",
            format_time(k.created_at),
            format_time(k.revoked_at) if k.revoked_at else "",
        )
    out.print(table)


@keys_app.command("revoke")
@command
async def keys_revoke(
    key_id: Annotated[str, typer.Argument(metavar="ID")], database: DbOpt = None
) -> None:
    """Revoke a key at once."""
    async with await _client(database) as client:
        revoked = await client.store.revoke_api_key(key_id, by=_me(None))
    if not revoked:
        raise InvalidInput(f"no live API key {key_id!r} (see `kernos keys list`)")
    out.print(f"key {key_id} revoked")
