"""Approvals, the audit log and API keys: the rows behind oversight and governance.

Each function works inside a transaction the store opened, so that an effect and its record
commit together: a decision and its audit entry and the run's wake-up; a pause and its audit
entry. The audit log is a hash chain (each entry's hash covers its content and the previous
hash); appends are serialised (PostgreSQL: a transaction-scoped advisory lock; SQLite: its
single writer), so the chain never forks.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from kernos.errors import ApprovalNotFound, InvalidInput, InvalidState
from kernos.store._dialect import Tx
from kernos.store._ids import new_run_id
from kernos.store._records import (
    ApiKey,
    Approval,
    ApprovalState,
    AuditCheck,
    AuditEntry,
    BudgetCharge,
    BudgetUsage,
    BudgetVerdict,
    NewApproval,
)

#: the hash the first entry chains to
GENESIS = "0" * 64
#: a fixed key for PostgreSQL's advisory lock that serialises audit appends
AUDIT_LOCK = 7_431_902_011
ROLES = ("viewer", "operator", "approver", "admin")
_APPROVAL_COLUMNS = (
    "id, run_id, step, tenant, kind, question, details, state, decided_by, reason, answer, "
    "created_at, expires_at, decided_at, escalates, escalated_at"
)
_AUDIT_COLUMNS = "seq, at, actor, tenant, action, target, details, prev_hash, hash"
_KEY_COLUMNS = "id, name, tenant, role, created_at, revoked_at"


# -- approvals -------------------------------------------------------------------------------


def insert_approval(tx: Tx, new: NewApproval, now: float) -> Approval:
    """Create the approval (or find the one an earlier attempt of the same step created)."""
    existing = get_approval(tx, new.id)
    if existing is not None:
        return existing
    tx.execute(
        f"INSERT INTO kernos_approvals ({_APPROVAL_COLUMNS}) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', NULL, NULL, NULL, ?, ?, NULL, ?, NULL)",
        (
            new.id,
            new.run_id,
            new.step,
            new.tenant,
            new.kind,
            new.question,
            json.dumps(new.details, separators=(",", ":")),
            now,
            new.expires_at,
            1 if new.escalates else 0,
        ),
    )
    approval = get_approval(tx, new.id)
    assert approval is not None
    return approval


def get_approval(tx: Tx, approval_id: str, lock: str = "") -> Approval | None:
    row = tx.fetchone(
        f"SELECT {_APPROVAL_COLUMNS} FROM kernos_approvals WHERE id = ?{lock}", (approval_id,)
    )
    return _approval(row) if row is not None else None


def list_approvals(
    tx: Tx, *, state: str | None, tenant: str | None, run_id: str | None, limit: int
) -> list[Approval]:
    where, args = [], []
    for column, value in (("state", state), ("tenant", tenant), ("run_id", run_id)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    rows = tx.fetchall(
        f"SELECT {_APPROVAL_COLUMNS} FROM kernos_approvals{clause} ORDER BY created_at, id LIMIT ?",
        (*args, limit),
    )
    return [_approval(r) for r in rows]


def decide_approval(
    tx: Tx,
    approval_id: str,
    *,
    state: ApprovalState,
    by: str,
    reason: str | None,
    answer: Any,
    tenant: str | None,
    lock: str,
    now: float,
) -> Approval:
    """Record the decision, exactly once: a second decision (or a second person deciding at
    the same moment, serialised by the row lock) is refused with what was decided."""
    found = get_approval(tx, approval_id, lock)
    if found is None or (tenant is not None and found.tenant != tenant):
        raise ApprovalNotFound(approval_id)
    if found.state != ApprovalState.PENDING:
        who = f" by {found.decided_by}" if found.decided_by else ""
        raise InvalidState(
            f"approval {approval_id} was already {found.state.value}{who}; this decision was "
            f"not recorded (kernos approvals show {approval_id})"
        )
    escalation_due = found.escalates and found.escalated_at is None
    if (
        found.expires_at is not None
        and now >= found.expires_at
        and state != ApprovalState.EXPIRED
        and not escalation_due  # past a deadline that escalates, a person is still welcome
    ):
        raise InvalidState(
            f"approval {approval_id} expired at its deadline; the run took its declared "
            f"default or escalated, and this decision was not recorded"
        )
    tx.execute(
        "UPDATE kernos_approvals SET state = ?, decided_by = ?, reason = ?, answer = ?, "
        "decided_at = ? WHERE id = ? AND state = 'pending'",
        (
            state.value,
            by,
            reason,
            None if answer is None else json.dumps(answer, separators=(",", ":")),
            now,
            approval_id,
        ),
    )
    decided = get_approval(tx, approval_id)
    assert decided is not None
    return decided


def escalate_approval(
    tx: Tx, approval_id: str, *, expires_at: float | None, lock: str, now: float
) -> Approval:
    """Mark the approval escalated with its new deadline; ``InvalidState`` if a person
    decided it meanwhile (theirs stands) or it was escalated already."""
    found = get_approval(tx, approval_id, lock)
    if found is None:
        raise ApprovalNotFound(approval_id)
    if found.state != ApprovalState.PENDING or found.escalated_at is not None:
        raise InvalidState(f"approval {approval_id} is {found.state.value}; not escalated")
    tx.execute(
        "UPDATE kernos_approvals SET escalated_at = ?, expires_at = ? WHERE id = ?",
        (now, expires_at, approval_id),
    )
    escalated = get_approval(tx, approval_id)
    assert escalated is not None
    return escalated


def _approval(row: Sequence[Any]) -> Approval:
    return Approval(
        id=row[0],
        run_id=row[1],
        step=int(row[2]),
        tenant=row[3],
        kind=row[4],
        question=row[5],
        details=json.loads(row[6]),
        state=ApprovalState(row[7]),
        decided_by=row[8],
        reason=row[9],
        answer=None if row[10] is None else json.loads(row[10]),
        created_at=float(row[11]),
        expires_at=None if row[12] is None else float(row[12]),
        decided_at=None if row[13] is None else float(row[13]),
        escalates=bool(row[14]),
        escalated_at=None if row[15] is None else float(row[15]),
    )


# -- the audit log ---------------------------------------------------------------------------


def entry_hash(
    prev_hash: str,
    at: float,
    actor: str,
    tenant: str | None,
    action: str,
    target: str | None,
    details: str,
) -> str:
    """The chain's link: a hash of the previous hash and this entry's content."""
    content = json.dumps(
        [prev_hash, repr(float(at)), actor, tenant, action, target, details],
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(content.encode()).hexdigest()


def append_audit(
    tx: Tx,
    *,
    postgres: bool,
    actor: str,
    action: str,
    tenant: str | None = None,
    target: str | None = None,
    details: dict[str, Any] | None = None,
    now: float | None = None,
) -> AuditEntry:
    """Add an entry at the end of the chain, in the caller's transaction."""
    if postgres:
        tx.execute("SELECT pg_advisory_xact_lock(?)", (AUDIT_LOCK,))
    row = tx.fetchone("SELECT hash FROM kernos_audit ORDER BY seq DESC LIMIT 1", ())
    prev = str(row[0]) if row is not None else GENESIS
    at = time.time() if now is None else now
    text = json.dumps(details or {}, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    digest = entry_hash(prev, at, actor, tenant, action, target, text)
    seq_row = tx.fetchone(
        "INSERT INTO kernos_audit (at, actor, tenant, action, target, details, prev_hash, hash) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq",
        (at, actor, tenant, action, target, text, prev, digest),
    )
    assert seq_row is not None
    return AuditEntry(
        int(seq_row[0]), at, actor, tenant, action, target, details or {}, prev, digest
    )


def list_audit(
    tx: Tx, *, since: float | None, after_seq: int, tenant: str | None, limit: int
) -> list[AuditEntry]:
    where: list[str] = ["seq > ?"]
    args: list[Any] = [after_seq]
    if since is not None:
        where.append("at >= ?")
        args.append(since)
    if tenant is not None:
        where.append("tenant = ?")
        args.append(tenant)
    rows = tx.fetchall(
        f"SELECT {_AUDIT_COLUMNS} FROM kernos_audit WHERE {' AND '.join(where)} "
        "ORDER BY seq LIMIT ?",
        (*args, limit),
    )
    return [_entry(r) for r in rows]


def last_audit(tx: Tx, action: str, target: str) -> AuditEntry | None:
    """The newest entry of ``action`` on ``target`` (an index read, however long the log)."""
    row = tx.fetchone(
        f"SELECT {_AUDIT_COLUMNS} FROM kernos_audit WHERE action = ? AND target = ? "
        "ORDER BY seq DESC LIMIT 1",
        (action, target),
    )
    return _entry(row) if row is not None else None


def verify_audit(rows: Sequence[Sequence[Any]]) -> AuditCheck:
    """Walk the chain in seq order; name the first entry whose link or content is wrong."""
    prev = GENESIS
    last_seq = 0
    for n, row in enumerate(rows, start=1):
        seq, at, actor, tenant, action, target, details, prev_hash, digest = row
        if int(seq) <= last_seq:
            return AuditCheck(False, n - 1, int(seq), "entries are out of order")
        if prev_hash != prev:
            return AuditCheck(
                False,
                n - 1,
                int(seq),
                "its link to the previous entry is wrong: an entry before it was deleted, "
                "inserted or reordered",
            )
        if entry_hash(prev_hash, float(at), actor, tenant, action, target, details) != digest:
            return AuditCheck(False, n - 1, int(seq), "its content does not match its hash")
        prev = str(digest)
        last_seq = int(seq)
    return AuditCheck(True, len(rows))


def _entry(row: Sequence[Any]) -> AuditEntry:
    return AuditEntry(
        seq=int(row[0]),
        at=float(row[1]),
        actor=row[2],
        tenant=row[3],
        action=row[4],
        target=row[5],
        details=json.loads(row[6]),
        prev_hash=row[7],
        hash=row[8],
    )


# -- API keys --------------------------------------------------------------------------------


def _secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def insert_api_key(
    tx: Tx, *, name: str, tenant: str | None, role: str, now: float
) -> tuple[ApiKey, str]:
    if role not in ROLES:
        raise InvalidInput(f"role {role!r} is not one of {', '.join(ROLES)}")
    if tenant is None and role != "admin":
        raise InvalidInput(
            "only an admin key may span every tenant; give the key a --tenant, or the admin role"
        )
    if not name.strip():
        raise InvalidInput("an API key needs a name (who or what uses it)")
    key_id = new_run_id().lower()
    secret = f"kn_{key_id}_{secrets.token_urlsafe(32)}"
    tx.execute(
        "INSERT INTO kernos_api_keys (id, name, tenant, role, secret_hash, created_at, "
        "revoked_at) VALUES (?, ?, ?, ?, ?, ?, NULL)",
        (key_id, name, tenant, role, _secret_hash(secret), now),
    )
    return ApiKey(key_id, name, tenant, role, now, None), secret


def find_api_key(tx: Tx, secret: str) -> ApiKey | None:
    parts = secret.split("_", 2)
    if len(parts) != 3 or parts[0] != "kn":
        return None
    row = tx.fetchone(
        f"SELECT {_KEY_COLUMNS}, secret_hash FROM kernos_api_keys WHERE id = ?", (parts[1],)
    )
    if row is None or row[5] is not None:
        return None
    if not hmac.compare_digest(str(row[6]), _secret_hash(secret)):
        return None
    return _key(row)


def list_api_keys(tx: Tx, tenant: str | None) -> list[ApiKey]:
    if tenant is None:
        rows = tx.fetchall(f"SELECT {_KEY_COLUMNS} FROM kernos_api_keys ORDER BY created_at", ())
    else:
        rows = tx.fetchall(
            f"SELECT {_KEY_COLUMNS} FROM kernos_api_keys WHERE tenant = ? ORDER BY created_at",
            (tenant,),
        )
    return [_key(r) for r in rows]


def _key(row: Sequence[Any]) -> ApiKey:
    return ApiKey(
        id=row[0],
        name=row[1],
        tenant=row[2],
        role=row[3],
        created_at=float(row[4]),
        revoked_at=None if row[5] is None else float(row[5]),
    )


# -- budgets ---------------------------------------------------------------------------------


def reserve_budget(
    tx: Tx,
    charges: Sequence[BudgetCharge],
    now: float,
    lock: str,
    hold: str | None = None,
    run_id: str | None = None,
) -> BudgetVerdict:
    """Reserve every charge's estimate, or none: the first budget it would exceed is named.

    With ``hold`` (the call's id), the reservation is recorded under it: a call made again
    (its worker was killed before settling) first releases what its earlier attempt held, so
    a crash never leaves money reserved that nobody will settle.

    Rows are locked in a fixed order (budget, key) so that two calls reserving on the same
    budgets cannot deadlock.
    """
    if hold is not None:
        release_hold(tx, hold, now, lock)
    for charge in sorted(charges, key=_row_order):
        _ensure_usage_row(tx, charge, now)
    rows: list[tuple[BudgetCharge, BudgetUsage]] = []
    for charge in sorted(charges, key=_row_order):
        usage = _usage(tx, charge, lock)
        rows.append((charge, usage))
        spent_usd = usage.usd + usage.reserved_usd
        spent_tokens = usage.tokens + usage.reserved_tokens
        over_usd = charge.limit_usd is not None and spent_usd + charge.usd > charge.limit_usd
        over_tokens = (
            charge.limit_tokens is not None and spent_tokens + charge.tokens > charge.limit_tokens
        )
        if over_usd or over_tokens:
            return BudgetVerdict(False, charge, spent_usd, spent_tokens)
    for charge, _ in rows:
        tx.execute(
            "UPDATE kernos_budget_usage SET reserved_usd = reserved_usd + ?, "
            "reserved_tokens = reserved_tokens + ?, updated_at = ? "
            "WHERE budget = ? AND key = ? AND period_start = ?",
            (charge.usd, charge.tokens, now, charge.budget, charge.key, charge.period_start),
        )
    if hold is not None:
        tx.execute(
            "INSERT INTO kernos_budget_holds (id, run_id, charges, created_at) VALUES (?, ?, ?, ?)",
            (hold, run_id or hold.rpartition(":")[0], _charges_json(charges), now),
        )
    return BudgetVerdict(True)


def _ensure_usage_row(tx: Tx, charge: BudgetCharge, now: float) -> None:
    tx.execute(
        "INSERT INTO kernos_budget_usage (budget, key, period_start, updated_at) "
        "VALUES (?, ?, ?, ?) ON CONFLICT (budget, key, period_start) DO NOTHING",
        (charge.budget, charge.key, charge.period_start, now),
    )


def held_budget(tx: Tx, hold: str) -> list[BudgetCharge]:
    """What the call ``hold`` has reserved and not settled (nothing: [])."""
    row = tx.fetchone("SELECT charges FROM kernos_budget_holds WHERE id = ?", (hold,))
    return [] if row is None else [BudgetCharge(**c) for c in json.loads(row[0])]


def release_hold(tx: Tx, hold: str, now: float, lock: str) -> list[BudgetCharge]:
    """Give back what the call ``hold`` reserved, and forget the hold; what was released.

    The row is deleted and its charges read in one statement: of two transactions releasing
    the same hold at once (a late settle and a successor's reservation), the second finds
    nothing, so a reservation is never given back twice."""
    row = tx.fetchone("DELETE FROM kernos_budget_holds WHERE id = ? RETURNING charges", (hold,))
    if row is None:
        return []
    held = [BudgetCharge(**c) for c in json.loads(row[0])]
    _unreserve(tx, held, now, lock)
    return held


def release_run_holds(tx: Tx, run_id: str, now: float, lock: str) -> None:
    """A run ended: whatever its calls still held (a call cut short) is given back, budget
    rows locked in the one order every reservation uses (no deadlock with a reserve)."""
    rows = tx.fetchall(
        "DELETE FROM kernos_budget_holds WHERE run_id = ? RETURNING charges", (run_id,)
    )
    held = [BudgetCharge(**c) for row in rows for c in json.loads(row[0])]
    if held:
        _unreserve(tx, held, now, lock)


def _row_order(charge: BudgetCharge) -> tuple[str, str, float]:
    """The order budget rows are locked in, everywhere."""
    return (charge.budget, charge.key, charge.period_start)


def _unreserve(tx: Tx, charges: Sequence[BudgetCharge], now: float, lock: str) -> None:
    for charge in sorted(charges, key=_row_order):
        tx.fetchone(
            "SELECT budget FROM kernos_budget_usage WHERE budget = ? AND key = ? "
            f"AND period_start = ?{lock}",
            (charge.budget, charge.key, charge.period_start),
        )
        tx.execute(
            "UPDATE kernos_budget_usage SET "
            "reserved_usd = CASE WHEN reserved_usd > ? THEN reserved_usd - ? ELSE 0 END, "
            "reserved_tokens = CASE WHEN reserved_tokens > ? THEN reserved_tokens - ? ELSE 0 END, "
            "updated_at = ? WHERE budget = ? AND key = ? AND period_start = ?",
            (
                charge.usd,
                charge.usd,
                charge.tokens,
                charge.tokens,
                now,
                charge.budget,
                charge.key,
                charge.period_start,
            ),
        )


def _charges_json(charges: Sequence[BudgetCharge]) -> str:
    return json.dumps(
        [
            {
                "budget": c.budget,
                "key": c.key,
                "period_start": c.period_start,
                "limit_usd": c.limit_usd,
                "limit_tokens": c.limit_tokens,
                "usd": c.usd,
                "tokens": c.tokens,
            }
            for c in charges
        ],
        separators=(",", ":"),
    )


def settle_budget(
    tx: Tx,
    reserved: Sequence[BudgetCharge],
    actual_usd: float,
    actual_tokens: int,
    now: float,
    lock: str,
    hold: str | None = None,
) -> None:
    """Replace each reservation by what the call really cost. With ``hold``, the reservation
    released is the one recorded under it; when there is none any more (the run ended and
    gave it back), only the real cost is added."""
    if hold is not None:
        release_hold(tx, hold, now, lock)
        reserved = [replace(c, usd=0.0, tokens=0) for c in reserved]
    for charge in sorted(reserved, key=_row_order):
        _ensure_usage_row(tx, charge, now)
        usage = _usage(tx, charge, lock)
        tx.execute(
            "UPDATE kernos_budget_usage SET usd = ?, tokens = ?, reserved_usd = ?, "
            "reserved_tokens = ?, updated_at = ? "
            "WHERE budget = ? AND key = ? AND period_start = ?",
            (
                usage.usd + actual_usd,
                usage.tokens + actual_tokens,
                max(0.0, usage.reserved_usd - charge.usd),
                max(0, usage.reserved_tokens - charge.tokens),
                now,
                charge.budget,
                charge.key,
                charge.period_start,
            ),
        )


def list_budget_usage(tx: Tx, since: float) -> list[BudgetUsage]:
    rows = tx.fetchall(
        "SELECT budget, key, period_start, usd, tokens, reserved_usd, reserved_tokens "
        "FROM kernos_budget_usage WHERE period_start >= ? ORDER BY budget, key, period_start",
        (since,),
    )
    return [_usage_of(r) for r in rows]


def _usage(tx: Tx, charge: BudgetCharge, lock: str) -> BudgetUsage:
    row = tx.fetchone(
        "SELECT budget, key, period_start, usd, tokens, reserved_usd, reserved_tokens "
        f"FROM kernos_budget_usage WHERE budget = ? AND key = ? AND period_start = ?{lock}",
        (charge.budget, charge.key, charge.period_start),
    )
    assert row is not None
    return _usage_of(row)


def _usage_of(row: Sequence[Any]) -> BudgetUsage:
    return BudgetUsage(
        budget=row[0],
        key=row[1],
        period_start=float(row[2]),
        usd=float(row[3]),
        tokens=int(row[4]),
        reserved_usd=float(row[5]),
        reserved_tokens=int(row[6]),
    )
