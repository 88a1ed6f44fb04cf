"""A circuit breaker per endpoint, shared by every run in the process.

When an endpoint keeps failing, sending it more requests only adds load and burns each run's
retries; the breaker stops admitting calls for a cooldown, then lets exactly one probe through.
The probe's outcome decides: success closes the breaker, failure opens it again for twice as
long (up to a ceiling). Runs that are refused are parked by the gateway until ``retry_at()``
instead of failing.

A call holds a ``Permit`` and reports how it went. Only the caller knows whether an error says
anything about the endpoint's health (a timeout does, a bad request does not), so the breaker
never inspects exceptions: ``failure()`` counts, ``success()`` heals, ``release()`` is neutral.
The usual pattern::

    permit = breaker.acquire()
    if permit is None:
        park_until(breaker.retry_at())
    with permit:  # leaving the block without an outcome releases: a cancelled probe frees its slot
        try:
            response = await send()
        except ProviderError as exc:
            if exc.error_class.retryable:
                permit.failure()
            raise
        permit.success()

Outcomes are applied only to the state they were admitted in: a slow call admitted before the
breaker opened cannot re-open it, extend its cooldown, or close it again when it finally answers.

Across a fleet, a breaker that opens on one worker's failures (``on_open`` tells the gateway)
is held open on the others with ``hold_open`` for the rest of its cooldown; each then probes on
its own, and a failed probe doubles the cooldown the fleet shared. A held breaker is marked
``held`` in its snapshot: the worker whose failures opened it is the one that reports it.

Every method takes a plain ``threading.Lock`` for a few dictionary-free assignments and never
awaits, so the breaker is safe to share between an event loop and threads and costs next to
nothing on the hot path (a closed breaker does not even read the clock).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType

__all__ = ["BreakerRegistry", "BreakerSnapshot", "BreakerState", "CircuitBreaker", "Permit"]

Clock = Callable[[], float]


class BreakerState(StrEnum):
    """Whether an endpoint is taking calls."""

    #: calls flow; consecutive failures are counted
    CLOSED = "closed"
    #: calls are refused until the cooldown ends
    OPEN = "open"
    #: the cooldown ended; one probe at a time may test the endpoint
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerSnapshot:
    """A breaker's state at one moment, for metrics, ``kernos`` commands and the dashboard.

    Times are readings of the breaker's clock (``time.monotonic`` unless injected).
    """

    state: BreakerState
    consecutive_failures: int
    #: when the breaker last opened (or re-opened after a failed probe); None while closed
    opened_at: float | None
    #: when a call may next be admitted; None if one may be now
    retry_at: float | None
    #: seconds the current (or next) open period lasts
    cooldown: float
    probes_in_flight: int
    #: the current open period was learned from another worker (``hold_open``), not seen here
    held: bool = False


class Permit:
    """The right to make one call, and the channel to report how it went.

    The first of ``success()``, ``failure()`` or ``release()`` decides; later calls do nothing,
    so a ``finally: permit.release()`` after an explicit outcome is harmless. Used as a context
    manager it releases on exit (whether or not the block raised) unless an outcome was already
    reported: an exception alone is not evidence against the endpoint.

    A half-open probe's permit that is garbage-collected without an outcome (a caller's bug)
    frees the probe slot at the breaker's next ``acquire()``, so a lost permit cannot keep an
    endpoint refused for the life of the process.
    """

    __slots__ = ("_breaker", "_done", "_epoch", "probe")

    def __init__(self, breaker: CircuitBreaker, epoch: int, *, probe: bool) -> None:
        self._breaker = breaker
        self._epoch = epoch
        self._done = False
        #: this call is the half-open probe whose outcome decides the breaker's state
        self.probe = probe

    def success(self) -> None:
        """The endpoint answered: reset the failure count, or close the breaker after a probe."""
        self._breaker._record(self, _SUCCESS)

    def failure(self) -> None:
        """The endpoint failed in a way that says it is unhealthy (timeout, 5xx, overloaded...)."""
        self._breaker._record(self, _FAILURE)

    def release(self) -> None:
        """Neither: the call was cancelled, or failed for a reason unrelated to the endpoint."""
        self._breaker._record(self, _RELEASE)

    def __enter__(self) -> Permit:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __del__(self) -> None:
        # No lock here: a finaliser may run while this very thread holds it. deque.append is
        # atomic, and the breaker drains the deque under its lock.
        if self.probe and not self._done:
            self._breaker._lost_probes.append(self._epoch)


_SUCCESS, _FAILURE, _RELEASE = 0, 1, 2


class CircuitBreaker:
    """Closed → open after ``failure_threshold`` consecutive failures → half-open after the
    cooldown, admitting one probe at a time → closed on the probe's success, or open again with
    the cooldown doubled (at most ``max_cooldown``) on its failure.

    A success while closed resets the count of consecutive failures. A released probe leaves
    the breaker half-open and the next caller probes.
    """

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        cooldown: float = 5.0,
        max_cooldown: float = 60.0,
        clock: Clock = time.monotonic,
        on_open: Callable[[], None] | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold}")
        if not 0 < cooldown <= max_cooldown:
            raise ValueError(
                f"need 0 < cooldown <= max_cooldown, got cooldown={cooldown!r} "
                f"max_cooldown={max_cooldown!r}"
            )
        self._threshold = failure_threshold
        self._base_cooldown = cooldown
        self._max_cooldown = max_cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._lost_probes: deque[int] = deque()
        # Bumped on every transition; a permit's outcome counts only in the epoch it was issued.
        self._epoch = 0
        self._failures = 0
        self._tripped = False  # open or half-open: which one depends on the clock
        self._cooldown = cooldown
        self._opened_at = 0.0
        self._reopen_at = 0.0
        self._probing = False
        self._held = False  # the current open period came from hold_open
        self._on_open = on_open

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._state(self._clock())

    def acquire(self) -> Permit | None:
        """A permit to call the endpoint now, or ``None`` if the call must wait (see
        ``retry_at``). A permit must always be finished: by an outcome, ``release()`` or ``with``.
        """
        with self._lock:
            if not self._tripped:
                return Permit(self, self._epoch, probe=False)
            self._reclaim_lost_probes()
            if self._probing or self._clock() < self._reopen_at:
                return None
            self._probing = True
            return Permit(self, self._epoch, probe=True)

    def retry_at(self) -> float | None:
        """The clock time at which ``acquire()`` may next admit a call; ``None`` if it may now.

        While a probe is in flight its outcome is unknown, so this answers one cooldown from now:
        a refused caller looks again then, and is never told a time already past.
        """
        with self._lock:
            return self._retry_at(self._clock())

    def snapshot(self) -> BreakerSnapshot:
        with self._lock:
            now = self._clock()
            return BreakerSnapshot(
                state=self._state(now),
                consecutive_failures=self._failures,
                opened_at=self._opened_at if self._tripped else None,
                retry_at=self._retry_at(now),
                cooldown=self._cooldown,
                probes_in_flight=int(self._probing),
                held=self._tripped and self._held,
            )

    def hold_open(self, until: float, *, cooldown: float | None = None) -> bool:
        """Refuse calls until ``until`` (this breaker's clock), then probe as after any cooldown:
        another worker's breaker for the same endpoint is open that long.

        Only ever lengthens the refusal: a breaker already open (or a probe already due) past
        ``until`` is left as it is, and the answer is False. Otherwise the breaker opens, or
        stays open longer; calls in flight, a probe included, no longer decide its state (the
        other worker's evidence is newer). ``cooldown``, the open period's length over there,
        is what a failed probe here doubles, so the fleet backs off together.
        ``on_open`` is not called: this worker did not see the endpoint fail.
        """
        with self._lock:
            now = self._clock()
            if until <= now or (self._tripped and self._reopen_at >= until):
                return False
            self._epoch += 1
            if not self._tripped:
                self._opened_at = now
            self._tripped = True
            self._held = True
            self._probing = False
            self._reopen_at = until
            if cooldown is not None:
                self._cooldown = min(self._max_cooldown, max(self._cooldown, cooldown))
            return True

    def _state(self, now: float) -> BreakerState:
        if not self._tripped:
            return BreakerState.CLOSED
        return BreakerState.OPEN if now < self._reopen_at else BreakerState.HALF_OPEN

    def _retry_at(self, now: float) -> float | None:
        if not self._tripped:
            return None
        self._reclaim_lost_probes()
        if self._probing:
            return now + self._cooldown
        return self._reopen_at if now < self._reopen_at else None

    def _record(self, permit: Permit, outcome: int) -> None:
        with self._lock:
            epoch = self._epoch
            self._record_locked(permit, outcome)
            opened = self._tripped and self._epoch != epoch
        if opened and self._on_open is not None:
            self._on_open()

    def _record_locked(self, permit: Permit, outcome: int) -> None:
        if permit._done:
            return
        permit._done = True
        if permit._epoch != self._epoch:
            return  # admitted before the last transition: stale news about the endpoint
        if permit.probe:
            self._record_probe(outcome)
        elif outcome == _SUCCESS:
            self._failures = 0
        elif outcome == _FAILURE:
            self._failures += 1
            if self._failures >= self._threshold:
                self._open(self._base_cooldown)

    def _record_probe(self, outcome: int) -> None:
        self._probing = False
        if outcome == _SUCCESS:
            self._epoch += 1
            self._tripped = False
            self._held = False
            self._failures = 0
            self._cooldown = self._base_cooldown
        elif outcome == _FAILURE:
            self._failures += 1
            self._open(min(self._max_cooldown, self._cooldown * 2))

    def _open(self, cooldown: float) -> None:
        self._epoch += 1
        self._tripped = True
        self._held = False
        self._cooldown = cooldown
        self._opened_at = self._clock()
        self._reopen_at = self._opened_at + cooldown

    def _reclaim_lost_probes(self) -> None:
        while self._lost_probes:
            if self._lost_probes.popleft() == self._epoch:
                self._probing = False


class BreakerRegistry:
    """One breaker per endpoint, created on first use with the registry's settings.

    The gateway keeps one registry per process so that every run calling an endpoint shares
    what the others learned about it.
    """

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        cooldown: float = 5.0,
        max_cooldown: float = 60.0,
        clock: Clock = time.monotonic,
        on_open: Callable[[], None] | None = None,
    ) -> None:
        """``on_open`` is called (outside any lock) each time one of the breakers opens on
        failures seen in this process: the gateway tells the fleet."""
        # Fail at construction, not at the first call to some endpoint.
        CircuitBreaker(
            failure_threshold=failure_threshold, cooldown=cooldown, max_cooldown=max_cooldown
        )
        self._failure_threshold = failure_threshold
        self._cooldown = cooldown
        self._max_cooldown = max_cooldown
        self._clock = clock
        self._on_open = on_open
        self._lock = threading.Lock()
        self._breakers: dict[str, CircuitBreaker] = {}

    def get(self, endpoint: str) -> CircuitBreaker:
        breaker = self._breakers.get(endpoint)
        if breaker is not None:
            return breaker
        with self._lock:
            breaker = self._breakers.get(endpoint)
            if breaker is None:
                breaker = CircuitBreaker(
                    failure_threshold=self._failure_threshold,
                    cooldown=self._cooldown,
                    max_cooldown=self._max_cooldown,
                    clock=self._clock,
                    on_open=self._on_open,
                )
                self._breakers[endpoint] = breaker
            return breaker

    def snapshot(self) -> dict[str, BreakerSnapshot]:
        with self._lock:
            breakers = list(self._breakers.items())
        return {endpoint: breaker.snapshot() for endpoint, breaker in breakers}
