"""Trace and span ids derived from what a run is, not from where it happens to execute.

A run's trace id is its run id (a ULID is 128 bits, the size of a trace id), so every worker
that ever executes the run, before or after a crash, exports into the same trace without
telling each other anything, and anyone holding a run id can find its trace. Span ids are
hashes of the run id and the span's place in the run (a call position, a journal sequence
number): a span exported twice would carry the same id, and a child can name its parent
before the parent is exported.
"""

from __future__ import annotations

import hashlib

_CROCKFORD = {c: i for i, c in enumerate("0123456789ABCDEFGHJKMNPQRSTVWXYZ")}
_MAX_128 = (1 << 128) - 1


def trace_id_of(run_id: str) -> int:
    """The run's trace id: the ULID's 128 bits; a hash for an id that is not a ULID."""
    value = 0
    if len(run_id) == 26:
        for char in run_id.upper():
            digit = _CROCKFORD.get(char)
            if digit is None:
                value = -1
                break
            value = value * 32 + digit
        if 0 < value <= _MAX_128:
            return value
    return int.from_bytes(hashlib.sha256(run_id.encode()).digest()[:16], "big") or 1


def span_id_of(run_id: str, place: str) -> int:
    """A span's id from the run and its place in it (never 0, which OpenTelemetry forbids)."""
    digest = hashlib.blake2b(f"{run_id}/{place}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") or 1


def trace_id_hex(run_id: str) -> str:
    """The trace id as the 32 hex digits tracing back ends and logs show."""
    return f"{trace_id_of(run_id):032x}"
