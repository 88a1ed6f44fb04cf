"""How long to wait before retrying a provider call, and what the provider asked for.

Delays use full jitter (a uniform draw between zero and the exponential ceiling) so that many
runs failing at the same moment do not retry in lockstep. The random draw is an argument rather
than a call to ``random``: the gateway takes it from the run's context, so a replayed run sees
the same delays and a test can pin them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime

__all__ = ["MAX_RETRY_AFTER", "backoff_delay", "parse_retry_after"]

#: seconds; a server asking for more is clipped to this (a typo, or an hour is as good as ever)
MAX_RETRY_AFTER = 3600.0

# 2.0 ** 1023 is the largest power of two a float holds; beyond it the ceiling is the cap anyway.
_MAX_EXPONENT = 1023

# Plain decimal digits: float() would also take "nan", "inf", "1e3", "-1" and "1_000".
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+", re.ASCII)


def backoff_delay(
    attempt: int,
    *,
    base: float = 0.5,
    cap: float = 30.0,
    retry_after: float | None = None,
    rand: float,
) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based).

    The delay is ``rand * min(cap, base * 2 ** (attempt - 1))`` with ``rand`` uniform in
    ``[0, 1)``, raised to ``retry_after`` when the server sent one: a delay is never shorter
    than what the server asked for, even when that exceeds ``cap`` (the caller decides whether
    to wait that long or fall back to another model). A negative or NaN ``retry_after`` is
    ignored. Raises ``ValueError`` for an attempt below 1, a ``rand`` outside ``[0, 1)`` or a
    negative ``base``/``cap``: those are bugs in the caller, not conditions to handle.
    """
    if attempt < 1:
        raise ValueError(f"attempt is 1-based, got {attempt}")
    if not 0.0 <= rand < 1.0:
        raise ValueError(f"rand must be in [0, 1), got {rand!r}")
    if base < 0 or cap < 0:
        raise ValueError(f"base and cap must be >= 0, got base={base!r} cap={cap!r}")
    # A float product overflows to inf rather than raising, and min() then picks the cap.
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, _MAX_EXPONENT))
    delay = rand * ceiling
    if retry_after is not None and retry_after > delay:
        return retry_after
    return delay


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds the server asked us to wait, from a response's headers, or ``None``.

    ``retry-after-ms`` (milliseconds, as OpenAI and Anthropic send) wins over ``retry-after``
    (delta-seconds, integral or not, or an HTTP-date). Header names match case-insensitively
    whatever the mapping. A value that is not a plain non-negative decimal (or, for
    ``retry-after``, a date) is ignored and the next header tried; a date in the past means zero; anything above
    ``MAX_RETRY_AFTER`` is clipped to it. ``now`` is the wall-clock time (``time.time()``
    when omitted) against which an HTTP-date is measured.
    """
    millis: str | None = None
    seconds: str | None = None
    for name, value in headers.items():
        lowered = name.lower()
        if lowered == "retry-after-ms":
            millis = value
        elif lowered == "retry-after":
            seconds = value
    if millis is not None:
        parsed = _number(millis)
        if parsed is not None:
            return min(parsed / 1000.0, MAX_RETRY_AFTER)
    if seconds is None:
        return None
    parsed = _number(seconds)
    if parsed is None:
        parsed = _seconds_until_date(seconds, time.time() if now is None else now)
    return None if parsed is None else min(parsed, MAX_RETRY_AFTER)


def _number(text: str) -> float | None:
    stripped = text.strip()
    if _DECIMAL.fullmatch(stripped) is None:
        return None
    return float(stripped)


def _seconds_until_date(text: str, now: float) -> float | None:
    try:
        when = parsedate_to_datetime(text.strip())
    except (TypeError, ValueError, IndexError):
        return None
    # RFC 9110 dates are GMT; a date without a zone ("-0000") comes back naive.
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)
