"""Cron expressions (via croniter), validated up front with a clear error."""

from __future__ import annotations

from datetime import UTC, datetime

from croniter import croniter

from kernos.errors import InvalidInput


def validate_cron(expr: str) -> None:
    if not croniter.is_valid(expr):
        raise InvalidInput(
            f"{expr!r} is not a valid cron expression; use five fields, e.g. '*/5 * * * *' "
            f"(every five minutes) or '0 9 * * mon-fri'"
        )


def next_fire(expr: str, after: float) -> float:
    """The first tick of ``expr`` strictly after ``after`` (epoch seconds, UTC)."""
    start = datetime.fromtimestamp(after, tz=UTC)
    return float(croniter(expr, start).get_next(float))
