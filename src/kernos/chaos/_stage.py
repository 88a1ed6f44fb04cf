"""The stage a scenario plays on: the provider simulator and the worker processes.

Everything is a real process started the way an operator would (``python -m kernos sim``,
``python -m kernos worker``), with its output in a log file of the scenario's directory, so a
surprising report can be checked against what each process said. Each child gets a session of
its own, so a Ctrl-C at the terminal reaches the runner alone, which then stops them in order;
every process the stage ever started is reaped by ``close``, whatever happened.

The database URL reaches the workers through their environment, not their command line, so a
password in it does not show in ``ps``. All the stage's methods run on the runner's event loop
thread: a kill, a restart and a deploy never interleave.
"""

from __future__ import annotations

import asyncio
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

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass(frozen=True, slots=True)
class Exit:
    """A worker that exited without the runner asking it to: a crash the report must show."""

    pid: int
    code: int | None
    seen_at: float


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
        self.lease_ttl = lease_ttl
        self.concurrency = concurrency
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("KERNOS_")},
            **env,
            "KERNOS_DATABASE_URL": database_url,
            "PYTHONUNBUFFERED": "1",
        }
        self.slots = [WorkerSlot(i) for i in range(workers)]
        self.sim: subprocess.Popen[bytes] | None = None
        self.sim_url = ""
        #: every process ever started, for ``close``
        self._procs: list[subprocess.Popen[bytes]] = []
        #: pids the runner stopped on purpose (a kill, a deploy); any other exit is a crash
        self._stopped: set[int] = set()
        self._crashes_seen: set[int] = set()

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen[bytes]:
        with (self.directory / log_name).open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "kernos", *args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._procs.append(proc)
        return proc

    # -- the simulator ---------------------------------------------------------------------

    def start_simulator(self, seed: int) -> str:
        port = _free_port()
        self.sim = self._spawn(["sim", "--port", str(port), "--seed", str(seed)], "sim.log")
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
        slot.proc = self._spawn(self._worker_args(), f"worker-{slot.index + 1}.log")
        slot.pids.append(slot.proc.pid)
        return slot.proc.pid

    def _worker_args(self) -> list[str]:
        return [
            "worker",
            "--app", self.app,
            "--lease-ttl", str(self.lease_ttl),
            "--concurrency", str(self.concurrency),
            "--poll-interval", "0.2",
            "--log-level", "WARNING",
        ]  # fmt: skip

    def start_all(self) -> None:
        for slot in self.slots:
            self.start(slot)

    def pids(self) -> set[int]:
        return {pid for slot in self.slots for pid in slot.pids}

    def kill(self, slot: WorkerSlot) -> int:
        """SIGKILL the slot's worker (alive, or the caller would not ask); returns its pid."""
        assert slot.proc is not None
        pid = slot.proc.pid
        self._stopped.add(pid)
        if slot.proc.poll() is None:
            slot.proc.send_signal(signal.SIGKILL)
        slot.proc.wait(timeout=30)
        return pid

    def restart(self, slot: WorkerSlot, killed: int) -> int | None:
        """Start the slot again, unless something else (a deploy) already replaced ``killed``."""
        if slot.proc is None or slot.proc.pid != killed or slot.proc.poll() is None:
            return None
        return self.start(slot)

    async def deploy(self, slot: WorkerSlot, timeout: float) -> tuple[int, int | None, float, int]:
        """A rolling deploy of one slot: its replacement starts, then the old worker gets
        SIGTERM and drains. Returns (old pid, its exit code or None, seconds, new pid)."""
        old = slot.proc
        assert old is not None
        self._stopped.add(old.pid)
        new = self.start(slot)
        began = time.monotonic()
        old.send_signal(signal.SIGTERM)
        code: int | None
        try:
            code = await asyncio.to_thread(old.wait, timeout)
        except subprocess.TimeoutExpired:
            old.kill()
            old.wait()
            code = None
        return old.pid, code, time.monotonic() - began, new

    def crashes(self) -> list[Exit]:
        """Workers that exited since the last call without being told to (each reported once);
        their slots are started again."""
        found = []
        for slot in self.slots:
            proc = slot.proc
            if proc is None or proc.poll() is None or proc.pid in self._stopped:
                continue
            if proc.pid not in self._crashes_seen:
                self._crashes_seen.add(proc.pid)
                found.append(Exit(pid=proc.pid, code=proc.returncode, seen_at=time.time()))
                self.start(slot)
        return found

    def close(self) -> None:
        """Stop every process the stage started: SIGTERM, then SIGKILL after 10 s."""
        alive = [p for p in self._procs if p.poll() is None]
        for proc in alive:
            self._stopped.add(proc.pid)
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in alive:
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
