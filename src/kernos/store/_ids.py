"""Run ids: 26-character, time-sortable, URL-safe (the ULID layout: 48-bit ms time, 80 random bits).

Sorting ids sorts runs by creation time, which keeps the runs list and the primary-key index in
insertion order. Within one process ids are strictly increasing (ULID's monotonic mode): two
runs created in the same millisecond still list in the order they were made.
"""

from __future__ import annotations

import os
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: no I, L, O, U
_RANDOM_BITS = 80
_lock = threading.Lock()
_last = 0


def new_run_id(at: float | None = None) -> str:
    """A new run id; ``at`` (epoch seconds) sets its time part, for ids made for a past tick."""
    global _last
    millis = int((time.time() if at is None else at) * 1000) & ((1 << 48) - 1)
    value = (millis << _RANDOM_BITS) | int.from_bytes(os.urandom(10), "big")
    if at is None:
        with _lock:
            if value >> _RANDOM_BITS == _last >> _RANDOM_BITS and value <= _last:
                value = _last + 1  # same millisecond: one more than the last id
            _last = max(_last, value)
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))
