"""Real worker processes for the recovery tests: start, SIGKILL, SIGSTOP/SIGCONT, drain, measure.

A worker is ``python -m kernos worker`` in its own process, exactly what an operator runs. Its
stdout and stderr go to a log file under the test's temporary directory, so a failing test can
show what the worker said. Every process started through ``Workers`` is killed and reaped when
the test ends, whatever happened.

Synchronisation is by condition: ``kernos.testing.wait_until`` polls a predicate until a deadline and fails
with a message naming what was awaited. Nothing here sleeps to let something happen.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
APPS = Path(__file__).resolve().parent / "apps"


class WorkerProcess:
    """One ``kernos worker`` subprocess."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path, name: str) -> None:
        self.proc = proc
        self.log = log
        self.name = name

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> int:
        """SIGKILL: no clean-up, no lease release, nothing flushed. Returns once it is reaped."""
        if self.alive:
            self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait(timeout=30)

    def stop(self) -> None:
        """SIGSTOP: the process is frozen in place (a long GC pause, a stalled VM)."""
        self.proc.send_signal(signal.SIGSTOP)

    def cont(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM: the worker drains, releases its leases and exits; returns the exit code."""
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"worker {self.name} (pid {self.pid}) did not exit within {timeout} s of "
                f"SIGTERM; its log:\n{self.output()[-4000:]}"
            ) from None

    def rss_kib(self) -> int:
        """Resident set size from /proc/PID/status (kB as the kernel reports it)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError(f"no VmRSS in /proc/{self.pid}/status")


class Workers:
    """Starts worker processes for one test and guarantees they are all gone afterwards."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[WorkerProcess] = []

    def start(
        self,
        db_url: str,
        *,
        app: str = "recovery_app.py",
        lease_ttl: float = 1.0,
        poll_interval: float = 0.1,
        concurrency: int | None = None,
        fault: str | None = None,
        grace: float | None = None,
        log_level: str = "INFO",
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
    ) -> WorkerProcess:
        name = f"w{len(self.started) + 1}"
        log = self.directory / f"worker-{name}.log"
        environ = {k: v for k, v in os.environ.items() if not k.startswith("KERNOS_")}
        environ.update(env or {})
        environ["PYTHONUNBUFFERED"] = "1"
        if fault is not None:
            environ["KERNOS_FAULT"] = fault
        cmd = [
            sys.executable, "-m", "kernos", "worker",
            "--app", str(APPS / app),
            "--lease-ttl", str(lease_ttl),
            "--poll-interval", str(poll_interval),
            "--database", db_url,
            "--log-level", log_level,
        ]  # fmt: skip
        if concurrency is not None:
            cmd += ["--concurrency", str(concurrency)]
        if grace is not None:
            cmd += ["--grace", str(grace)]
        cmd += args or []
        with log.open("wb") as out:
            proc = subprocess.Popen(
                cmd, cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT
            )
        worker = WorkerProcess(proc, log, name)
        self.started.append(worker)
        return worker

    def close(self) -> None:
        for worker in self.started:
            worker.kill()  # SIGKILL ends a stopped process too

    def logs(self) -> str:
        """Every worker's log, for an assertion message."""
        return "\n".join(
            f"--- {w.name} (pid {w.pid}) ---\n{w.output()[-3000:]}" for w in self.started
        )


def pid_of_worker(worker_id: str) -> int:
    """The process id inside a worker id (``<host>-<pid>-<suffix>``, see kernos.kernel.Worker)."""
    parts = worker_id.rsplit("-", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        raise AssertionError(f"worker id {worker_id!r} is not <host>-<pid>-<suffix>")
    return int(parts[1])


def read_effects(path: Path) -> list[dict[str, Any]]:
    """The effect records an app appended (one JSON object per line), in the order written."""
    if not path.exists():
        return []
    # Each record is one write ending in a newline; a read racing a write may see the start of
    # the last line only, which is left for the next read.
    complete = path.read_text().split("\n")[:-1]
    return [json.loads(line) for line in complete]


def sqlite_path(db_url: str) -> Path | None:
    prefix = "sqlite:///"
    return Path(db_url[len(prefix) :]) if db_url.startswith(prefix) else None


def run_row_lock_free(db_url: str, run_id: str) -> bool:
    """True when no other process holds a lock that would stall a takeover of ``run_id``.

    SQLite: the database's single write lock is free. PostgreSQL: the run's row can be locked
    ``FOR UPDATE`` at once (a claim skips locked rows).
    """
    path = sqlite_path(db_url)
    if path is not None:
        conn = sqlite3.connect(path, timeout=0.2, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return True
        except sqlite3.OperationalError:
            return False
        finally:
            conn.close()
    with psycopg.connect(db_url, connect_timeout=10) as pg:
        try:
            pg.execute("SELECT 1 FROM kernos_runs WHERE id = %s FOR UPDATE NOWAIT", (run_id,))
        except psycopg.errors.LockNotAvailable:
            return False
        finally:
            pg.rollback()
        return True


@contextmanager
def frozen(worker: WorkerProcess, db_url: str, run_id: str, *, tries: int = 50) -> Iterator[None]:
    """SIGSTOP ``worker`` at a moment it holds no database lock another worker would wait on.

    A process frozen inside a transaction keeps its locks (SQLite's write lock, a PostgreSQL row
    lock): the others then wait for it, which is a liveness matter, not what a fencing test is
    about. So the worker is stopped, the locks checked, and if one is held it is continued and
    stopped again a moment later. SIGCONT on exit.
    """
    for _ in range(tries):
        worker.stop()
        if run_row_lock_free(db_url, run_id):
            break
        worker.cont()
        time.sleep(0.01)  # let it finish its transaction before trying again
    else:
        raise AssertionError(f"could not stop worker {worker.name} outside a transaction")
    try:
        yield
    finally:
        worker.cont()
