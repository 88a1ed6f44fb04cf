"""The ``kernos`` command as a user runs it, from tests: a real process on the test's database."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_kernos(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m kernos ARGS --database URL``, from the repository's root."""
    return subprocess.run(
        [sys.executable, "-m", "kernos", *args, "--database", db_url],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )


async def kernos_async(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The same, without blocking the test's event loop (a worker may run in it)."""
    return await asyncio.to_thread(run_kernos, db_url, *args)
