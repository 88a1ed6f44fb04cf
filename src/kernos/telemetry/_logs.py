"""Logs as JSON lines that name the run, the step and the trace they belong to.

``--log-format json`` on ``kernos worker`` and ``kernos serve`` (or ``KERNOS_LOG_FORMAT=json``)
writes one JSON object per line: time, level, logger, message, and, when the line was logged
while a run was executing, its ``run_id``, ``step`` and ``trace_id`` (the run's trace id, as
the traces carry it), so a log search and a trace lead to each other. The run is found from
the asyncio task executing it (each run's task is named ``kernos-run-<id>``), and the step
from the idempotency key of the call in progress: nothing has to be passed to loggers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from kernos.errors import UsageError
from kernos.kernel import idempotency_key
from kernos.telemetry._ids import trace_id_hex

_TASK_PREFIX = "kernos-run-"
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with the run's context when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        run_id, step = _context()
        if run_id is not None:
            out["run_id"] = run_id
            out["trace_id"] = trace_id_hex(run_id)
            if step is not None:
                out["step"] = step
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value if _plain(value) else repr(value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=repr)


def configure_logging(level: str = "INFO", fmt: str = "console") -> None:
    """Root logging for a kernos process: readable lines, or JSON (``fmt="json"``)."""
    if fmt not in ("console", "json"):
        raise UsageError(f"log format {fmt!r}: use 'console' or 'json'")
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _context() -> tuple[str | None, int | None]:
    step: int | None = None
    run_id: str | None = None
    try:
        key = idempotency_key()
    except UsageError:
        key = None
    if key is not None:
        run_id, _, position = key.rpartition(":")
        step = int(position) if position.isdigit() else None
    if run_id is None:
        try:
            task = asyncio.current_task()
        except RuntimeError:  # no running loop: a thread's log line
            task = None
        name = task.get_name() if task is not None else ""
        if name.startswith(_TASK_PREFIX):
            run_id = name[len(_TASK_PREFIX) :]
    return run_id or None, step


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)
