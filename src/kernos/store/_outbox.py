"""The notification outbox: what people are to be told, durable until it is delivered.

A notification row commits in the same transaction as what it announces (an approval asked,
an approval escalated), so it exists exactly when that happened, whatever becomes of the worker
that asked. Any worker with a notifier claims due rows (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL; SQLite has one writer), holds them for a short claim, and records the outcome:
delivered, retry at a later time, or given up. A worker killed mid-delivery leaves a claim that
expires, and another worker delivers the row again: delivery is at least once, and receivers
deduplicate by the notification's id (sent in the body).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from kernos.store._dialect import Tx
from kernos.store._records import Notification

_COLUMNS = (
    "id, topic, tenant, body, attempts, created_at, next_at, delivered_at, failed_at, last_error"
)


def insert_notifications(tx: Tx, items: Sequence[Notification], now: float) -> None:
    """Queue ``items`` (a notification already queued under the same id is kept as it is)."""
    for item in items:
        tx.execute(
            "INSERT INTO kernos_outbox (id, topic, tenant, body, created_at, next_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            (
                item.id,
                item.topic,
                item.tenant,
                json.dumps(item.body, separators=(",", ":"), sort_keys=True),
                now,
                now,
            ),
        )


def claim_notifications(
    tx: Tx, *, limit: int, hold: float, now: float, lock_skip: str
) -> list[Notification]:
    """Take up to ``limit`` due notifications for ``hold`` seconds; each claim is an attempt."""
    rows = tx.fetchall(
        f"SELECT {_COLUMNS} FROM kernos_outbox WHERE delivered_at IS NULL AND failed_at IS NULL "
        "AND next_at <= ? AND (claimed_until IS NULL OR claimed_until < ?) "
        f"ORDER BY next_at LIMIT ?{lock_skip}",
        (now, now, limit),
    )
    claimed = []
    for row in rows:
        tx.execute(
            "UPDATE kernos_outbox SET claimed_until = ?, attempts = attempts + 1 WHERE id = ?",
            (now + hold, row[0]),
        )
        claimed.append(_notification(row, attempts=int(row[4]) + 1))
    return claimed


def settle_notification(
    tx: Tx,
    notification_id: str,
    *,
    delivered: bool,
    error: str | None,
    retry_at: float | None,
    now: float,
) -> None:
    """Record an attempt's outcome: delivered; to retry at ``retry_at``; or given up."""
    if delivered:
        tx.execute(
            "UPDATE kernos_outbox SET delivered_at = ?, claimed_until = NULL, last_error = NULL "
            "WHERE id = ?",
            (now, notification_id),
        )
    elif retry_at is not None:
        tx.execute(
            "UPDATE kernos_outbox SET next_at = ?, claimed_until = NULL, last_error = ? "
            "WHERE id = ?",
            (retry_at, error, notification_id),
        )
    else:
        tx.execute(
            "UPDATE kernos_outbox SET failed_at = ?, claimed_until = NULL, last_error = ? "
            "WHERE id = ?",
            (now, error, notification_id),
        )


def list_notifications(tx: Tx, *, pending: bool, limit: int) -> list[Notification]:
    where = " WHERE delivered_at IS NULL AND failed_at IS NULL" if pending else ""
    rows = tx.fetchall(
        f"SELECT {_COLUMNS} FROM kernos_outbox{where} ORDER BY created_at, id LIMIT ?", (limit,)
    )
    return [_notification(r) for r in rows]


def _notification(row: Sequence[Any], attempts: int | None = None) -> Notification:
    return Notification(
        id=row[0],
        topic=row[1],
        tenant=row[2],
        body=json.loads(row[3]),
        attempts=int(row[4]) if attempts is None else attempts,
        created_at=float(row[5]),
        next_at=float(row[6]),
        delivered_at=None if row[7] is None else float(row[7]),
        failed_at=None if row[8] is None else float(row[8]),
        last_error=row[9],
    )
