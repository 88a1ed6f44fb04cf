"""Client-side request and token rate limits per endpoint.

A provider enforces requests-per-minute and tokens-per-minute limits by answering 429. A worker
that knows its limits queues its own calls instead: the run waits a little here rather than
burning an attempt, a retry delay and the endpoint's patience on a request bound to fail.

Each limit is a token bucket holding at most one minute's allowance and refilling continuously.
Callers are served strictly first come, first served: a large request at the head of the queue
is not overtaken by small ones behind it, and one larger than a whole minute's allowance goes
out when the bucket is full (running it into debt) rather than never. The estimate of a call's
tokens is corrected with ``settle`` once the provider reports real usage, and a provider's
``retry-after`` becomes ``pause_until``, which holds back every caller in the process.

In a fleet of workers the configured limits are the fleet's: each worker's limiter admits its
share of them, and ``set_rates`` changes that share in place as workers come and go, without
reordering or dropping the callers already queued. A pause another worker was given reaches
this limiter through ``pause_until`` as well (see the gateway's ``_fleet``).

The limiter lives on one event loop and never blocks it: the only timer is the one that wakes
the head of the queue (plus one per waiter that has a deadline), there is no polling, and the
unlimited case returns without touching the queue.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

__all__ = ["LimitWouldExceedDeadline", "LimiterSnapshot", "RateLimiter"]

Clock = Callable[[], float]

# A waiter due within this many seconds is admitted now: float error in refill arithmetic must
# not turn one wake-up into a burst of sub-microsecond timers.
_TOLERANCE = 1e-6


class LimitWouldExceedDeadline(Exception):
    """The rate limits cannot admit the call before its deadline; nothing was consumed.

    Internal to the gateway, which answers it by falling back to another model or parking the
    run; it never reaches agent code. ``admit_at`` is the clock time at which the call could
    have gone out as far as the limiter could tell (``None`` when the deadline passed while the
    call was queued).
    """

    def __init__(self, deadline: float, admit_at: float | None) -> None:
        self.deadline = deadline
        self.admit_at = admit_at
        when = "later" if admit_at is None else f"at {admit_at:.3f}"
        super().__init__(
            f"the rate limit admits this call {when}, after its deadline {deadline:.3f}"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class LimiterSnapshot:
    """A limiter's state at one moment, for metrics and the dashboard. ``None`` availability
    means that limit is off; times are readings of the limiter's clock."""

    requests_available: float | None
    tokens_available: float | None
    queued: int
    queued_tokens: int
    #: no call goes out before this time (a provider's retry-after); None if not paused
    paused_until: float | None


class _Bucket:
    __slots__ = ("capacity", "level", "rate")

    def __init__(self, per_minute: float) -> None:
        self.capacity = per_minute
        self.rate = per_minute / 60.0
        self.level = per_minute

    def need(self, amount: float) -> float:
        """What must be in the bucket to take ``amount``: more than a full bucket never is."""
        return min(amount, self.capacity)

    def seconds_until(self, amount: float, ahead: float = 0.0) -> float:
        """Until ``amount`` can be taken after ``ahead`` was taken by those queued before."""
        return (ahead + self.need(amount) - self.level) / self.rate


class _Status(Enum):
    WAITING = 1
    ADMITTED = 2
    REJECTED = 3
    DROPPED = 4


class _Waiter:
    __slots__ = ("deadline", "deadline_timer", "future", "status", "tokens")

    def __init__(self, tokens: int, deadline: float | None, future: asyncio.Future[None]) -> None:
        self.tokens = tokens
        self.deadline = deadline
        self.future = future
        self.status = _Status.WAITING
        self.deadline_timer: asyncio.TimerHandle | None = None


def _check(name: str, value: float | None) -> None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive number or None (no limit), got {value!r}")


def _per_minute(name: str, value: float | None) -> _Bucket | None:
    _check(name, value)
    return None if value is None else _Bucket(value)


def _resized(name: str, bucket: _Bucket | None, value: float | None) -> _Bucket | None:
    """``bucket`` at a new capacity and rate, keeping what it holds up to the new capacity."""
    if bucket is None or value is None:
        return _per_minute(name, value)
    bucket.capacity = value
    bucket.rate = value / 60.0
    bucket.level = min(bucket.level, value)
    return bucket


