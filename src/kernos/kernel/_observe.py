"""What a worker tells its observers (traces, metrics): facts, after they are committed.

The journal is the record; an observer sees each event once, when the worker that wrote it has
committed it, so a step answered from the journal on replay is never observed twice, and
nothing is observed that did not happen. Observers are called inline on the worker's event
loop: they must be cheap and must not block (queue work, as an OpenTelemetry batch processor
does). With no observer, the cost is one ``is None`` test per commit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from kernos.store import Event, Run

log = logging.getLogger("kernos.observe")


@runtime_checkable
class Observer(Protocol):
    def committed(self, run: Run, events: Sequence[Event]) -> None:
        """``events`` of ``run`` were just committed by this worker."""
        ...

    def claimed(self, run: Run, waited: float) -> None:
        """This worker claimed ``run``, ``waited`` seconds after it became ready."""
        ...

    def leases(self, renewed: int, lost: int) -> None:
        """A heartbeat renewed ``renewed`` leases and found ``lost`` lost."""
        ...


class Observers:
    """Several observers as one; an observer that raises is logged, never fatal."""

    def __init__(self, observers: Sequence[Observer]) -> None:
        self.observers = tuple(observers)

    def committed(self, run: Run, events: Sequence[Event]) -> None:
        for o in self.observers:
            safely(o.committed, run, events)

    def claimed(self, run: Run, waited: float) -> None:
        for o in self.observers:
            safely(o.claimed, run, waited)

    def leases(self, renewed: int, lost: int) -> None:
        for o in self.observers:
            safely(o.leases, renewed, lost)


def safely(fn: Callable[..., object], *args: object) -> None:
    """Call an observer: its failure is logged, never the worker's or a run's."""
    try:
        fn(*args)
    except Exception:  # observing must never break a run
        log.exception("an observer failed")
