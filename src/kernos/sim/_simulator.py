"""The simulator's state: per provider its fault rules, scripted replies and request log.

One ``Simulator`` is shared by the HTTP server (on its own thread and event loop) and the test or
program that steers it, so every method takes a lock; each holds it for a few dictionary
operations only, never across I/O. Provider names need no declaring: a name's state springs into
being when it is first used, and ``*`` holds rules that apply to every provider after its own.
"""

from __future__ import annotations

import itertools
import random
import re
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from kernos.errors import InvalidInput
from kernos.sim._faults import Fault, FaultKind, Rule, fire
from kernos.sim._script import Reply

__all__ = ["ALL_PROVIDERS", "Family", "LogEntry", "Outcome", "Simulator"]

Family = Literal["openai", "anthropic"]

#: the provider name whose rules apply to every provider (after the provider's own)
ALL_PROVIDERS = "*"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

#: faults whose request still ends in a full answer, so the scripted reply is used up
_ANSWERED: frozenset[FaultKind | None] = frozenset({None, "slow"})


class LogEntry(BaseModel):
    """One request as the simulator saw it.

    ``arrived_monotonic`` is ``time.monotonic()`` when the request reached the handler (before
    its body was read); on Linux that clock is shared by every process, so a test can subtract
    the arrival times of two attempts to check that a ``retry-after`` was waited out.
    ``fault`` is the fault applied (for ``mixed``, the kind drawn) and ``status`` the HTTP status
    sent, None when no response was (``connection``, ``hang``). ``headers`` holds the request
    headers of interest to kernos: ``idempotency-key`` and every ``x-kernos-*``.
    """

    model_config = ConfigDict(frozen=True)

    seq: int
    provider: str
    family: Family
    model: str | None
    stream: bool
    fault: FaultKind | None
    status: int | None
    arrived_monotonic: float
    arrived_wall: float
    headers: dict[str, str]
    # The request body as JSON, which is arbitrary: Any.
    request: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the simulator decided for one request."""

    seq: int
    fault: Fault | None
    kind: FaultKind | None
    reply: Reply | None


class _Provider:
    __slots__ = ("log", "rules", "script")

    def __init__(self, log_limit: int) -> None:
        self.rules: list[Rule] = []
        self.script: deque[Reply] = deque()
        self.log: deque[LogEntry] = deque(maxlen=log_limit)


class Simulator:
    """Faults, scripts and the request log of every simulated provider; safe across threads.

    ``seed`` seeds the generator that decides probabilistic faults, so a run repeats exactly
    when the same requests arrive in the same order. ``log_limit`` bounds each provider's log
    (oldest entries go first) so that a long-running simulator does not grow without end.
    """

    def __init__(self, *, seed: int | None = None, log_limit: int = 10_000) -> None:
        self._lock = threading.Lock()
        self._seed = seed
        self._rng = random.Random(seed)
        self._log_limit = log_limit
        self._providers: dict[str, _Provider] = {}
        self._seq = itertools.count(1)

    # -- steering ------------------------------------------------------------------------------

    def add_fault(self, provider: str, fault: Fault) -> None:
        """Append a rule to ``provider``'s list (``*``: every provider)."""
        with self._lock:
            self._provider(_checked(provider)).rules.append(Rule(fault, time.monotonic()))

    def set_faults(self, provider: str, faults: Iterable[Fault]) -> None:
        """Replace ``provider``'s rules; windows restart from now."""
        now = time.monotonic()
        rules = [Rule(f, now) for f in faults]
        with self._lock:
            self._provider(_checked(provider)).rules = rules

    def clear_faults(self, provider: str | None = None) -> None:
        """Remove ``provider``'s rules, or every provider's when None."""
        with self._lock:
            if provider is None:
                for state in self._providers.values():
                    state.rules = []
            elif provider in self._providers:
                self._providers[provider].rules = []

    def faults(self, provider: str) -> list[Fault]:
        """``provider``'s rules in evaluation order, each ``count`` being what remains."""
        with self._lock:
            state = self._providers.get(provider)
            return [r.current() for r in state.rules] if state else []

    def script(self, provider: str, *replies: Reply | str) -> None:
        """Queue replies for ``provider``; a string is a text reply."""
        queued = [Reply(text=r) if isinstance(r, str) else r for r in replies]
        with self._lock:
            self._provider(_checked(provider)).script.extend(queued)

    def clear_script(self, provider: str | None = None) -> None:
        """Drop the queued replies of ``provider``, or of every provider when None."""
        with self._lock:
            for name, state in self._providers.items():
                if provider is None or name == provider:
                    state.script.clear()

    def scripted(self, provider: str) -> list[Reply]:
        """The replies still queued for ``provider``."""
        with self._lock:
            state = self._providers.get(provider)
            return list(state.script) if state else []

    def log(self, provider: str | None = None, *, since: int = 0) -> list[LogEntry]:
        """Requests in arrival order, of one provider or all; ``since`` skips ``seq <= since``."""
        with self._lock:
            if provider is not None:
                state = self._providers.get(provider)
                return [e for e in state.log if e.seq > since] if state else []
            entries = [e for s in self._providers.values() for e in s.log if e.seq > since]
        return sorted(entries, key=lambda e: e.seq)

    def providers(self) -> list[str]:
        """Every provider name used so far (by a request or a rule), sorted."""
        with self._lock:
            return sorted(self._providers)

    def reset(self, *, seed: int | None = None) -> None:
        """Forget every provider's rules, script and log; reseed with ``seed``, or with the last
        seed given (at start or to ``reset``) if None, so that a reset replays the same draws."""
        with self._lock:
            self._providers.clear()
            if seed is not None:
                self._seed = seed
            self._rng.seed(self._seed)
            self._seq = itertools.count(1)

    # -- the request path (called by the HTTP app) --------------------------------------------

    def decide(self, provider: str, model: str | None, stream: bool) -> Outcome:
        """Pick this request's fault (if any) and its reply (if scripted); use up what fired."""
        now = time.monotonic()
        with self._lock:
            seq = next(self._seq)
            state = self._provider(provider)
            fired = fire(state.rules, model, stream, now, self._rng)
            if fired is None and ALL_PROVIDERS in self._providers:
                fired = fire(self._providers[ALL_PROVIDERS].rules, model, stream, now, self._rng)
            fault, kind = fired if fired else (None, None)
            reply = _take(state.script, model, consume=kind in _ANSWERED)
        return Outcome(seq, fault, kind, reply)

    def next_seq(self) -> int:
        """A sequence number for a request that never reaches ``decide`` (a rejected body)."""
        with self._lock:
            return next(self._seq)

    def record(self, entry: LogEntry) -> None:
        with self._lock:
            self._provider(entry.provider).log.append(entry)

    def _provider(self, name: str) -> _Provider:
        state = self._providers.get(name)
        if state is None:
            state = self._providers[name] = _Provider(self._log_limit)
        return state


def _checked(provider: str) -> str:
    if provider == ALL_PROVIDERS or _NAME.fullmatch(provider):
        return provider
    raise InvalidInput(
        f"provider name {provider!r} is not valid: use letters, digits, '.', '_' or '-' "
        f"(not starting with '_' or '.'), or '*' for every provider"
    )


def _take(script: deque[Reply], model: str | None, *, consume: bool) -> Reply | None:
    for i, reply in enumerate(script):
        if reply.model is None or (model is not None and fnmatchcase(model, reply.model)):
            if consume:
                del script[i]
            return reply
    return None
