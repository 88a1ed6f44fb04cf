"""Fault rules: what the simulator does wrong, to which requests, how often and when.

A provider has an ordered list of rules. For each request the rules are tried in order and the
first one that *fires* decides what goes wrong; a request no rule fires for is answered normally.
A rule fires when the request matches its filters (``models``, ``stream``), the clock is inside
its window (``start``, ``duration``, counted from when the rule was added) and a draw of the
simulator's seeded random generator falls under its ``rate``. A rule with a ``count`` expires
after firing that many times, so "the next two calls get 429" is one rule.

Rules are data (a frozen pydantic model), so the same rule can be given in Python, as JSON to
the control endpoint, or as a one-line spec on the command line (``rate_limit:retry_after=2``).
"""

from __future__ import annotations

import random
from fnmatch import fnmatchcase
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kernos.errors import InvalidInput

__all__ = [
    "FAULT_KINDS",
    "MIXED_DEFAULT",
    "Fault",
    "FaultKind",
    "Rule",
    "fire",
    "one_line",
    "parse_provider_fault",
]

FaultKind = Literal[
    "rate_limit",
    "server_error",
    "unavailable",
    "overloaded",
    "outage",
    "hang",
    "slow",
    "malformed",
    "truncate",
    "connection",
    "context_too_long",
    "content_filter",
    "auth",
    "bad_request",
    "not_found",
    "mixed",
]

#: every fault kind, in the order the docs list them
FAULT_KINDS: tuple[FaultKind, ...] = get_args(FaultKind)

#: what ``Fault(kind="mixed")`` draws from unless told otherwise: the failures a gateway retries
MIXED_DEFAULT: tuple[FaultKind, ...] = (
    "rate_limit",
    "server_error",
    "unavailable",
    "overloaded",
    "connection",
)


class Fault(BaseModel):
    """One fault rule. Only ``kind`` is required; everything else narrows or tunes it.

    ``rate`` is the probability that a matching request gets the fault (drawn from the seeded
    generator, so a run with the same seed and the same requests fails the same way); ``count``
    makes the rule expire after it has fired that many times; ``start`` and ``duration`` (seconds
    after the rule was added) confine it to a window, which is how an outage is scripted.

    ``retry_after`` and ``retry_after_ms`` add the ``retry-after`` and ``retry-after-ms`` headers
    to an error response. ``delay`` is how long ``slow`` waits before answering (default 1 s) and
    how long ``hang`` holds the request before dropping it (default 600 s). ``after`` places a
    streamed fault mid-stream: that many frames after the first are sent before the stream is
    truncated, dropped, stalled (``hang``) or ends in an error event (the HTTP error kinds).
    ``mix`` is what ``mixed`` draws from (default: the retryable kinds in ``MIXED_DEFAULT``).
    ``message`` replaces the error message of the error kinds.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: FaultKind
    rate: float = Field(default=1.0, ge=0.0, le=1.0)
    count: int | None = Field(default=None, ge=1)
    models: tuple[str, ...] | None = None
    stream: bool | None = None
    retry_after: float | None = Field(default=None, ge=0.0)
    retry_after_ms: float | None = Field(default=None, ge=0.0)
    delay: float | None = Field(default=None, ge=0.0)
    after: int | None = Field(default=None, ge=0)
    start: float | None = Field(default=None, ge=0.0)
    duration: float | None = Field(default=None, gt=0.0)
    mix: tuple[FaultKind, ...] | None = None
    message: str | None = None

    @model_validator(mode="after")
    def _mix_only_for_mixed(self) -> Fault:
        if self.mix is not None and self.kind != "mixed":
            raise ValueError("mix applies only to kind 'mixed'")
        if self.mix is not None and ("mixed" in self.mix or not self.mix):
            raise ValueError("mix must name one or more kinds other than 'mixed'")
        return self

    @classmethod
    def parse(cls, spec: str) -> Fault:
        """A rule from ``KIND[:key=value,...]``; list values are separated by ``|``.

        ``rate_limit:rate=0.5,retry_after=2`` or ``mixed:rate=0.2,mix=rate_limit|overloaded``.
        Raises ``InvalidInput`` naming what is wrong.
        """
        kind, _, rest = spec.strip().partition(":")
        data: dict[str, object] = {"kind": kind}
        for item in filter(None, (part.strip() for part in rest.split(","))):
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise InvalidInput(
                    f"fault {spec!r}: {item!r} is not key=value (e.g. rate_limit:retry_after=2)"
                )
            key = key.strip()
            data[key] = value.split("|") if key in _LIST_FIELDS else value
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise InvalidInput(f"fault {spec!r}: {one_line(exc)}") from None

    def describe(self) -> str:
        """The rule as the spec that ``Fault.parse`` reads back."""
        parts = []
        for key, value in self.model_dump(exclude_none=True, exclude={"kind"}).items():
            if key == "rate" and value == 1.0:
                continue
            parts.append(f"{key}={_spec_value(value)}")
        return self.kind + (":" + ",".join(parts) if parts else "")


_LIST_FIELDS = frozenset({"models", "mix"})


def _spec_value(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list | tuple):
        return "|".join(map(_spec_value, value))
    return str(value)


def one_line(exc: ValidationError) -> str:
    """A pydantic validation error on one line: ``field: problem; field: problem``."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors())


def parse_provider_fault(spec: str) -> tuple[str, Fault]:
    """``PROVIDER:KIND[:key=value,...]`` (the ``--fault`` flag) into the provider and its rule.

    ``*`` as the provider means every provider.
    """
    provider, sep, rest = spec.partition(":")
    if not sep or not provider or not rest:
        raise InvalidInput(
            f"fault {spec!r} is not PROVIDER:KIND[:key=value,...] "
            f"(e.g. openai:rate_limit:rate=0.5,retry_after=2)"
        )
    return provider, Fault.parse(rest)


class Rule:
    """A fault installed on a provider: the rule, when it was added, and how many fires remain."""

    __slots__ = ("added", "fault", "remaining")

    def __init__(self, fault: Fault, added: float) -> None:
        self.fault = fault
        self.added = added
        self.remaining = fault.count

    def current(self) -> Fault:
        """The rule as it stands now: ``count`` is what remains of it."""
        if self.remaining == self.fault.count:
            return self.fault
        return self.fault.model_copy(update={"count": self.remaining})

    def applies(self, model: str | None, stream: bool, now: float) -> bool:
        f = self.fault
        if f.stream is not None and f.stream != stream:
            return False
        if f.models is not None and (
            model is None or not any(fnmatchcase(model, p) for p in f.models)
        ):
            return False
        if f.start is None and f.duration is None:
            return True
        elapsed = now - self.added
        begin = f.start or 0.0
        return elapsed >= begin and (f.duration is None or elapsed < begin + f.duration)


def fire(
    rules: list[Rule], model: str | None, stream: bool, now: float, rng: random.Random
) -> tuple[Fault, FaultKind] | None:
    """The first rule that fires for this request and the kind it resolves to, or None.

    Mutates ``rules``: a counted rule loses one fire and is removed when none remain. The
    generator is drawn from only for rules whose rate is below 1, so adding a certain rule does
    not shift the sequence that probabilistic rules see.
    """
    for rule in rules:
        if not rule.applies(model, stream, now):
            continue
        fault = rule.fault
        if fault.rate < 1.0 and rng.random() >= fault.rate:
            continue
        if rule.remaining is not None:
            rule.remaining -= 1
            if rule.remaining <= 0:
                rules.remove(rule)
        if fault.kind == "mixed":
            return fault, rng.choice(fault.mix or MIXED_DEFAULT)
        return fault, fault.kind
    return None
