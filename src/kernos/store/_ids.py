"""Run ids: 26-character, time-sortable, URL-safe (the ULID layout: 48-bit ms time, 80 random bits).

Sorting ids sorts runs by creation time, which keeps the runs list and the primary-key index in
insertion order.
"""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: no I, L, O, U


def new_run_id(at: float | None = None) -> str:
    """A new run id; ``at`` (epoch seconds) sets its time part, for ids made for a past tick."""
    millis = int((time.time() if at is None else at) * 1000) & ((1 << 48) - 1)
    value = (millis << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))
