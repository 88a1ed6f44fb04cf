"""What a rule set would have decided on recorded history, before it is switched on.

Every tool call and LLM call a run made is in its journal (guarantee 5): ``tool_completed`` /
``tool_failed`` (the event's name is the tool, the payload has its ``arguments``) and
``llm_completed`` / ``llm_failed`` (the event's name is the route the agent asked for). Replay
turns each into the :class:`Subject` the kernel would have asked the policy about and decides
it, without touching the runs. The principal is the run's (who started it; null for runs
recorded before kernos kept it); an LLM call's ``params`` are not recorded, so they are empty.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from kernos.kernel import Client
from kernos.store import Event, Run

from ._policy import Decision, Effect, Policy, Subject

#: the journal events that record a call the policy is asked about, by kind
CALL_EVENTS = {
    "tool_completed": "tool",
    "tool_failed": "tool",
    "llm_completed": "llm",
    "llm_failed": "llm",
}
#: runs read from the store per page (newest first) while looking for the oldest one in range
_PAGE = 500


@dataclass(frozen=True, slots=True)
class RecordedCall:
    """One call found in a run's journal, as the policy would have seen it."""

    run_id: str
    seq: int
    at: float
    subject: Subject


@dataclass(frozen=True, slots=True)
class ReplayedCall:
    call: RecordedCall
    decision: Decision


@dataclass(frozen=True, slots=True)
class RuleTally:
    """How many replayed calls a rule decided (``rule`` None: the default), and how many of
    those it decided by failing closed."""

    rule: str | None
    effect: Effect
    calls: int
    failed_closed: int


@dataclass(frozen=True, slots=True)
class ReplayReport:
    """The decisions of a rule set on the calls of the runs created since ``since``.

    ``tally`` has a line per rule in decision order (calls 0 for a rule that never matched:
    worth knowing before switching it on) and the default last; ``flagged`` holds every call
    that would now be denied or need approval, oldest first.
    """

    policy: Policy
    since: float
    runs: int
    tool_calls: int
    llm_calls: int
    tally: tuple[RuleTally, ...]
    flagged: tuple[ReplayedCall, ...]


def recorded_calls(run: Run, events: Sequence[Event]) -> Iterator[RecordedCall]:
    """The tool and LLM calls in a run's journal, as policy subjects."""
    for event in events:
        kind = CALL_EVENTS.get(event.type)
        if kind is None or not event.name:
            continue
        if kind == "tool":
            arguments = event.payload.get("arguments")
            subject = Subject.for_tool(
                event.name,
                arguments if isinstance(arguments, dict) else {},
                agent=run.agent,
                tenant=run.tenant,
                principal=run.principal,
            )
        else:
            subject = Subject.for_llm(
                event.name, agent=run.agent, tenant=run.tenant, principal=run.principal
            )
        yield RecordedCall(run.id, event.seq, event.created_at, subject)


async def runs_since(client: Client, since: float) -> list[Run]:
    """The runs created at or after ``since``, oldest first. The store lists newest first
    with a limit, so pages grow until the oldest run listed is older than ``since``."""
    limit = _PAGE
    while True:
        runs = await client.store.list_runs(limit=limit)
        if len(runs) < limit or runs[-1].created_at < since:
            break
        limit *= 2
    return sorted((r for r in runs if r.created_at >= since), key=lambda r: r.created_at)


async def replay_policy(client: Client, policy: Policy, *, since: float) -> ReplayReport:
    """Decide every call of the runs created since ``since`` (a Unix time) with ``policy``.

    Reads only: runs and journals are left as they are. One journal is held at a time.
    """
    runs = await runs_since(client, since)
    counts: Counter[str | None] = Counter()
    closed: Counter[str | None] = Counter()
    kinds: Counter[str] = Counter()
    flagged: list[ReplayedCall] = []
    for run in runs:
        events = await client.store.load_journal(run.id)
        for call in recorded_calls(run, events):
            decision = policy.decide(call.subject)
            kinds[call.subject.kind] += 1
            counts[decision.rule] += 1
            if decision.failed_closed:
                closed[decision.rule] += 1
            if decision.effect != "allow":
                flagged.append(ReplayedCall(call, decision))
    tally = [RuleTally(r.name, r.effect, counts[r.name], closed[r.name]) for r in policy.rules]
    tally.append(RuleTally(None, policy.default, counts[None], 0))
    return ReplayReport(
        policy=policy,
        since=since,
        runs=len(runs),
        tool_calls=kinds["tool"],
        llm_calls=kinds["llm"],
        tally=tuple(tally),
        flagged=tuple(flagged),
    )
