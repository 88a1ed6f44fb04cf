"""The stage a scenario plays on: the provider simulator and the worker processes.

Everything is a real process started the way an operator would (``python -m kernos sim``,
``python -m kernos worker``), with its output in a log file of the scenario's directory, so a
surprising report can be checked against what each process said. ``close`` leaves nothing
running whatever happened.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from kernos.errors import KernosError

__all__ = ["ChaosError", "Stage", "WorkerSlot"]


class ChaosError(KernosError):
    """The scenario could not be set up or run (a process did not start, a port was taken)."""


@dataclass(slots=True)
class WorkerSlot:
    """One of the W worker positions; a killed worker is replaced in the same slot."""

    index: int
    proc: subprocess.Popen[bytes] | None = None
    #: pids this slot has run, oldest first
    pids: list[int] = field(default_factory=list)
    starts: int = 0


class Stage:
    def __init__(
        self,
        directory: Path,
        *,
        app: str,
        database_url: str,
        workers: int,
        lease_ttl: float,
        concurrency: int,
        env: dict[str, str],
    ) -> None:
        self.directory = directory
        self.app = app
        self.database_url = database_url
        self.lease_ttl = lease_ttl
        self.concurrency = concurrency
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.slots = [WorkerSlot(i) for i in range(workers)]
        self.sim: subprocess.Popen[bytes] | None = None
        self.sim_url = ""
        self._next_kill = 0

    # -- the simulator ---------------------------------------------------------------------

    def start_simulator(self, seed: int) -> str:
        port = _free_port()
        with (self.directory / "sim.log").open("ab") as log:
            self.sim = subprocess.Popen(
                [sys.executable, "-m", "kernos", "sim", "--port", str(port), "--seed", str(seed)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.sim_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.sim_url}/_sim/health", timeout=1):
                    return self.sim_url
            except OSError:
                if time.monotonic() > deadline or self.sim.poll() is not None:
                    raise ChaosError(
                        f"the provider simulator did not start on port {port}; see "
                        f"{self.directory / 'sim.log'}"
                    ) from None
                time.sleep(0.05)

    # -- workers -----------------------------------------------------------------------------

    def start(self, slot: WorkerSlot) -> int:
        slot.starts += 1
        name = f"worker-{slot.index + 1}"
        with (self.directory / f"{name}.log").open("ab") as log:
            slot.proc = subprocess.Popen(
                self._worker_command(),
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        slot.pids.append(slot.proc.pid)
        return slot.proc.pid

    def _worker_command(self) -> list[str]:
        return [
            sys.executable, "-m", "kernos", "worker",
            "--app", self.app,
            "--database", self.database_url,
            "--lease-ttl", str(self.lease_ttl),
            "--concurrency", str(self.concurrency),
            "--poll-interval", "0.2",
            "--log-level", "WARNING",
        ]  # fmt: skip

    def start_all(self) -> None:
        for slot in self.slots:
            self.start(slot)

    def kill(self) -> tuple[WorkerSlot, int]:
        """SIGKILL the next worker in turn; returns its slot and the pid killed."""
        slot = self.slots[self._next_kill % len(self.slots)]
        self._next_kill += 1
        return slot, self._kill(slot)

    def _kill(self, slot: WorkerSlot) -> int:
        assert slot.proc is not None
        pid = slot.proc.pid
        if slot.proc.poll() is None:
            slot.proc.send_signal(signal.SIGKILL)
        slot.proc.wait(timeout=30)
        return pid

    def kill_all(self) -> list[int]:
        return [self._kill(slot) for slot in self.slots if slot.proc is not None]

    def deploy(self, slot: WorkerSlot, timeout: float) -> tuple[int, int | None, float, int]:
        """A rolling deploy of one slot: its replacement starts, then the old worker gets
        SIGTERM and drains. Returns (old pid, its exit code or None, seconds, new pid)."""
        old = slot.proc
        assert old is not None
        new = self.start(slot)
        began = time.monotonic()
        old.send_signal(signal.SIGTERM)
        try:
            code: int | None = old.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            old.kill()
            old.wait()
            code = None
        return old.pid, code, time.monotonic() - began, new

    def revive(self) -> list[int]:
        """Start again every worker that died (crashed, or was killed and not yet restarted)."""
        return [self.start(s) for s in self.slots if s.proc is None or s.proc.poll() is not None]

    def close(self) -> None:
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                slot.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        procs = [s.proc for s in self.slots if s.proc is not None] + (
            [self.sim] if self.sim is not None else []
        )
        if self.sim is not None and self.sim.poll() is None:
            self.sim.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
