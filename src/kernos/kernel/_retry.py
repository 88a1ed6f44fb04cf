"""Retry policies for steps: exponential backoff with full jitter, bounded attempts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from kernos.errors import UsageError

F = TypeVar("F", bound=Callable[..., object])

_ATTR = "__kernos_retry__"


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How a failing step is retried.

    An attempt that raises one of ``retry_on`` (and none of ``give_up_on``) is retried after
    ``uniform(0, min(max_delay, initial_delay * multiplier ** (attempt - 1)))`` seconds (full
    jitter), until ``max_attempts`` attempts were made. A ``UsageError`` is never retried: the
    call itself is wrong.
    """

    max_attempts: int = 3
    initial_delay: float = 0.5
    multiplier: float = 2.0
    max_delay: float = 30.0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    give_up_on: tuple[type[BaseException], ...] = field(default=(UsageError,))

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise UsageError(f"RetryPolicy.max_attempts must be >= 1, not {self.max_attempts}")
        if self.initial_delay < 0 or self.max_delay < 0 or self.multiplier < 1:
            raise UsageError("RetryPolicy delays must be >= 0 and its multiplier >= 1")

    def retries(self, error: BaseException, attempt: int) -> bool:
        """Whether attempt number ``attempt`` (1-based), having raised ``error``, is retried."""
        if attempt >= self.max_attempts:
            return False
        if isinstance(error, self.give_up_on):
            return False
        return isinstance(error, self.retry_on)

    def delay(self, attempt: int, unit_random: float) -> float:
        """The wait after attempt ``attempt``, given a uniform random number in [0, 1)."""
        ceiling = min(self.max_delay, self.initial_delay * self.multiplier ** (attempt - 1))
        return ceiling * unit_random


DEFAULT_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(max_attempts=1)


def retry(policy: RetryPolicy) -> Callable[[F], F]:
    """Attach a retry policy to a function used as a step: ``@kernos.retry(RetryPolicy(...))``."""

    def attach(fn: F) -> F:
        setattr(fn, _ATTR, policy)
        return fn

    return attach


def policy_of(fn: Callable[..., object], default: RetryPolicy) -> RetryPolicy:
    found = getattr(fn, _ATTR, None)
    return found if isinstance(found, RetryPolicy) else default
