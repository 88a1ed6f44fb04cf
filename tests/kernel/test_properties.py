"""Property-based tests of the kernel's pure logic: backoff and the replay determinism check."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kernos.errors import DeterminismError, UsageError
from kernos.kernel import RetryPolicy
from kernos.kernel._replay import History
from kernos.store import Event

policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(1, 20),
    initial_delay=st.floats(0, 10),
    multiplier=st.floats(1, 5),
    max_delay=st.floats(0, 120),
)


@given(policies, st.integers(1, 30), st.floats(0, 1, exclude_max=True))
def test_backoff_is_full_jitter_within_the_cap(
    policy: RetryPolicy, attempt: int, unit: float
) -> None:
    delay = policy.delay(attempt, unit)
    ceiling = min(policy.max_delay, policy.initial_delay * policy.multiplier ** (attempt - 1))
    assert 0 <= delay <= ceiling + 1e-9


@given(policies, st.integers(1, 30))
def test_attempts_are_bounded(policy: RetryPolicy, attempt: int) -> None:
    assert policy.retries(ValueError("x"), attempt) == (attempt < policy.max_attempts)
    assert not policy.retries(UsageError("x"), attempt)


def test_bad_policy_is_refused() -> None:
    with pytest.raises(UsageError):
        RetryPolicy(max_attempts=0)


kinds = st.sampled_from(
    [("step_completed", "step"), ("timer_fired", "sleep"), ("message_received", "wait_for_message")]
)
journals = st.lists(st.tuples(kinds, st.sampled_from(["a", "b", "c"])), min_size=1, max_size=15)


@given(journals)
def test_replaying_the_same_calls_never_diverges(calls: list[tuple[tuple[str, str], str]]) -> None:
    events = [
        Event(seq=i + 1, type=etype, step=i + 1, name=name)
        for i, ((etype, _), name) in enumerate(calls)
    ]
    history = History(events)
    for i, ((etype, kind), name) in enumerate(calls):
        assert [e.type for e in history.at(i + 1, kind, name)] == [etype]
    history.check_finished(len(calls))


@given(journals, st.data())
def test_any_different_call_is_a_determinism_error(
    calls: list[tuple[tuple[str, str], str]], data: st.DataObject
) -> None:
    events = [
        Event(seq=i + 1, type=etype, step=i + 1, name=name)
        for i, ((etype, _), name) in enumerate(calls)
    ]
    history = History(events)
    position = data.draw(st.integers(1, len(calls)))
    (_, kind), name = calls[position - 1]
    other = data.draw(st.sampled_from(["a", "b", "c", "z"]).filter(lambda n: n != name))
    with pytest.raises(DeterminismError) as caught:
        history.at(position, kind, other)
    assert caught.value.position == position and repr(other) in str(caught.value)
    with pytest.raises(DeterminismError):
        history.check_finished(position - 1)
