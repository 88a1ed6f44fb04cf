"""Traces leave a worker through a process of their own: the span exporter sidecar.

Building spans, encoding protobuf and sending them costs tens of microseconds per span, all
under the GIL; a worker doing that itself runs its steps measurably slower (half the steps/s
of trivial steps, measured). So ``kernos worker`` starts ``python -m kernos.telemetry``
and only hands it, in batches over a pipe, the committed events that make spans, as plain
tuples (pickled: about 0.2 µs an event). The sidecar builds and exports the spans
(``TraceExporter``) on the other core.

The pipe also makes the traces outlive the worker: a worker killed by SIGKILL closes the pipe,
and the sidecar exports everything it was given before it exits. What is lost is only what the
worker had not yet handed over (at most ``FLUSH_SECONDS`` of events). A sidecar that dies is
started again; the worker never waits for it, and never fails because of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from kernos.store import Event, Run, RunState
from kernos.telemetry._spans import RUN_ENDS, SPAN_EVENTS
from kernos.telemetry._tracing import TracingSettings, exporter_for, tracing_settings

log = logging.getLogger("kernos.telemetry")

#: how often the worker hands its buffered events over, and how many make it hand over at once
FLUSH_SECONDS = 0.1
FLUSH_EVENTS = 2000
#: events buffered at most while the sidecar falls behind (the rest are dropped, counted)
MAX_BUFFERED = 200_000
#: how soon a sidecar that died is started again
RESTART_SECONDS = 5.0
_FRAME = struct.Struct("!I")
_WANTED = SPAN_EVENTS | RUN_ENDS
#: spans of these read nothing from the payload unless contents are exported: not sent
_NO_PAYLOAD = frozenset({"step_completed", "memory_put"})

RunFields = tuple[str, str, str, str, float, int, "str | None", "str | None"]
EventFields = tuple[str, int, str, "int | None", "str | None", int, Any, float, "float | None"]


class SpanPipe:
    """A kernel ``Observer`` that hands committed events to the span exporter sidecar.

    The worker's side never waits on the sidecar: events are appended to a bounded buffer
    (past ``MAX_BUFFERED`` they are dropped and counted), and a thread of its own writes them
    to the pipe. A sidecar that dies is started again (at most every ``RESTART_SECONDS``);
    what could not be handed over meanwhile is counted in ``dropped``.
    """

    def __init__(self, settings: TracingSettings, env: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.env = dict(os.environ if env is None else env)
        #: events that never reached a sidecar (buffer full, sidecar down)
        self.dropped = 0
        self.proc = self._start()
        self._events: list[EventFields] = []
        self._runs: dict[str, RunFields] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._down_since: float | None = None
        self._writer = threading.Thread(target=self._write_loop, name="kernos-span-pipe")
        self._writer.daemon = True
        self._writer.start()

    def _start(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "kernos.telemetry"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=self.env,
            start_new_session=True,  # a Ctrl-C to the worker must not kill its traces first
        )

    # -- Observer ------------------------------------------------------------------------------

    def committed(self, run: Run, events: Sequence[Event]) -> None:
        lean = not self.settings.content
        wanted = [
            (
                run.id,
                e.seq,
                e.type,
                e.step,
                e.name,
                e.attempt,
                {} if lean and e.type in _NO_PAYLOAD else e.payload,
                e.created_at,
                e.duration,
            )
            for e in events
            if e.type in _WANTED
        ]
        if not wanted:
            return
        with self._lock:
            if len(self._events) >= MAX_BUFFERED:
                self.dropped += len(wanted)
                return
            self._events.extend(wanted)
            if run.id not in self._runs:
                self._runs[run.id] = (
                    run.id,
                    run.agent,
                    run.agent_version,
                    run.tenant,
                    run.created_at,
                    run.claims,
                    run.parent_id,
                    run.principal,
                )
            full = len(self._events) >= FLUSH_EVENTS
        if full:
            self._wake.set()

    def claimed(self, run: Run, waited: float) -> None:
        pass

    def leases(self, renewed: int, lost: int) -> None:
        pass

    # -- handing over (the writer thread) ------------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            self._wake.wait(FLUSH_SECONDS)
            self._wake.clear()
            closing = self._closing
            self._hand_over()
            if closing:
                if self.proc.stdin is not None:
                    with contextlib.suppress(OSError):
                        self.proc.stdin.close()  # EOF: the sidecar exports what it has, exits
                return

    def _hand_over(self) -> None:
        with self._lock:
            events, runs = self._events, self._runs
            self._events, self._runs = [], {}
        if not events:
            return
        if self._down_since is not None:
            if time.monotonic() - self._down_since < RESTART_SECONDS or self._closing:
                self.dropped += len(events)
                return
            self._restart()
        body = pickle.dumps((list(runs.values()), events), protocol=pickle.HIGHEST_PROTOCOL)
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            stdin.write(_FRAME.pack(len(body)) + body)
            stdin.flush()
        except (OSError, ValueError) as exc:
            self.dropped += len(events)
            self._down_since = time.monotonic()
            log.error(
                "the span exporter process is gone (%s); %d event(s) not traced so far, "
                "restarting it in %.0f s",
                exc,
                self.dropped,
                RESTART_SECONDS,
            )

    def _restart(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        _close_pipes(self.proc)
        self.proc = self._start()
        self._down_since = None

    def flush(self) -> None:
        """Hand over what is buffered now."""
        self._wake.set()

    def wait_ready(self, timeout: float = 30.0) -> bool:
        """Block until the sidecar has started (imported, exporter built): it says so with
        one line on its stdout. False if it exited instead."""
        stdout = self.proc.stdout
        assert stdout is not None
        ready: list[bytes] = []
        reader = threading.Thread(target=lambda: ready.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        return bool(ready and ready[0].strip() == b"ready")

    async def aclose(self, timeout: float = 15.0) -> None:
        """The worker stops: hand everything over and let the sidecar export it and exit.
        Never blocks the event loop; a sidecar that does not finish in ``timeout`` is killed."""
        self._closing = True
        self._wake.set()
        await asyncio.to_thread(self._writer.join, timeout)
        if self._writer.is_alive():  # stuck writing into a pipe nobody reads
            log.error("the span exporter process is not reading; stopping it")
            with contextlib.suppress(OSError):
                self.proc.kill()
            await asyncio.to_thread(self._writer.join, 5)
        try:
            await asyncio.to_thread(self.proc.wait, timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait)
        _close_pipes(self.proc)


def _close_pipes(proc: subprocess.Popen[bytes]) -> None:
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


def main() -> int:
    """The sidecar: read batches from stdin until it closes, export their spans, exit.

    SIGTERM and SIGINT are ignored: a service manager stopping the worker signals its whole
    group, and the sidecar must outlive the worker's drain to export its last spans. It ends
    when the pipe closes (the worker exited, however it exited)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    settings = tracing_settings()
    if settings is None:
        return 0
    exporter = exporter_for(settings)
    try:
        sys.stdout.write("ready\n")
        sys.stdout.flush()
    except OSError:  # the worker is gone already: export what it handed over all the same
        pass
    stdin = sys.stdin.buffer
    try:
        while True:
            header = stdin.read(_FRAME.size)
            if len(header) < _FRAME.size:
                break
            (size,) = _FRAME.unpack(header)
            body = stdin.read(size)
            if len(body) < size:
                break
            runs, events = pickle.loads(body)
            _export(exporter, runs, events)
    finally:
        exporter.processor.force_flush(10_000)
        exporter.processor.shutdown()
    return 0


def _export(exporter: Any, runs: list[RunFields], events: list[EventFields]) -> None:
    known = {r[0]: _run(r) for r in runs}
    by_run: dict[str, list[Event]] = {}
    for run_id, seq, type_, step, name, attempt, payload, created_at, duration in events:
        by_run.setdefault(run_id, []).append(
            Event(
                seq=seq,
                type=type_,
                step=step,
                name=name,
                attempt=attempt,
                payload=payload,
                created_at=created_at,
                duration=duration,
            )
        )
    for run_id, evs in by_run.items():
        run = known.get(run_id)
        if run is not None:
            exporter.committed(run, evs)


def _run(fields: RunFields) -> Run:
    run_id, agent, version, tenant, created_at, claims, parent_id, principal = fields
    return Run(
        id=run_id,
        agent=agent,
        agent_version=version,
        state=RunState.RUNNING,
        waiting_for=None,
        control=None,
        input="",
        output=None,
        error=None,
        priority=0,
        parent_id=parent_id,
        schedule=None,
        created_at=created_at,
        updated_at=created_at,
        run_at=created_at,
        lease_owner=None,
        lease_token=0,
        lease_expires_at=None,
        claims=claims,
        tenant=tenant,
        principal=principal,
    )
