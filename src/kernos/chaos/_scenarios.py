"""The scenarios: what goes wrong, when, and to what, published before anything is run.

A scenario is a schedule of *injections* computed from the run's length, the lease TTL and
whether the database sits behind the chaos proxy. The schedule is data: it is printed before
the scenario starts and repeated in the report beside what kernos did about each injection, so
a reader checks one against the other instead of trusting a summary. Times are seconds after
the start; periodic faults (a worker killed every 20 s) are expanded into one injection each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from kernos.chaos._conversations import Kind
from kernos.errors import InvalidInput

__all__ = ["SCENARIOS", "Injection", "Scenario", "Timing", "scenario"]

#: what an injection acts on: the two simulated providers, the database (through the proxy),
#: the worker processes
Target = Literal["primary", "fallback", "database", "workers"]

Action = Literal[
    "rate_limit",  # the provider answers a share of requests 429 with retry-after
    "outage",  # the provider answers nothing but 503s
    "slow",  # the provider answers, late
    "truncate",  # the provider cuts a share of its responses short
    "db_slow",  # every packet to and from the database is delayed
    "db_stall",  # the database stops answering, nothing is closed
    "db_failover",  # every connection is reset and new ones wait for the new primary
    "kill",  # SIGKILL one worker, then start it again
    "kill_all",  # SIGKILL every worker at once, then start them again
    "deploy",  # SIGTERM one worker (it drains), and start its replacement
    "crash",  # not scheduled: a worker that exited on its own, reported beside the faults
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Injection:
    """One fault: when, to what, for how long, and the sentence that says so."""

    at: float
    target: Target
    action: Action
    what: str
    #: seconds it lasts; None for an instant (a kill) or until the scenario's end
    duration: float | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def until(self) -> float | None:
        return None if self.duration is None else self.at + self.duration

    def window(self) -> str:
        if self.duration is None:
            return f"t={self.at:.0f}s"
        return f"t={self.at:.0f}-{self.at + self.duration:.0f}s"


@dataclass(frozen=True, slots=True, kw_only=True)
class Timing:
    """What a schedule is computed from."""

    #: how long faults are injected (the scenario's ``--minutes``, in seconds)
    seconds: float
    lease_ttl: float
    #: whether the database sits behind the chaos proxy (PostgreSQL), so it can be slowed
    proxied: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    name: str
    summary: str
    #: the faults, from the timing
    plan: Callable[[Timing], list[Injection]]
    #: the share of each kind of conversation (a refund above the limit waits for a person)
    mix: tuple[tuple[Kind, float], ...] = (
        ("question", 0.5),
        ("refund", 0.35),
        ("large_refund", 0.15),
    )
    #: the scenario needs the database behind the proxy (a PostgreSQL URL)
    needs_proxy: bool = False

    def schedule(self, timing: Timing) -> list[Injection]:
        if self.needs_proxy and not timing.proxied:
            raise InvalidInput(
                f"the {self.name} scenario acts on a PostgreSQL server through a proxy; give "
                f"--database postgresql://... (an embedded SQLite file has no server to fail over)"
            )
        return sorted(self.plan(timing), key=lambda i: (i.at, i.target))


def _kills(every: float, start: float, end: float) -> list[Injection]:
    kills = []
    at = start
    while at < end:
        kills.append(
            Injection(
                at=at,
                target="workers",
                action="kill",
                what="SIGKILL the worker holding the most runs; it starts again 1 s later",
            )
        )
        at += every
    return kills


def _tuesday(t: Timing) -> list[Injection]:
    s = t.seconds
    outage = min(60.0, s / 5)
    stall = t.lease_ttl * 1.5 + 2
    plan = [
        Injection(
            at=0,
            duration=s,
            target="primary",
            action="rate_limit",
            what="30% of requests answered 429 with retry-after: 2",
            params={"rate": 0.3, "retry_after": 2.0},
        ),
        Injection(
            at=round(s * 0.4),
            duration=outage,
            target="primary",
            action="outage",
            what=f"full outage: every request answered 503 for {outage:.0f} s",
        ),
        Injection(
            at=0,
            duration=s,
            target="fallback",
            action="slow",
            what="every answer 2 s late (p50 2 s)",
            params={"delay": 2.0},
        ),
        Injection(
            at=0,
            duration=s,
            target="fallback",
            action="truncate",
            what="5% of responses cut short",
            params={"rate": 0.05},
        ),
        *_kills(20.0, 10.0, s * 0.85),
        Injection(
            at=round(s * 0.85),
            target="workers",
            action="deploy",
            what="SIGTERM one worker for a deploy; its replacement starts",
        ),
    ]
    if t.proxied:
        plan += [
            Injection(
                at=round(s * 0.1),
                duration=round(s * 0.2),
                target="database",
                action="db_slow",
                what="every packet to and from the database delayed 50-200 ms",
                params={"low": 0.05, "high": 0.2},
            ),
            Injection(
                at=round(s * 0.65),
                duration=stall,
                target="database",
                action="db_stall",
                what=f"the database stops answering for {stall:.0f} s (lease TTL "
                f"{t.lease_ttl:.0f} s); nothing is closed",
            ),
        ]
    return plan


def _provider_outage(t: Timing) -> list[Injection]:
    s = t.seconds
    return [
        Injection(
            at=round(s * 0.2),
            duration=round(s * 0.5),
            target="primary",
            action="outage",
            what=f"full outage of the primary provider for {s * 0.5:.0f} s",
        )
    ]


def _db_failover(t: Timing) -> list[Injection]:
    s = t.seconds
    return [
        Injection(
            at=round(s * f),
            duration=5.0,
            target="database",
            action="db_failover",
            what="every database connection reset; new ones wait 5 s for the new primary",
        )
        for f in (0.3, 0.7)
    ]


def _crash_storm(t: Timing) -> list[Injection]:
    s = t.seconds
    return [
        *_kills(5.0, 5.0, s * 0.9),
        Injection(
            at=round(s * 0.5),
            target="workers",
            action="kill_all",
            what="SIGKILL every worker at once; they start again",
        ),
    ]


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            name="tuesday",
            summary="The Tuesday afternoon: a rate-limiting then failing provider, a slow "
            "fallback, a slow then stalled database, workers killed every 20 s and a deploy, "
            "refunds waiting for a person.",
            plan=_tuesday,
        ),
        Scenario(
            name="provider-outage",
            summary="The primary provider goes down for half the run: the breaker opens and "
            "calls fall back, then it comes back.",
            plan=_provider_outage,
        ),
        Scenario(
            name="db-failover",
            summary="The database fails over twice: every connection reset, new ones held for "
            "5 s (PostgreSQL only).",
            plan=_db_failover,
            needs_proxy=True,
        ),
        Scenario(
            name="crash-storm",
            summary="A worker SIGKILLed every 5 s, and once all of them at the same moment.",
            plan=_crash_storm,
        ),
    )
}


def scenario(name: str) -> Scenario:
    """The scenario called ``name``; ``InvalidInput`` lists the others."""
    try:
        return SCENARIOS[name]
    except KeyError:
        raise InvalidInput(
            f"no chaos scenario {name!r}; the scenarios are {', '.join(SCENARIOS)} "
            f"(kernos chaos list)"
        ) from None
