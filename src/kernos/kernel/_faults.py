"""Fault points a test (or ``kernos chaos``) can arm to crash a worker at an exact moment.

``KERNOS_FAULT=after_effect:charge`` kills the worker process (SIGKILL, no clean-up) right after
the step named ``charge`` has run its function and before its result is committed: the window in
which guarantee 2 (at-least-once steps, idempotency keys) matters. Several points are separated
by commas. Points: ``before_effect``, ``after_effect`` (per step name, or ``*``).
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

from kernos.errors import ConfigError

POINTS = ("before_effect", "after_effect")


@dataclass(frozen=True, slots=True)
class Faults:
    armed: frozenset[tuple[str, str]] = frozenset()

    @classmethod
    def parse(cls, spec: str | None) -> Faults:
        if not spec:
            return cls()
        armed = set()
        for item in spec.split(","):
            point, _, step = item.strip().partition(":")
            if point not in POINTS or not step:
                raise ConfigError(
                    f"KERNOS_FAULT item {item!r} is not POINT:STEP with POINT one of "
                    f"{', '.join(POINTS)} (e.g. after_effect:charge)"
                )
            armed.add((point, step))
        return cls(frozenset(armed))

    def hit(self, point: str, step: str) -> None:
        if (point, step) in self.armed or (point, "*") in self.armed:
            os.kill(os.getpid(), signal.SIGKILL)