class RateLimiter:
    """Requests-per-minute and tokens-per-minute limits of one endpoint, for one event loop.

    ``rpm=None`` or ``tpm=None`` turns that limit off; with both off ``acquire`` costs one clock
    reading (a provider's pause still applies). Not thread-safe: use it from the loop that runs
    the gateway. ``clock`` is injectable so that deadlines and pauses are read on the caller's
    clock, but it must tick in real seconds: waits are asyncio timers.
    """

    def __init__(
        self, *, rpm: float | None, tpm: float | None, clock: Clock = time.monotonic
    ) -> None:
        self._requests = _per_minute("rpm", rpm)
        self._tokens = _per_minute("tpm", tpm)
        self._unlimited = self._requests is None and self._tokens is None
        self._clock = clock
        self._updated = clock()
        self._paused_until = -math.inf
        self._queue: deque[_Waiter] = deque()
        self._live = 0  # waiters still WAITING (the queue may also hold finished ones)
        self._queued_tokens = 0
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def acquire(self, tokens: int, *, deadline: float | None = None) -> float:
        """Wait until a call of ``tokens`` (estimated) tokens may go out; return seconds waited.

        Raises ``LimitWouldExceedDeadline``, having consumed nothing, when the call cannot be
        admitted by ``deadline`` (a clock time): at once if the queue ahead, the buckets and any
        pause already say so, otherwise when the deadline arrives with the call still queued.
        Cancelled while waiting, the call leaves the queue and consumes nothing; the callers
        behind it move up.
        """
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens}")
        now = self._clock()
        if deadline is not None and now > deadline:
            raise LimitWouldExceedDeadline(deadline, None)
        if not self._live and now >= self._paused_until:
            if self._unlimited:
                return 0.0
            self._refill(now)
            if self._seconds_until(tokens, now) <= _TOLERANCE:
                self._take(tokens)
                return 0.0
        if deadline is not None:
            self._refill(now)
            admit_at = self._admission_at(tokens, now, self._live, self._queued_tokens)
            if admit_at > deadline:
                raise LimitWouldExceedDeadline(deadline, admit_at)
        return await self._wait(tokens, deadline, now)

    def settle(self, estimated: int, actual: int) -> None:
        """Correct the token bucket once a call's real usage is known: give back what the
        estimate passed to ``acquire`` overstated, or take what it understated (which may leave
        the bucket in debt, delaying the next callers)."""
        if estimated < 0 or actual < 0:
            raise ValueError(f"token counts must be >= 0, got {estimated} and {actual}")
        if self._tokens is None or estimated == actual:
            return
        self._refill(self._clock())
        self._tokens.level = min(self._tokens.capacity, self._tokens.level + estimated - actual)
        if self._live:
            self._dispatch()

    def pause_until(self, when: float) -> bool:
        """Send nothing before ``when`` (a clock time): the provider said so with a 429 (to this
        process, or to another worker of the fleet).

        Queued and new callers wait; queued callers whose deadline the pause now makes
        impossible are rejected at once rather than at their deadline. A pause never shortens
        an earlier, longer one. True if this call lengthened the pause.
        """
        if when <= self._paused_until:
            return False
        self._paused_until = when
        if self._live:
            self._reject_hopeless()
            self._dispatch()
        return True

    def set_rates(self, *, rpm: float | None, tpm: float | None) -> None:
        """Change the limits in place: the share of a provider's limits this process may use
        changed (another worker joined the fleet, or one left).

        Queued callers keep their places and their deadlines. Each bucket keeps what it holds,
        up to its new capacity: a shrinking share takes effect at once, a growing one refills
        at the new rate (no burst). Queued callers whose deadline the new rates make impossible
        are rejected at once, as by ``pause_until``. A limit that was off (or is turned off)
        starts full (or is dropped).
        """
        _check("rpm", rpm)
        _check("tpm", tpm)
        self._refill(self._clock())
        self._requests = _resized("rpm", self._requests, rpm)
        self._tokens = _resized("tpm", self._tokens, tpm)
        self._unlimited = self._requests is None and self._tokens is None
        if self._live:
            self._reject_hopeless()
            if self._live:
                self._dispatch()

    def rates(self) -> tuple[float | None, float | None]:
        """The requests and tokens per minute this limiter admits now (None: that limit is
        off)."""
        return (
            None if self._requests is None else self._requests.capacity,
            None if self._tokens is None else self._tokens.capacity,
        )

    def snapshot(self) -> LimiterSnapshot:
        now = self._clock()
        self._refill(now)
        return LimiterSnapshot(
            requests_available=None if self._requests is None else self._requests.level,
            tokens_available=None if self._tokens is None else self._tokens.level,
            queued=self._live,
            queued_tokens=self._queued_tokens,
            paused_until=self._paused_until if self._paused_until > now else None,
        )

    async def _wait(self, tokens: int, deadline: float | None, start: float) -> float:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._live:
                raise RuntimeError(
                    "RateLimiter used from two event loops at once: give each loop its own"
                )
            self._loop = loop
        waiter = _Waiter(tokens, deadline, loop.create_future())
        self._queue.append(waiter)
        self._live += 1
        self._queued_tokens += tokens
        if deadline is not None:
            waiter.deadline_timer = loop.call_later(deadline - start, self._expire, waiter)
        if self._live == 1:
            self._dispatch()
        try:
            await waiter.future
        except asyncio.CancelledError:
            self._abandon(waiter)
            raise
        if waiter.status is _Status.REJECTED:
            assert deadline is not None
            raise LimitWouldExceedDeadline(deadline, None)
        return self._clock() - start

    def _refill(self, now: float) -> None:
        elapsed = now - self._updated
        if elapsed <= 0:
            return
        self._updated = now
        for bucket in (self._requests, self._tokens):
            if bucket is not None:
                bucket.level = min(bucket.capacity, bucket.level + elapsed * bucket.rate)

    def _seconds_until(self, tokens: int, now: float) -> float:
        """Until the head of the queue, asking for ``tokens``, may go (buckets refilled)."""
        wait = self._paused_until - now
        if self._requests is not None:
            wait = max(wait, self._requests.seconds_until(1))
        if self._tokens is not None:
            wait = max(wait, self._tokens.seconds_until(tokens))
        return wait

    def _admission_at(
        self, tokens: int, now: float, requests_ahead: int, tokens_ahead: int
    ) -> float:
        """The earliest time a call could go out after those ahead of it took their share
        (buckets refilled to ``now``). A bucket cannot fill beyond its capacity, so the estimate
        may be early but is never late: a call it refuses could not have made its deadline."""
        at = max(now, self._paused_until)
        if self._requests is not None:
            at = max(at, now + self._requests.seconds_until(1, requests_ahead))
        if self._tokens is not None:
            at = max(at, now + self._tokens.seconds_until(tokens, tokens_ahead))
        return at

    def _take(self, tokens: int) -> None:
        if self._requests is not None:
            self._requests.level -= 1
        if self._tokens is not None:
            self._tokens.level -= tokens

    def _dispatch(self) -> None:
        """Admit waiters from the head while the limits allow, then arm one timer for the next."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        now = self._clock()
        self._refill(now)
        queue = self._queue
        while queue:
            head = queue[0]
            if head.status is not _Status.WAITING:
                queue.popleft()
                continue
            if head.future.cancelled():  # its task has not yet run its clean-up
                self._finish(queue.popleft(), _Status.DROPPED)
                continue
            wait = self._seconds_until(head.tokens, now)
            if wait > _TOLERANCE:
                assert self._loop is not None
                self._timer = self._loop.call_later(wait, self._on_timer)
                return
            self._take(head.tokens)
            self._finish(queue.popleft(), _Status.ADMITTED)

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    def _finish(self, waiter: _Waiter, status: _Status) -> None:
        waiter.status = status
        self._live -= 1
        self._queued_tokens -= waiter.tokens
        if waiter.deadline_timer is not None:
            waiter.deadline_timer.cancel()
        if not waiter.future.done():
            waiter.future.set_result(None)
        if not self._live:
            self._queue.clear()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _first_live(self) -> _Waiter | None:
        queue = self._queue
        while queue and queue[0].status is not _Status.WAITING:
            queue.popleft()
        return queue[0] if queue else None

    def _expire(self, waiter: _Waiter) -> None:
        if waiter.status is not _Status.WAITING:
            return
        # A call due exactly at its deadline is admitted, whichever timer the loop ran first.
        self._dispatch()
        if waiter.status is _Status.WAITING:
            self._remove(waiter, _Status.REJECTED)

    def _abandon(self, waiter: _Waiter) -> None:
        if waiter.status is _Status.WAITING:
            self._remove(waiter, _Status.DROPPED)
        elif waiter.status is _Status.ADMITTED:
            # Cancelled between admission and resuming: the call will not be sent.
            self._refill(self._clock())
            for bucket, amount in ((self._requests, 1), (self._tokens, waiter.tokens)):
                if bucket is not None:
                    bucket.level = min(bucket.capacity, bucket.level + amount)
            if self._live:
                self._dispatch()

    def _remove(self, waiter: _Waiter, status: _Status) -> None:
        """Take a waiter out of the queue; if it was the head, the next one may go now."""
        was_head = self._first_live() is waiter
        self._finish(waiter, status)
        if was_head and self._live:
            self._dispatch()

    def _reject_hopeless(self) -> None:
        """Reject queued callers that cannot go out before their deadline, walking the queue as
        ``acquire`` does, so that each rejection moves the ones behind it up."""
        now = self._clock()
        self._refill(now)
        requests_ahead = 0
        tokens_ahead = 0
        for waiter in list(self._queue):
            if waiter.status is not _Status.WAITING:
                continue
            at = self._admission_at(waiter.tokens, now, requests_ahead, tokens_ahead)
            if waiter.deadline is not None and at > waiter.deadline:
                self._finish(waiter, _Status.REJECTED)
                continue
            requests_ahead += 1
            tokens_ahead += waiter.tokens
