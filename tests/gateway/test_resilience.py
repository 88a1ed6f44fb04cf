"""The gateway's resilience primitives: backoff with full jitter and retry-after, the circuit
breaker per endpoint, and client-side rate limits (DESIGN.md, "Gateway", failure handling).

The breaker runs on a fake clock, so its state machine is checked step by step. The limiter
runs on the real loop and clock with rates scaled up (thousands per minute) so that each wait
is a few tens of milliseconds; tests assert only lower bounds on waits and order of admission,
never how fast the machine is.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Awaitable
from datetime import UTC, datetime
from email.utils import format_datetime

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kernos.gateway._backoff import MAX_RETRY_AFTER, backoff_delay, parse_retry_after
from kernos.gateway._breaker import (
    BreakerRegistry,
    BreakerSnapshot,
    BreakerState,
    CircuitBreaker,
    Permit,
)
from kernos.gateway._limits import LimiterSnapshot, LimitWouldExceedDeadline, RateLimiter

# --- backoff ------------------------------------------------------------------------------


@given(
    attempt=st.integers(1, 2000),
    base=st.floats(0, 100),
    cap=st.floats(0, 1000),
    rand=st.floats(0, 1, exclude_max=True),
)
def test_backoff_is_full_jitter_under_the_exponential_ceiling(
    attempt: int, base: float, cap: float, rand: float
) -> None:
    delay = backoff_delay(attempt, base=base, cap=cap, rand=rand)
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, 1023))
    assert 0 <= delay <= cap
    assert delay == pytest.approx(rand * ceiling)


def test_backoff_doubles_per_attempt_up_to_the_cap() -> None:
    delays = [backoff_delay(n, base=0.5, cap=30.0, rand=0.5) for n in range(1, 10)]
    assert delays == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0, 15.0]
    assert backoff_delay(10_000, rand=0.999) == pytest.approx(0.999 * 30.0)


def test_backoff_is_a_function_of_its_arguments() -> None:
    """Replay gets the same delays when it passes the same journaled random draw."""
    first = [backoff_delay(n, rand=r) for n, r in [(1, 0.1), (2, 0.7), (5, 0.33)]]
    again = [backoff_delay(n, rand=r) for n, r in [(1, 0.1), (2, 0.7), (5, 0.33)]]
    assert first == again
    assert backoff_delay(3, rand=0.0) == 0.0


@given(
    attempt=st.integers(1, 50),
    rand=st.floats(0, 1, exclude_max=True),
    retry_after=st.floats(0, 7200),
)
def test_backoff_never_undercuts_retry_after(attempt: int, rand: float, retry_after: float) -> None:
    delay = backoff_delay(attempt, rand=rand, retry_after=retry_after)
    assert delay >= retry_after
    assert delay == max(retry_after, backoff_delay(attempt, rand=rand))


def test_retry_after_beyond_the_cap_is_still_honoured() -> None:
    assert backoff_delay(1, cap=30.0, retry_after=120.0, rand=0.9) == 120.0
    assert backoff_delay(3, retry_after=float("nan"), rand=0.5) == 1.0


@pytest.mark.parametrize(
    ("attempt", "rand", "base"), [(0, 0.5, 0.5), (1, 1.0, 0.5), (1, -0.1, 0.5), (1, 0.5, -1.0)]
)
def test_backoff_refuses_nonsense(attempt: int, rand: float, base: float) -> None:
    with pytest.raises(ValueError):
        backoff_delay(attempt, base=base, rand=rand)


NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "1500"}, 1.5),
        ({"Retry-After-Ms": "250.5"}, 0.2505),
        ({"retry-after": "7"}, 7.0),
        ({"RETRY-AFTER": "2.5"}, 2.5),
        ({" retry-after": "7"}, None),
        ({"retry-after": " 3 "}, 3.0),
        ({"retry-after-ms": "500", "retry-after": "9"}, 0.5),
        ({"retry-after": "9", "retry-after-ms": "500"}, 0.5),
        ({"retry-after-ms": "soon", "retry-after": "9"}, 9.0),
        ({"retry-after": "Sat, 01 Mar 2025 12:00:30 GMT"}, 30.0),
        ({"retry-after": "Sat, 01 Mar 2025 11:59:00 GMT"}, 0.0),
        ({"retry-after": "Sat, 01 Mar 2025 12:01:00 -0000"}, 60.0),
        ({"retry-after": "Sat, 01 Mar 2025 13:00:00 +0100"}, 0.0),
        ({"retry-after": "Sun, 02 Mar 2025 12:00:00 GMT"}, MAX_RETRY_AFTER),
        ({"retry-after": "99999999"}, MAX_RETRY_AFTER),
        ({"retry-after-ms": "86400000"}, MAX_RETRY_AFTER),
        ({"retry-after": "0"}, 0.0),
        ({"retry-after": "soon"}, None),
        ({"retry-after": ""}, None),
        ({"retry-after": "-5"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "1e3"}, None),
        ({"retry-after": "1_000"}, None),
        ({"retry-after": "Sat, 99 Mar 2025 12:00:30 GMT"}, None),
        ({"retry-after-ms": "-1"}, None),
        ({"content-type": "application/json"}, None),
        ({}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers, now=NOW) == (
        None if expected is None else pytest.approx(expected)
    )


def test_parse_retry_after_reads_real_response_headers() -> None:
    headers = httpx.Headers({"Retry-After": format_datetime(datetime.fromtimestamp(NOW + 12, UTC))})
    assert parse_retry_after(headers, now=NOW) == pytest.approx(12.0)
    assert parse_retry_after(httpx.Headers([("Retry-After-MS", "40")])) == pytest.approx(0.04)


# --- circuit breaker ----------------------------------------------------------------------


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def state_of(breaker: CircuitBreaker) -> BreakerState:
    """The state, read through a call so that mypy does not narrow it across transitions."""
    return breaker.state


def admitted(breaker: CircuitBreaker) -> Permit:
    permit = breaker.acquire()
    assert permit is not None, f"breaker refused a call: {breaker.snapshot()}"
    return permit


def fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        admitted(breaker).failure()


def open_breaker(clock: FakeClock) -> CircuitBreaker:
    breaker = CircuitBreaker(failure_threshold=3, cooldown=5.0, max_cooldown=60.0, clock=clock)
    fail(breaker, 3)
    assert state_of(breaker) is BreakerState.OPEN
    return breaker


def test_breaker_opens_after_consecutive_failures_only() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, clock=clock)
    fail(breaker, 2)
    admitted(breaker).success()
    fail(breaker, 2)
    assert state_of(breaker) is BreakerState.CLOSED
    assert breaker.snapshot().consecutive_failures == 2
    assert breaker.retry_at() is None
    fail(breaker, 1)
    assert state_of(breaker) is BreakerState.OPEN
    assert breaker.acquire() is None
    assert breaker.retry_at() == clock.now + 5.0


def test_open_breaker_turns_half_open_after_the_cooldown_and_a_probe_success_closes_it() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.advance(4.999)
    assert breaker.acquire() is None
    clock.advance(0.001)
    assert state_of(breaker) is BreakerState.HALF_OPEN
    assert breaker.retry_at() is None
    probe = admitted(breaker)
    assert probe.probe
    assert breaker.acquire() is None, "half-open admits one probe at a time"
    retry_at = breaker.retry_at()
    assert retry_at is not None and retry_at > clock.now
    probe.success()
    assert state_of(breaker) is BreakerState.CLOSED
    snap = breaker.snapshot()
    assert (snap.consecutive_failures, snap.cooldown, snap.opened_at) == (0, 5.0, None)
    assert not admitted(breaker).probe


def test_failed_probes_double_the_cooldown_up_to_the_ceiling_and_success_resets_it() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    cooldowns = []
    for _ in range(6):
        clock.advance(breaker.snapshot().cooldown)
        admitted(breaker).failure()
        snap = breaker.snapshot()
        assert snap.state is BreakerState.OPEN
        assert snap.opened_at == clock.now
        assert snap.retry_at == clock.now + snap.cooldown
        cooldowns.append(snap.cooldown)
    assert cooldowns == [10.0, 20.0, 40.0, 60.0, 60.0, 60.0]
    clock.advance(60.0)
    admitted(breaker).success()
    fail(breaker, 3)
    assert breaker.snapshot().cooldown == 5.0


def test_a_released_probe_leaves_the_breaker_half_open_for_the_next_caller() -> None:
    """An error that says nothing about the endpoint (a bad request, a cancelled call) is
    neither a failure nor a success."""
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.advance(5.0)
    probe = admitted(breaker)
    probe.release()
    probe.failure()  # too late: the first outcome decides
    assert state_of(breaker) is BreakerState.HALF_OPEN
    assert breaker.snapshot().probes_in_flight == 0
    admitted(breaker).success()
    assert state_of(breaker) is BreakerState.CLOSED


def test_permit_outcomes_are_idempotent() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=2, clock=clock)
    permit = admitted(breaker)
    permit.failure()
    permit.failure()
    permit.release()
    assert breaker.snapshot().consecutive_failures == 1
    assert state_of(breaker) is BreakerState.CLOSED


def test_leaving_a_permit_block_by_an_exception_releases_it() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=2, clock=clock)
    for _ in range(5):
        with pytest.raises(KeyError), admitted(breaker):
            raise KeyError("the caller's own bug")
    assert state_of(breaker) is BreakerState.CLOSED
    with admitted(breaker) as permit:
        permit.failure()
    with admitted(breaker) as permit:
        permit.failure()
    assert state_of(breaker) is BreakerState.OPEN


async def test_a_cancelled_probe_frees_the_slot() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.advance(5.0)
    started = asyncio.Event()

    async def probe_call() -> None:
        with admitted(breaker):
            started.set()
            await asyncio.Event().wait()  # a provider that never answers

    task = asyncio.create_task(probe_call())
    await started.wait()
    assert breaker.acquire() is None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.snapshot().probes_in_flight == 0
    assert admitted(breaker).probe


def test_a_lost_probe_permit_frees_the_slot_when_collected() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.advance(5.0)
    lost = admitted(breaker)
    assert breaker.acquire() is None
    del lost
    gc.collect()
    assert admitted(breaker).probe


def test_outcomes_of_calls_admitted_before_the_breaker_opened_are_ignored() -> None:
    """A slow call admitted while closed must not extend the cooldown, nor close the breaker
    by succeeding late, nor spoil the probe's verdict."""
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, cooldown=5.0, clock=clock)
    slow = [admitted(breaker) for _ in range(6)]
    for permit in slow[:3]:
        permit.failure()
    before = breaker.snapshot()
    assert before.state is BreakerState.OPEN
    clock.advance(1.0)
    slow[3].failure()
    slow[4].success()
    assert breaker.snapshot() == before
    clock.advance(4.0)
    probe = admitted(breaker)
    slow[5].failure()
    probe.success()
    assert state_of(breaker) is BreakerState.CLOSED
    assert breaker.snapshot().consecutive_failures == 0


