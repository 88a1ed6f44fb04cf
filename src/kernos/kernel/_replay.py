"""The journal seen from the agent's code: what was recorded at each step position.

Every durable ``ctx`` call takes the next position (1, 2, 3, ...) in the order the code makes
them; replaying deterministic code makes the same calls in the same order. ``History.at``
returns what the journal holds for a position and checks that it is the same kind of call with
the same name (guarantee 8).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from kernos.errors import DeterminismError
from kernos.kernel._calls import call_kinds
from kernos.store import Event

#: event type -> the kind of ctx call that writes it (``step``, ``sleep``, ...)
KIND_OF = {
    "step_attempt_failed": "step",
    "step_completed": "step",
    "step_failed": "step",
    "timer_started": "sleep",
    "timer_fired": "sleep",
    "message_wait": "wait_for_message",
    "message_received": "wait_for_message",
    "message_timeout": "wait_for_message",
    "child_spawned": "spawn",
    "child_result": "child_result",
    "value": "value",
    "message_sent": "send",
    "message_taken": "receive",
    "mailbox_empty": "receive",
    "note": "note",
    "approval_requested": "approval",
    "approval_escalated": "approval",
    "approval_decided": "approval",
    "memory_put": "memory_put",
    "memory_search": "memory_search",
    **call_kinds(),
}
CANCEL_DELIVERED = "cancel_delivered"


class History:
    """The recorded events of one run, by step position."""

    def __init__(self, events: Sequence[Event]) -> None:
        self._by_step: dict[int, list[Event]] = defaultdict(list)
        self.last_seq = 0
        self.last_step = 0
        for ev in events:
            self.last_seq = max(self.last_seq, ev.seq)
            if ev.step is not None:
                self._by_step[ev.step].append(ev)
                self.last_step = max(self.last_step, ev.step)
        self.events = list(events)

    def cancel_at(self, position: int) -> bool:
        return any(ev.type == CANCEL_DELIVERED for ev in self._by_step.get(position, ()))

    def cancel_delivered(self) -> bool:
        return any(ev.type == CANCEL_DELIVERED for ev in self.events)

    def at(self, position: int, kind: str, name: str) -> list[Event]:
        """Events recorded for ``position``, after checking they belong to this call."""
        recorded = [ev for ev in self._by_step.get(position, ()) if ev.type in KIND_OF]
        if recorded:
            first = recorded[0]
            if KIND_OF[first.type] != kind or first.name != name:
                raise DeterminismError(
                    position,
                    recorded=f"{KIND_OF[first.type]} {first.name!r}",
                    requested=f"{kind} {name!r}",
                )
        return recorded

    def check_finished(self, position: int) -> None:
        """The code returned after ``position`` calls; the journal must not hold more."""
        later = [
            ev
            for step, evs in self._by_step.items()
            if step > position
            for ev in evs
            if ev.type in KIND_OF
        ]
        if later:
            first = min(later, key=lambda ev: ev.seq)
            raise DeterminismError(
                first.step or position + 1,
                recorded=f"{KIND_OF[first.type]} {first.name!r}",
                requested="no further step (the agent returned)",
            )
