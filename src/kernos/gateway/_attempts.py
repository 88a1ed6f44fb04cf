"""The record of one attempt of an LLM call: journaled before any wait, replayed after a crash.

A call's attempts are its memory: a worker killed during a backoff leaves them in the journal,
and the next worker continues the call where it stood (same counts per model, the rest of the
delay) instead of starting over and hammering a provider that was already failing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from kernos.gateway._types import Usage


class Attempt(BaseModel):
    """One failed (or repaired) attempt; the answering one is the call's ``LLMResponse``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: 1-based, across every model of the route, within one round (a park starts a new round)
    n: int
    provider: str
    model: str
    #: an ``ErrorClass`` value, or ``invalid_tool_arguments`` for an answer sent back to fix
    error_class: str
    error: str
    status: int | None = None
    #: wall-clock time the attempt started, and how long it took (seconds)
    started_at: float
    latency: float
    usage: Usage = Field(default_factory=Usage)
    cost: float = 0.0
    #: seconds waited before the next attempt (None: the next model of the route, at once)
    delay: float | None = None
    #: what the gateway did next: "retry", "fallback", "fail", "park", "repair"
    then: str = "retry"

    def payload(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def tries_by_endpoint(attempts: Sequence[Attempt]) -> Counter[tuple[str, str]]:
    """How many attempts each (provider, model) has had, for repairs not to count."""
    return Counter(
        (a.provider, a.model) for a in attempts if a.error_class != "invalid_tool_arguments"
    )