def test_one_probe_under_concurrent_callers() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.advance(5.0)
    threads = 32
    barrier = threading.Barrier(threads)
    permits: list[Permit | None] = []
    lock = threading.Lock()

    def call() -> None:
        barrier.wait()
        permit = breaker.acquire()
        with lock:
            permits.append(permit)

    workers = [threading.Thread(target=call) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    granted = [p for p in permits if p is not None]
    assert len(permits) == threads
    assert len(granted) == 1 and granted[0].probe
    assert breaker.snapshot().probes_in_flight == 1


async def test_one_probe_among_concurrent_tasks() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.advance(5.0)
    outcomes: list[str] = []
    gate = asyncio.Event()

    async def call() -> None:
        permit = breaker.acquire()
        if permit is None:
            outcomes.append("refused")
            return
        with permit:
            await gate.wait()
            permit.success()
            outcomes.append("probe")

    tasks = [asyncio.create_task(call()) for _ in range(20)]
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(*tasks)
    assert sorted(outcomes) == ["probe"] + ["refused"] * 19
    assert state_of(breaker) is BreakerState.CLOSED


def test_snapshot_describes_the_breaker() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    opened = clock.now
    assert breaker.snapshot() == BreakerSnapshot(
        state=BreakerState.OPEN,
        consecutive_failures=3,
        opened_at=opened,
        retry_at=opened + 5.0,
        cooldown=5.0,
        probes_in_flight=0,
    )
    clock.advance(6.0)
    probe = admitted(breaker)
    snap = breaker.snapshot()
    assert (snap.state, snap.probes_in_flight) == (BreakerState.HALF_OPEN, 1)
    assert snap.retry_at == clock.now + 5.0
    assert BreakerState("half_open") is BreakerState.HALF_OPEN
    probe.release()


@pytest.mark.parametrize(
    "kwargs",
    [{"failure_threshold": 0}, {"cooldown": 0.0}, {"cooldown": 10.0, "max_cooldown": 5.0}],
)
def test_breaker_refuses_nonsense_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        BreakerRegistry(**kwargs)  # type: ignore[arg-type]


def test_registry_shares_one_breaker_per_endpoint() -> None:
    clock = FakeClock()
    registry = BreakerRegistry(failure_threshold=2, cooldown=3.0, clock=clock)
    a = registry.get("openai:https://api.openai.com/v1")
    assert registry.get("openai:https://api.openai.com/v1") is a
    b = registry.get("anthropic:https://api.anthropic.com")
    assert b is not a
    fail(a, 2)
    snaps = registry.snapshot()
    assert set(snaps) == {"openai:https://api.openai.com/v1", "anthropic:https://api.anthropic.com"}
    assert snaps["openai:https://api.openai.com/v1"].state is BreakerState.OPEN
    assert snaps["openai:https://api.openai.com/v1"].retry_at == clock.now + 3.0
    assert snaps["anthropic:https://api.anthropic.com"].state is BreakerState.CLOSED


def test_registry_creates_one_breaker_under_concurrent_first_use() -> None:
    registry = BreakerRegistry()
    threads = 16
    barrier = threading.Barrier(threads)
    seen: list[CircuitBreaker] = []

    def get() -> None:
        barrier.wait()
        seen.append(registry.get("vllm:http://gpu-1:8000/v1"))

    workers = [threading.Thread(target=get) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(seen) == threads
    assert len({id(b) for b in seen}) == 1


# --- a breaker held open for the fleet -----------------------------------------------------


def test_a_breaker_held_open_refuses_until_then_and_probes_afterwards() -> None:
    """Another worker's breaker is open: this one refuses calls as long, then probes itself."""
    clock = FakeClock()
    opened: list[int] = []
    breaker = CircuitBreaker(cooldown=5.0, clock=clock, on_open=lambda: opened.append(1))
    assert breaker.hold_open(clock.now + 8.0, cooldown=5.0)
    snap = breaker.snapshot()
    assert (snap.state, snap.retry_at, snap.held, snap.opened_at) == (
        BreakerState.OPEN,
        clock.now + 8.0,
        True,
        clock.now,
    )
    assert breaker.acquire() is None
    clock.advance(8.0)
    probe = admitted(breaker)
    assert probe.probe and breaker.acquire() is None
    probe.success()
    assert state_of(breaker) is BreakerState.CLOSED and not breaker.snapshot().held
    assert opened == []  # nothing failed here: nothing for this worker to tell the fleet


def test_holding_open_never_shortens_a_refusal() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)  # open until now + 5
    assert not breaker.hold_open(clock.now + 2.0)
    assert not breaker.hold_open(clock.now - 1.0)
    assert breaker.retry_at() == clock.now + 5.0 and not breaker.snapshot().held
    assert breaker.hold_open(clock.now + 9.0)
    assert breaker.retry_at() == clock.now + 9.0 and breaker.snapshot().held
    closed = CircuitBreaker(clock=clock)
    assert not closed.hold_open(clock.now) and state_of(closed) is BreakerState.CLOSED


def test_a_failed_probe_after_a_held_period_doubles_the_fleets_cooldown() -> None:
    """The fleet backs off together: the cooldown doubled is the other worker's, clamped to
    this breaker's range."""
    clock = FakeClock()
    opened: list[int] = []
    breaker = CircuitBreaker(
        cooldown=5.0, max_cooldown=60.0, clock=clock, on_open=lambda: opened.append(1)
    )
    breaker.hold_open(clock.now + 20.0, cooldown=20.0)
    clock.advance(20.0)
    admitted(breaker).failure()
    snap = breaker.snapshot()
    assert (snap.state, snap.cooldown, snap.held) == (BreakerState.OPEN, 40.0, False)
    assert snap.retry_at == clock.now + 40.0
    assert opened == [1]  # this failure was seen here: news for the fleet
    breaker.hold_open(clock.now + 100.0, cooldown=500.0)
    assert breaker.snapshot().cooldown == 60.0


def test_holding_open_makes_calls_in_flight_stale_news() -> None:
    """A probe (or any call) admitted before the breaker was held open cannot close it."""
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.advance(5.0)
    probe = admitted(breaker)
    assert breaker.hold_open(clock.now + 10.0)
    probe.success()
    assert state_of(breaker) is BreakerState.OPEN and breaker.retry_at() == clock.now + 10.0
    fresh = CircuitBreaker(failure_threshold=1, clock=clock)
    late = admitted(fresh)
    fresh.hold_open(clock.now + 1.0)
    late.failure()
    assert fresh.snapshot().held and fresh.retry_at() == clock.now + 1.0


def test_only_failures_seen_here_call_on_open() -> None:
    clock = FakeClock()
    opened: list[str] = []
    registry = BreakerRegistry(
        failure_threshold=2, cooldown=1.0, clock=clock, on_open=lambda: opened.append("x")
    )
    breaker = registry.get("oa:m")
    admitted(breaker).failure()
    assert opened == []
    admitted(breaker).failure()
    assert opened == ["x"]
    registry.get("an:m").hold_open(clock.now + 5.0)
    assert opened == ["x"]
    clock.advance(1.0)
    admitted(breaker).failure()  # the failed probe opens it again
    assert opened == ["x", "x"]


class BreakerMachine(RuleBasedStateMachine):
    """Any interleaving of calls, outcomes and time keeps the breaker's promises."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.breaker = CircuitBreaker(
            failure_threshold=3, cooldown=2.0, max_cooldown=16.0, clock=self.clock
        )
        self.permits: list[Permit] = []
        #: admitted before the breaker was last held open: their outcomes must change nothing
        self.stale: list[Permit] = []

    @rule()
    def acquire(self) -> None:
        state = state_of(self.breaker)
        in_flight = self.breaker.snapshot().probes_in_flight
        permit = self.breaker.acquire()
        if state is BreakerState.CLOSED:
            assert permit is not None and not permit.probe
        elif state is BreakerState.OPEN or in_flight:
            assert permit is None
            retry_at = self.breaker.retry_at()
            assert retry_at is not None and retry_at > self.clock.now
        else:
            assert permit is not None and permit.probe
        if permit is not None:
            self.permits.append(permit)

    @precondition(lambda self: bool(self.permits))
    @rule(index=st.integers(0, 100), outcome=st.sampled_from(["success", "failure", "release"]))
    def finish(self, index: int, outcome: str) -> None:
        permit = self.permits.pop(index % len(self.permits))
        was_probe_state = state_of(self.breaker)
        getattr(permit, outcome)()
        if permit.probe and outcome == "success":
            assert state_of(self.breaker) is BreakerState.CLOSED
        if permit.probe and outcome == "failure":
            assert state_of(self.breaker) is BreakerState.OPEN
        if permit.probe and outcome == "release":
            assert state_of(self.breaker) is was_probe_state is BreakerState.HALF_OPEN

    @rule(seconds=st.floats(0, 20), cooldown=st.none() | st.floats(0.5, 40))
    def hold_open(self, seconds: float, cooldown: float | None) -> None:
        before = self.breaker.snapshot()
        until = self.clock.now + seconds
        held = self.breaker.hold_open(until, cooldown=cooldown)
        after = self.breaker.snapshot()
        if held:
            assert after.state is BreakerState.OPEN and after.retry_at == until and after.held
            self.stale += self.permits
            self.permits = []
        else:
            assert after == before

    @precondition(lambda self: bool(self.stale))
    @rule(outcome=st.sampled_from(["success", "failure", "release"]))
    def finish_stale(self, outcome: str) -> None:
        before = self.breaker.snapshot()
        getattr(self.stale.pop(), outcome)()
        assert self.breaker.snapshot() == before

    @rule(seconds=st.floats(0, 20))
    def wait(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @invariant()
    def promises_hold(self) -> None:
        snap = self.breaker.snapshot()
        assert snap.probes_in_flight <= 1
        assert 2.0 <= snap.cooldown <= 16.0
        assert (snap.state is BreakerState.CLOSED) == (snap.opened_at is None)
        if snap.state is BreakerState.CLOSED:
            assert snap.consecutive_failures < 3 and snap.retry_at is None
        if snap.state is BreakerState.OPEN:
            assert snap.retry_at is not None and snap.retry_at > self.clock.now


TestBreakerMachine = BreakerMachine.TestCase
TestBreakerMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


# --- rate limits --------------------------------------------------------------------------


def completes_without_waiting(awaitable: Awaitable[float]) -> float:
    """Run a coroutine that must finish without suspending (no queue, no timer)."""
    coroutine = awaitable.__await__()
    with pytest.raises(StopIteration) as stop:
        coroutine.send(None)
    result = stop.value.value
    assert isinstance(result, float)
    return result


async def until_queued(limiter: RateLimiter, count: int) -> None:
    """Let the tasks just created run to their first await (no timing involved)."""
    for _ in range(1000):
        if limiter.snapshot().queued == count:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"expected {count} queued, have {limiter.snapshot()}")


def drain_tokens(limiter: RateLimiter) -> None:
    available = limiter.snapshot().tokens_available
    assert available is not None
    completes_without_waiting(limiter.acquire(int(available)))


def test_unlimited_limiter_admits_at_once() -> None:
    limiter = RateLimiter(rpm=None, tpm=None)
    for _ in range(10_000):
        assert completes_without_waiting(limiter.acquire(1_000_000)) == 0.0
    limiter.settle(10, 1_000)
    assert limiter.snapshot() == LimiterSnapshot(
        requests_available=None,
        tokens_available=None,
        queued=0,
        queued_tokens=0,
        paused_until=None,
    )


async def test_requests_per_minute_hold_back_the_call_beyond_the_allowance() -> None:
    limiter = RateLimiter(rpm=600, tpm=None)  # 10 per second once the minute's 600 are used
    for _ in range(600):
        assert completes_without_waiting(limiter.acquire(0)) == 0.0
    available = limiter.snapshot().requests_available
    assert available is not None and available < 0.5
    waited = await asyncio.wait_for(limiter.acquire(0), timeout=5)
    assert waited >= 0.05  # at least half a request's refill, 100 ms for a whole one
    snap = limiter.snapshot()
    assert snap.requests_available is not None and snap.requests_available < 1


async def test_waiters_are_served_in_arrival_order() -> None:
    """A large request at the head is not overtaken by small ones that would fit sooner."""
    limiter = RateLimiter(rpm=None, tpm=60_000)  # 1000 tokens per second
    drain_tokens(limiter)
    order: list[str] = []

    async def call(name: str, tokens: int) -> None:
        await limiter.acquire(tokens)
        order.append(name)

    tasks = [asyncio.create_task(call("big", 150))]
    tasks += [asyncio.create_task(call(f"small{i}", 5)) for i in range(3)]
    await until_queued(limiter, 4)
    assert limiter.snapshot().queued_tokens == 165
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=5)
    assert order == ["big", "small0", "small1", "small2"]


async def test_new_callers_queue_behind_waiters_even_when_tokens_are_available() -> None:
    limiter = RateLimiter(rpm=None, tpm=60_000)
    drain_tokens(limiter)
    head = asyncio.create_task(limiter.acquire(100))
    await until_queued(limiter, 1)
    late = asyncio.create_task(limiter.acquire(0))
    await until_queued(limiter, 2)
    done, _ = await asyncio.wait({head, late}, return_when=asyncio.FIRST_COMPLETED, timeout=5)
    assert head in done


def test_a_request_larger_than_the_minute_allowance_goes_when_the_bucket_is_full() -> None:
    limiter = RateLimiter(rpm=None, tpm=600)
    assert completes_without_waiting(limiter.acquire(1_000)) == 0.0
    tokens = limiter.snapshot().tokens_available
    assert tokens is not None and tokens == pytest.approx(-400, abs=1)


async def test_an_oversized_request_waits_for_a_full_bucket_not_forever() -> None:
    limiter = RateLimiter(rpm=None, tpm=60_000)
    completes_without_waiting(limiter.acquire(50))
    waited = await asyncio.wait_for(limiter.acquire(250_000), timeout=5)
    assert waited >= 0.03  # 50 tokens at 1000 per second
    tokens = limiter.snapshot().tokens_available
    assert tokens is not None and tokens < -189_000


def test_settle_gives_back_an_overestimate_and_takes_an_underestimate() -> None:
    limiter = RateLimiter(rpm=None, tpm=600)
    completes_without_waiting(limiter.acquire(600))
    limiter.settle(600, 100)
    tokens = limiter.snapshot().tokens_available
    assert tokens is not None and 500 <= tokens < 501
    completes_without_waiting(limiter.acquire(500))
    limiter.settle(10, 400)
    tokens = limiter.snapshot().tokens_available
    assert tokens is not None and -390 <= tokens < -389
    limiter.settle(0, 0)
    with pytest.raises(ValueError):
        limiter.settle(-1, 3)


async def test_settle_refund_wakes_the_queue_at_once() -> None:
    limiter = RateLimiter(rpm=None, tpm=600)  # 10 tokens per second: 300 tokens = 30 s
    completes_without_waiting(limiter.acquire(600))
    waiter = asyncio.create_task(limiter.acquire(300))
    await until_queued(limiter, 1)
    limiter.settle(600, 200)
    await asyncio.wait_for(waiter, timeout=5)
    tokens = limiter.snapshot().tokens_available
    assert tokens is not None and 100 <= tokens < 102


async def test_pause_until_holds_back_new_and_queued_callers() -> None:
    limiter = RateLimiter(rpm=None, tpm=60_000)
    drain_tokens(limiter)
    queued = asyncio.create_task(limiter.acquire(10))
    await until_queued(limiter, 1)
    now = asyncio.get_running_loop().time()
    limiter.pause_until(now + 0.2)
    limiter.pause_until(now + 0.05)  # a shorter pause does not shorten the first
    assert limiter.snapshot().paused_until == now + 0.2
    fresh = asyncio.create_task(limiter.acquire(0))
    results = await asyncio.wait_for(asyncio.gather(queued, fresh), timeout=5)
    assert asyncio.get_running_loop().time() >= now + 0.2
    assert all(waited >= 0.15 for waited in results)
    assert limiter.snapshot().paused_until is None


async def test_a_pause_applies_to_an_unlimited_endpoint_too() -> None:
    limiter = RateLimiter(rpm=None, tpm=None)
    now = asyncio.get_running_loop().time()
    limiter.pause_until(now + 0.05)
    await asyncio.wait_for(limiter.acquire(1), timeout=5)
    assert asyncio.get_running_loop().time() >= now + 0.05
    assert completes_without_waiting(limiter.acquire(1)) == 0.0


async def test_a_call_that_cannot_make_its_deadline_is_refused_at_once_consuming_nothing() -> None:
    limiter = RateLimiter(rpm=6000, tpm=600)  # 10 tokens per second
    completes_without_waiting(limiter.acquire(500))
    before = limiter.snapshot()
    now = asyncio.get_running_loop().time()
    with pytest.raises(LimitWouldExceedDeadline) as refused:
        completes_without_waiting(limiter.acquire(300, deadline=now + 10))
    assert refused.value.admit_at is not None
    assert refused.value.admit_at == pytest.approx(now + 20, abs=0.5)
    with pytest.raises(LimitWouldExceedDeadline):
        completes_without_waiting(limiter.acquire(0, deadline=now - 1))
    after = limiter.snapshot()
    assert after.queued == 0
    assert after.requests_available is not None and before.requests_available is not None
    assert after.requests_available >= before.requests_available
    assert after.tokens_available is not None and before.tokens_available is not None
    assert before.tokens_available <= after.tokens_available < before.tokens_available + 5
    # and within the deadline, the same call is admitted
    assert completes_without_waiting(limiter.acquire(100, deadline=now + 10)) == 0.0


async def test_the_deadline_check_counts_the_callers_queued_ahead() -> None:
    limiter = RateLimiter(rpm=None, tpm=600)
    completes_without_waiting(limiter.acquire(600))
    ahead = asyncio.create_task(limiter.acquire(200))  # due in 20 s
    await until_queued(limiter, 1)
    now = asyncio.get_running_loop().time()
    with pytest.raises(LimitWouldExceedDeadline):
        await limiter.acquire(1, deadline=now + 5)  # alone it would be due in 0.1 s
    assert limiter.snapshot().queued == 1
    ahead.cancel()
    with pytest.raises(asyncio.CancelledError):
        await ahead
    waited = await asyncio.wait_for(limiter.acquire(1, deadline=now + 5), timeout=5)
    assert waited < 5


async def test_a_pause_rejects_queued_callers_it_makes_late() -> None:
    limiter = RateLimiter(rpm=None, tpm=60_000)
    drain_tokens(limiter)
    now = asyncio.get_running_loop().time()
    doomed = asyncio.create_task(limiter.acquire(10, deadline=now + 30))
    patient = asyncio.create_task(limiter.acquire(10))
    await until_queued(limiter, 2)
    limiter.pause_until(now + 60)
    with pytest.raises(LimitWouldExceedDeadline):
        await asyncio.wait_for(doomed, timeout=5)
    assert limiter.snapshot().queued == 1
    assert limiter.snapshot().queued_tokens == 10
    patient.cancel()
    with pytest.raises(asyncio.CancelledError):
        await patient


async def test_a_queued_caller_is_refused_when_its_deadline_arrives() -> None:
    """The estimate at enqueue time cannot foresee debt settled later; the deadline still holds
    and the refused call consumes nothing."""
    limiter = RateLimiter(rpm=None, tpm=60_000)
    drain_tokens(limiter)
    now = asyncio.get_running_loop().time()
    waiter = asyncio.create_task(limiter.acquire(20, deadline=now + 0.1))
    await until_queued(limiter, 1)
    limiter.settle(0, 100_000)  # a call used far more than estimated: 100 s of debt
    with pytest.raises(LimitWouldExceedDeadline) as refused:
        await asyncio.wait_for(waiter, timeout=5)
    assert refused.value.admit_at is None
    assert asyncio.get_running_loop().time() >= now + 0.1
    snap = limiter.snapshot()
    assert snap.queued == 0 and snap.tokens_available is not None
    assert -100_000 < snap.tokens_available < -99_000


async def test_cancelling_a_waiter_neither_consumes_nor_stalls_the_queue() -> None:
    limiter = RateLimiter(rpm=None, tpm=600)  # 10 tokens per second
    completes_without_waiting(limiter.acquire(600))
    head = asyncio.create_task(limiter.acquire(500))  # due in 50 s
    middle = asyncio.create_task(limiter.acquire(400))
    tail = asyncio.create_task(limiter.acquire(1))
    await until_queued(limiter, 3)
    middle.cancel()
    await until_queued(limiter, 2)
    assert limiter.snapshot().queued_tokens == 501
    head.cancel()
    waited = await asyncio.wait_for(tail, timeout=5)
    assert waited < 5
    for task in (head, middle):
        with pytest.raises(asyncio.CancelledError):
            await task
    snap = limiter.snapshot()
    assert snap.queued == 0 and snap.queued_tokens == 0
    assert snap.tokens_available is not None and snap.tokens_available < 5


async def test_a_caller_cancelled_after_admission_gives_its_share_back() -> None:
    limiter = RateLimiter(rpm=None, tpm=600)
    completes_without_waiting(limiter.acquire(600))
    waiter = asyncio.create_task(limiter.acquire(300))
    await until_queued(limiter, 1)
    limiter.settle(300, 0)  # admits the waiter synchronously...
    assert limiter.snapshot().queued == 0
    waiter.cancel()  # ...which is cancelled before it could send anything
    with pytest.raises(asyncio.CancelledError):
        await waiter
    tokens = limiter.snapshot().tokens_available
    assert tokens is not None and 300 <= tokens < 305


async def test_many_waiters_on_one_timer_all_get_through() -> None:
    limiter = RateLimiter(rpm=None, tpm=60_000)  # 1000 tokens per second
    drain_tokens(limiter)
    results = await asyncio.wait_for(
        asyncio.gather(*(limiter.acquire(2) for _ in range(100))), timeout=10
    )
    assert len(results) == 100
    assert max(results) >= 0.1  # the last of 100 needed 0.2 s of refill
    assert limiter.snapshot().queued == 0


# --- a share of the fleet's limits -----------------------------------------------------------


def test_a_smaller_share_takes_effect_at_once_and_a_larger_one_refills_without_a_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rpm=600, tpm=60_000, clock=clock)
    limiter.set_rates(rpm=200, tpm=20_000)  # two more workers joined
    snap = limiter.snapshot()
    assert limiter.rates() == (200, 20_000)
    assert snap.requests_available == 200 and snap.tokens_available == 20_000
    limiter.set_rates(rpm=600, tpm=60_000)  # they left
    assert limiter.rates() == (600, 60_000)
    assert limiter.snapshot().requests_available == 200  # no burst...
    clock.advance(1.0)
    snap = limiter.snapshot()  # ...but the new rate: 10 requests and 1,000 tokens a second
    assert snap.requests_available == 210 and snap.tokens_available == 21_000


async def test_a_larger_share_serves_the_queue_sooner_in_the_same_order() -> None:
    limiter = RateLimiter(rpm=None, tpm=600)  # 10 tokens per second
    drain_tokens(limiter)
    order: list[str] = []

    async def call(name: str, tokens: int) -> None:
        await limiter.acquire(tokens)
        order.append(name)

    # at 10 tokens a second the head alone would wait 30 s
    tasks = [
        asyncio.create_task(call(name, tokens))
        for name, tokens in (("big", 300), ("small", 1), ("tiny", 0))
    ]
    await until_queued(limiter, 3)
    limiter.set_rates(rpm=None, tpm=600_000)  # 10,000 tokens a second
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=15)
    assert order == ["big", "small", "tiny"]


async def test_a_smaller_share_refuses_at_once_the_waiters_it_makes_late() -> None:
    clock = FakeClock()  # stands still: no refill unless the test moves it
    limiter = RateLimiter(rpm=None, tpm=600_000, clock=clock)
    drain_tokens(limiter)
    late = asyncio.create_task(limiter.acquire(200, deadline=clock.now + 30))
    patient = asyncio.create_task(limiter.acquire(1))
    await until_queued(limiter, 2)
    limiter.set_rates(rpm=None, tpm=60)  # one token a second: 200 tokens take 200 s
    with pytest.raises(LimitWouldExceedDeadline):
        await asyncio.wait_for(late, timeout=10)
    snap = limiter.snapshot()
    assert snap.queued == 1 and snap.queued_tokens == 1  # the patient one keeps its place
    clock.advance(1.0)  # its token has come in
    limiter.set_rates(rpm=None, tpm=600_000)
    assert await asyncio.wait_for(patient, timeout=15) == 1.0


def test_setting_rates_can_turn_a_limit_on_or_off() -> None:
    limiter = RateLimiter(rpm=None, tpm=None)
    limiter.set_rates(rpm=60, tpm=None)
    assert limiter.rates() == (60, None) and limiter.snapshot().requests_available == 60
    limiter.set_rates(rpm=None, tpm=None)
    assert completes_without_waiting(limiter.acquire(10**9)) == 0.0
    with pytest.raises(ValueError):
        limiter.set_rates(rpm=60, tpm=0)
    assert limiter.rates() == (None, None)  # a refused change changes nothing


@pytest.mark.parametrize(
    ("rpm", "tpm"), [(0.0, None), (None, -5.0), (float("inf"), None), (None, float("nan"))]
)
def test_limiter_refuses_nonsense_settings(rpm: float | None, tpm: float | None) -> None:
    with pytest.raises(ValueError):
        RateLimiter(rpm=rpm, tpm=tpm)


async def test_negative_token_counts_are_refused() -> None:
    with pytest.raises(ValueError):
        await RateLimiter(rpm=None, tpm=None).acquire(-1)
