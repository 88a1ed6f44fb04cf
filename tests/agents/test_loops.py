"""The loop breaker: the same failing call, however rephrased, is not made again blindly."""

from __future__ import annotations

import pytest

from kernos.agents import LoopGuard, fingerprint


def test_near_identical_arguments_share_a_fingerprint() -> None:
    same: list[dict[str, object]] = [
        {"city": "New York", "days": 3},
        {"days": 3.0, "city": "  new   york "},
        {"CITY": "NEW YORK", "days": "3"},
    ]
    assert len({fingerprint("weather", a) for a in same}) == 1
    assert fingerprint("weather", {"city": "Boston", "days": 3}) != fingerprint("weather", same[0])
    assert fingerprint("forecast", same[0]) != fingerprint("weather", same[0])
    assert fingerprint("f", {"flag": True}) != fingerprint("f", {"flag": 1})


def test_a_call_that_failed_three_times_is_refused_however_rephrased() -> None:
    guard = LoopGuard(max_same_failures=3)
    for args in ({"id": "A-17"}, {"id": " a-17"}, {"id": "A-17 "}):
        assert guard.check("refund", args) is None
        guard.record("refund", args, ok=False)
    refusal = guard.check("refund", {"id": "a-17"})
    assert refusal is not None and refusal.reason == "repeated_failure"
    assert "failed 3 times" in refusal.message and "Change the arguments" in refusal.message
    assert guard.check("refund", {"id": "B-2"}) is None  # other arguments are other calls


def test_a_success_clears_the_count_of_transient_failures() -> None:
    guard = LoopGuard(max_same_failures=2)
    guard.record("lookup", {"id": 1}, ok=False)
    guard.record("lookup", {"id": 1}, ok=True)
    guard.record("lookup", {"id": 1}, ok=False)
    assert guard.check("lookup", {"id": 1}) is None


def test_the_budget_caps_every_call() -> None:
    guard = LoopGuard(budget=2)
    guard.record("a", {}, ok=True)
    guard.record("b", {}, ok=True)
    refusal = guard.check("c", {})
    assert refusal is not None and refusal.reason == "budget_exhausted"
    assert "2 tool calls" in refusal.message


def test_a_guard_rebuilt_from_recorded_outcomes_refuses_the_same() -> None:
    """Replay feeds the journal's outcomes: a restarted worker gets no fresh allowance."""
    live = LoopGuard()
    outcomes = [("t", {"q": "x"}, False)] * 3
    for name, args, ok in outcomes:
        live.record(name, args, ok=ok)
    replayed = LoopGuard()
    for name, args, ok in outcomes:
        replayed.record(name, args, ok=ok)
    assert live.check("t", {"q": "X"}) == replayed.check("t", {"q": "X"}) is not None


def test_nonsense_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        LoopGuard(max_same_failures=0)
