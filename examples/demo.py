"""`make demo`: what a framework cannot do, shown with real processes in under a minute.

1. A worker process runs an 8-step order pipeline (each step has a visible effect).
2. Mid-run, the worker is killed with SIGKILL: no clean-up, no goodbye.
3. A new worker claims the run once the dead worker's lease expires, replays the journal, and
   continues at the step where the first one died. Completed steps are not redone.
4. `kernos trace` shows both claims; the effects log shows each stage's effect.
5. On the way, the pipeline asks a model, through the gateway, on a bad afternoon: the provider
   simulator (a real HTTP server, `kernos sim`) has Anthropic overloaded and OpenAI rate-limiting
   once. The call retries, falls back across families, honours retry-after, and the trace and
   `kernos costs` show every attempt.

7. A support agent (examples/support.py) answers a customer with real tools: it looks the order
   up and refunds it, each model and tool call a journaled step, the refund made once.

Everything runs on the embedded default database (SQLite under .kernos/), through the same
`kernos` commands a user types.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

from rich.console import Console

from kernos.kernel import connect
from kernos.store import RunState, new_run_id

console = Console(highlight=False)
ROOT = Path(__file__).resolve().parent.parent
EFFECTS = ROOT / ".kernos" / "demo-effects.log"
CONFIG = ROOT / ".kernos" / "demo-kernos.toml"
ACME_DB = ROOT / ".kernos" / "demo-acme.db"
LEASE_TTL = 3.0
SIM_FAULTS = [
    "anthropic:overloaded",  # 529 on every request: the breaker and the fallback get to work
    "openai:rate_limit:count=1,retry_after=1",  # one 429 asking for a second's patience
]
ENV = {
    **os.environ,
    "KERNOS_CONFIG": str(CONFIG),
    "KERNOS_DEMO_EFFECTS": str(EFFECTS),
    "KERNOS_ACME_DB": str(ACME_DB),
    "KERNOS_LEASE_TTL": str(LEASE_TTL),
    "KERNOS_POLL_INTERVAL": "0.2",
    "PYTHONUNBUFFERED": "1",
    "COLUMNS": "130",  # room for the trace's details
}
KERNOS = [sys.executable, "-m", "kernos"]


def act(number: int, title: str, why: str) -> None:
    console.print()
    console.rule(f"[bold]Act {number}: {title}")
    console.print(f"[dim]{why}[/]")


def show(cmd: list[str]) -> str:
    console.print(f"[bold cyan]$ kernos {' '.join(cmd)}[/]")
    done = subprocess.run(
        [*KERNOS, *cmd], env=ENV, cwd=ROOT, capture_output=True, text=True, check=False
    )
    text = done.stdout.rstrip()
    if text:
        console.print(text, markup=False, soft_wrap=True)
    if done.returncode != 0:
        console.print(done.stderr, markup=False)
        raise SystemExit(f"kernos {' '.join(cmd)} failed with exit code {done.returncode}")
    return text


def start_worker(name: str, app: str = "examples.pipeline") -> subprocess.Popen[bytes]:
    console.print(f"[bold cyan]$ kernos worker --app {app}[/]   [dim]({name})[/]")
    with (ROOT / ".kernos" / f"demo-{name.replace(' ', '-')}.log").open("wb") as log:
        proc = subprocess.Popen(
            [*KERNOS, "worker", "--app", app, "--log-level", "WARNING"],
            env=ENV,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    WORKERS.append(proc)
    return proc


async def completed_steps(run_id: str) -> int:
    client = await connect()
    try:
        events = await client.journal(run_id)
    finally:
        await client.close()
    return sum(1 for e in events if e.type == "step_completed")


async def wait_for(run_id: str, predicate_steps: int, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if await completed_steps(run_id) >= predicate_steps:
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    raise SystemExit(f"run {run_id} did not reach {predicate_steps} steps in {timeout}s")


async def wait_done(run_id: str, timeout: float) -> RunState:
    client = await connect()
    try:
        run = await client.wait(run_id, timeout=timeout, poll=0.1)
    finally:
        await client.close()
    return run.state


WORKERS: list[subprocess.Popen[bytes]] = []
SIM_URL: list[str] = []


def start_simulator() -> subprocess.Popen[bytes]:
    """`kernos sim` on a free port, and a kernos.toml whose providers point at it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    faults = [arg for f in SIM_FAULTS for arg in ("--fault", f)]
    console.print(f"[bold cyan]$ kernos sim --port {port} {' '.join(faults)}[/]")
    with (ROOT / ".kernos" / "demo-sim.log").open("wb") as log:
        proc = subprocess.Popen(
            [*KERNOS, "sim", "--port", str(port), "--seed", "1", *faults],
            env=ENV,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    WORKERS.append(proc)
    url = f"http://127.0.0.1:{port}"
    SIM_URL.append(url)
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_sim/health", timeout=1):
                break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("the provider simulator did not start") from None
            time.sleep(0.05)
    CONFIG.write_text(
        f"""# written by examples/demo.py: the providers are the simulator
[providers.anthropic]
kind = "anthropic"
base_url = "{url}/anthropic"
api_key_env = ""

[providers.openai]
kind = "openai"
base_url = "{url}/openai/v1"
api_key_env = ""

[routes]
support = ["anthropic:claude-haiku-4-5", "openai:gpt-4.1-mini"]

[gateway]
backoff_base = 0.2
"""
    )
    return proc


async def main() -> None:
    try:
        await story()
    finally:
        for proc in WORKERS:  # a failed act must not leave workers behind
            if proc.poll() is None:
                proc.kill()
                proc.wait()


async def story() -> None:
    (ROOT / ".kernos").mkdir(exist_ok=True)
    EFFECTS.unlink(missing_ok=True)
    order = f"ORD-{new_run_id()[-5:]}"
    started = time.monotonic()

    act(1, "a worker runs an agent", "The agent is plain async Python; each ctx.step is journaled.")
    start_simulator()
    show(["db", "migrate"])
    worker_a = start_worker("worker A")
    run_id = show(
        ["run", "pipeline", "--app", "examples.pipeline", "--input", f'{{"id": "{order}"}}']
    )

    await wait_for(run_id, 3, timeout=30)
    act(
        2, "the worker is killed mid-run", "SIGKILL: the process dies between two steps, or in one."
    )
    os.kill(worker_a.pid, signal.SIGKILL)
    worker_a.wait()
    killed_at = time.monotonic()
    before = await completed_steps(run_id)
    console.print(f"[bold red]worker A killed[/] with {before} of 8 steps completed.")
    show(["inspect", run_id])

    act(
        3,
        "a new worker resumes the run from its journal",
        f"Once the dead worker's lease expires ({LEASE_TTL:.0f} s here, 15 s by default), "
        "another worker claims the run, replays the journal, and continues.",
    )
    worker_b = start_worker("worker B")
    await wait_for(run_id, before + 1, timeout=30)
    recovery = time.monotonic() - killed_at
    state = await wait_done(run_id, timeout=60)
    console.print(
        f"run {run_id} is [bold green]{state.value}[/]; it progressed again {recovery:.1f} s "
        f"after the kill."
    )

    act(4, "nothing was redone", "Each stage's effect, counted from the effects log:")
    counts = Counter(
        line.split()[0] for line in EFFECTS.read_text().splitlines() if line.split()[1] == order
    )
    keys: dict[str, set[str]] = {}
    for line in EFFECTS.read_text().splitlines():
        stage, oid, key = line.split()
        if oid == order:
            keys.setdefault(stage, set()).add(key)
    for stage, n in counts.items():
        note = ""
        if n > 1:
            note = (
                f"  [yellow](in flight when the worker died: ran again with the same "
                f"idempotency key {next(iter(keys[stage]))})[/]"
            )
        console.print(f"  {stage:<18} {n}x{note}")
    repeated = sum(n - 1 for n in counts.values())
    console.print(
        f"[bold]{len(counts)} stages, {repeated} repeated effect(s)[/] "
        "(a step repeats only if it was in flight at the kill; its key lets a tool deduplicate)."
    )

    act(5, "the trace", "The journal as a tree: one branch per claim, worker A's and worker B's.")
    show(["trace", run_id])

    act(
        6,
        "the model call on a bad afternoon",
        "Anthropic answered 529 (overloaded) three times: the gateway fell back to OpenAI, which "
        "asked for a second's patience (429, retry-after 1 s) and then answered. Each attempt is a "
        "journal event (llm_attempt above); the cost comes from the answer's real usage:",
    )
    show(["costs", "--by", "model"])

    await support_conversation()

    worker_b.send_signal(signal.SIGTERM)
    code = worker_b.wait(timeout=30)
    console.print()
    console.print(
        f"[dim]worker B stopped on SIGTERM with exit code {code}. "
        f"Demo took {time.monotonic() - started:.1f} s.[/]"
    )


async def support_conversation() -> None:
    """Act 7: the support agent of examples/support.py, on the simulator's scripted replies."""
    act(
        7,
        "a support agent with tools",
        "A declarative kernos.Agent (examples/support.py): each model call and each tool call is "
        "a journaled step. The model's replies are scripted in the simulator; the tools are real "
        "and the refund lands in a ledger keyed by the call's idempotency key.",
    )
    ACME_DB.unlink(missing_ok=True)
    lookup = {"tool_calls": [{"name": "lookup_order", "arguments": {"order_id": "A-17"}}]}
    refund = {
        "tool_calls": [
            {
                "name": "issue_refund",
                "arguments": {"order_id": "A-17", "amount": 42.5, "reason": "arrived broken"},
            }
        ]
    }
    answer = "I'm sorry about the kettle. I refunded 42.50 EUR for order A-17."
    show(["sim", "script", "openai", json.dumps(lookup), json.dumps(refund), answer,
          "--url", SIM_URL[0]])  # fmt: skip
    worker_c = start_worker("worker C", app="examples.support")
    question = '"My kettle (order A-17) arrived broken. Can I have my money back?"'
    run_id = show(["run", "support", "--app", "examples.support", "--input", question])
    state = await wait_done(run_id, timeout=60)
    console.print(f"run {run_id} is [bold green]{state.value}[/].")
    show(["inspect", run_id])
    sys.path.insert(0, str(ROOT))
    from examples.support import refunds

    os.environ["KERNOS_ACME_DB"] = str(ACME_DB)
    made = refunds()
    console.print(
        f"[bold]{len(made)} refund(s) in the ledger[/]: "
        + ", ".join(f"{r['order_id']} {r['amount']:.2f} (key {r['key']})" for r in made)
    )
    worker_c.send_signal(signal.SIGTERM)
    worker_c.wait(timeout=30)


if __name__ == "__main__":
    asyncio.run(main())
