"""Telling people a run needs them, durably: notifications leave through the store's outbox.

A notification is queued in the same transaction as the approval it announces, so it is
neither lost with a worker killed right after asking nor sent for an approval that was never
recorded. Each worker with a ``Notifier`` runs a ``NotificationPump``: it claims due
notifications, hands each to the notifier for one attempt, and records the outcome; failures
are retried with exponential backoff and full jitter (a receiver's ``Retry-After`` is honoured
as a floor) until ``MAX_ATTEMPTS``, after which the notification is marked failed for an
operator to see. Delivery is at least once: receivers deduplicate by the notification id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from kernos.errors import InfrastructureError
from kernos.store import Approval, NewApproval, Notification, Store

log = logging.getLogger("kernos.notify")

#: attempts per notification before it is given up, and the backoff between them (seconds)
MAX_ATTEMPTS = 8
BACKOFF_BASE = 0.5
BACKOFF_CAP = 300.0
#: how long a claimed notification is held by the worker delivering it, at least (a worker
#: killed mid-delivery delays the next attempt by this much)
CLAIM_SECONDS = 5.0

NEEDS_PERSON = "run.needs_person"
ESCALATED = "approval.escalated"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One attempt's outcome. Not ``delivered`` and not ``retry``: the receiver refused it
    for good (a 4xx, a forbidden target), and retrying would not change that."""

    delivered: bool
    retry: bool = False
    error: str | None = None
    #: the receiver asked to wait at least this long (seconds) before trying again
    retry_after: float | None = None


@runtime_checkable
class Notifier(Protocol):
    """Delivers one notification (a webhook, a chat message), once per call: the pump that
    calls it owns retries, so a notifier never sleeps or loops."""

    async def deliver(self, notification: Notification) -> Delivery: ...


def approval_notification(approval: Approval | NewApproval, event: str, at: float) -> Notification:
    """What people are told about ``approval`` at time ``at``: ``run.needs_person`` when it is
    asked, ``approval.escalated`` when nobody decided by its deadline."""
    escalated = event == ESCALATED
    notification_id = f"{approval.id}:{'escalated' if escalated else 'needs_person'}"
    return Notification(
        id=notification_id,
        topic=event,
        tenant=approval.tenant,
        body={
            "id": notification_id,
            "event": event,
            "approval": {
                "id": approval.id,
                "run_id": approval.run_id,
                "tenant": approval.tenant,
                "kind": approval.kind,
                "question": approval.question,
                "details": approval.details,
                "expires_at": approval.expires_at,
                "created_at": getattr(approval, "created_at", at),
                "escalated_at": at if escalated else None,
            },
        },
    )


class NotificationPump:
    """Drains the outbox through one notifier, for one worker."""

    def __init__(
        self,
        store: Store,
        notifier: Notifier,
        *,
        poll_interval: float = 1.0,
        backoff_base: float = BACKOFF_BASE,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        self.store = store
        self.notifier = notifier
        #: a claim outlives one delivery attempt (the notifier's own timeout), twice over
        self.claim_seconds = max(CLAIM_SECONDS, 2 * float(getattr(notifier, "timeout", 10.0)))
        self.poll_interval = poll_interval
        self.backoff_base = backoff_base
        self.max_attempts = max_attempts
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Something was queued: look now rather than at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        """Deliver until cancelled; a store outage only delays delivery."""
        while True:
            try:
                batch = await self.store.claim_notifications(limit=10, hold=self.claim_seconds)
                if batch:
                    await asyncio.gather(*(self._send(n) for n in batch))
                    continue
            except InfrastructureError as exc:
                log.warning("notifications wait: the store is unavailable: %s", exc)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)

    async def drain(self, timeout: float = 5.0) -> None:
        """Deliver what is due now (a test, a worker about to stop)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batch = await self.store.claim_notifications(limit=10, hold=self.claim_seconds)
            if not batch:
                return
            await asyncio.gather(*(self._send(n) for n in batch))

    async def _send(self, notification: Notification) -> None:
        try:
            outcome = await self.notifier.deliver(notification)
        except Exception as exc:  # a notifier's bug must not stop the others
            log.exception("notification %s: the notifier failed", notification.id)
            outcome = Delivery(False, retry=True, error=f"{type(exc).__name__}: {exc}")
        retry_at = None
        if not outcome.delivered and outcome.retry and notification.attempts < self.max_attempts:
            retry_at = time.time() + self._delay(notification.attempts, outcome.retry_after)
            log.warning(
                "notification %s: %s (attempt %d); next attempt in %.1f s",
                notification.id,
                outcome.error,
                notification.attempts,
                retry_at - time.time(),
            )
        elif not outcome.delivered:
            log.error(
                "notification %s: given up after %d attempts: %s",
                notification.id,
                notification.attempts,
                outcome.error,
            )
        await self.store.settle_notification(
            notification.id, delivered=outcome.delivered, error=outcome.error, retry_at=retry_at
        )

    def _delay(self, attempts: int, retry_after: float | None) -> float:
        jitter = random.uniform(0, min(BACKOFF_CAP, self.backoff_base * 2 ** (attempts - 1)))
        return max(jitter, retry_after or 0.0)
