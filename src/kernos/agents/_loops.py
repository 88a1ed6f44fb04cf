"""The loop breaker: no tool call retried blindly, however the model rephrases it.

An agent stuck in a loop calls the same failing tool with the same arguments (or nearly: the
same words in another case, other spacing, keys in another order, 3 for "3") turn after turn.
The guard counts failures per *fingerprint* of a call and refuses the call once it failed
``max_same_failures`` times, and refuses every call once the run's tool-call budget is spent.
A refusal says why, in words for the model and for the person the run escalates to.

The guard is rebuilt from the run's journal on replay (it is fed the recorded outcomes in
order), so a worker that restarts a looping run does not give it a fresh allowance.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_SPACES = re.compile(r"\s+")


def fingerprint(name: str, arguments: Mapping[str, Any]) -> str:
    """What makes two calls "the same" for the loop breaker: the tool and its arguments with
    case, spacing, key order, and number spelling normalised."""
    return f"{name}:{json.dumps(_normal(arguments), sort_keys=True, separators=(',', ':'))}"


def _normal(value: Any) -> Any:
    if isinstance(value, str):
        text = _SPACES.sub(" ", value).strip().casefold()
        number = _as_number(text)
        return number if number is not None else text
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return _canonical_number(float(value))
    if isinstance(value, Mapping):
        return {str(k).casefold(): _normal(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_normal(v) for v in value]
    return repr(value)


def _as_number(text: str) -> float | int | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return _canonical_number(number) if math.isfinite(number) else None


def _canonical_number(number: float) -> float | int:
    return int(number) if number.is_integer() else round(number, 9)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a call is not made. ``reason`` is ``repeated_failure`` or ``budget_exhausted``."""

    reason: str
    message: str


class LoopGuard:
    """Counts a run's tool calls and their failures; says when a call must not be made."""

    def __init__(self, *, max_same_failures: int = 3, budget: int | None = None) -> None:
        if max_same_failures < 1:
            raise ValueError("max_same_failures must be at least 1")
        self.max_same_failures = max_same_failures
        self.budget = budget
        self.calls = 0
        self._failures: Counter[str] = Counter()

    def check(self, name: str, arguments: Mapping[str, Any]) -> Refusal | None:
        """None if the call may be made now; otherwise why not."""
        failures = self._failures[fingerprint(name, arguments)]
        if failures >= self.max_same_failures:
            return Refusal(
                "repeated_failure",
                f"{name} was called with these arguments (or the same ones written differently) "
                f"and failed {failures} times; it will not be called again with them. Change the "
                f"arguments, use another tool, or answer without it.",
            )
        if self.budget is not None and self.calls >= self.budget:
            return Refusal(
                "budget_exhausted",
                f"this run has made its {self.budget} tool calls (its budget); no more tools "
                f"will be called. Answer with what you have.",
            )
        return None

    def record(self, name: str, arguments: Mapping[str, Any], *, ok: bool) -> None:
        """A call was made (live or, on replay, read from the journal)."""
        self.calls += 1
        key = fingerprint(name, arguments)
        if ok:
            self._failures.pop(key, None)  # it works now: the earlier failures were transient
        else:
            self._failures[key] += 1
