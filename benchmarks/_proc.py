"""Worker subprocesses: ``python -m kernos worker --app benchmarks/_apps.py``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from _common import ROOT

APP = str(Path(__file__).resolve().parent / "_apps.py")


def start_worker(
    url: str,
    *,
    lease_ttl: float = 15.0,
    poll_interval: float = 0.1,
    concurrency: int = 100,
    log: Path | None = None,
) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "kernos",
        "worker",
        "--app",
        APP,
        "--lease-ttl",
        str(lease_ttl),
        "--poll-interval",
        str(poll_interval),
        "--concurrency",
        str(concurrency),
        "--database",
        url,
        "--log-level",
        "WARNING",
    ]
    out = open(log, "ab") if log is not None else subprocess.DEVNULL
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=out, env=env)


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_until(pred: object, timeout: float, what: str, interval: float = 0.05) -> None:
    assert callable(pred)
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
