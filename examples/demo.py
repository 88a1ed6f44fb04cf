"""`make demo`: the story of kernos in under two minutes, told by ACME's support agent.

The agent is examples/support.py: a declarative ``kernos.Agent`` whose tools look orders up and
refund them (into a real SQLite ledger, keyed by ``kernos.idempotency_key()``).

1. The model providers have a bad afternoon. The provider simulator (``kernos sim``, a real
   HTTP server speaking the OpenAI and Anthropic APIs) rate-limits OpenAI, the support route's
   first model. A customer's conversation goes through anyway: the gateway waits as long as
   each 429's ``retry-after`` asks, then falls back to Anthropic.
2. Another customer wants 310 EUR back. A policy in kernos.toml says refunds over 100 EUR need
   a person: the run waits for approval, holding no worker (``kernos approvals list``).
3. A person approves it from the CLI (``kernos approvals approve ID --by ...``).
4. The worker is killed with SIGKILL while the refund waits for the payment provider's
   confirmation: the money has gone out, the journal does not know yet.
5. Another worker takes the run over once the dead worker's lease expires, replays the
   conversation from its journal (no model call is made again) and runs the refund again under
   the same idempotency key: the ledger holds each refund once.
6. ``kernos trace``: the run as a tree, one branch per worker.
7. ``kernos costs``: what the model calls cost, from their real token usage.
8. ``kernos audit verify``: the approval and the policy's decisions are in a hash-chained log.

Everything runs on the embedded default database (SQLite, in .kernos/demo/; set
KERNOS_DEMO_DIR to put it elsewhere), through the same ``kernos`` commands a user types.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from kernos.kernel import connect
from kernos.store import Run, RunState

console = Console(highlight=False)
ROOT = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("KERNOS_DEMO_DIR") or ROOT / ".kernos" / "demo").resolve()
DATABASE = STATE / "kernos.db"
CONFIG = STATE / "kernos.toml"
LEDGER = STATE / "acme.db"
LEASE_TTL = 3.0
CONFIRM_SECONDS = 2.0  # how long the payment provider takes to confirm a refund
APPROVER = "alice"
#: OpenAI answers the first three requests 429, each asking for a second's patience
SIM_FAULTS = ["openai:rate_limit:count=3,retry_after=1"]
OWN_ENV = {
    "KERNOS_DATABASE_URL": f"sqlite:///{DATABASE}",
    "KERNOS_CONFIG": str(CONFIG),
    "KERNOS_ACME_DB": str(LEDGER),
    "KERNOS_ACME_CONFIRM_SECONDS": str(CONFIRM_SECONDS),
    "KERNOS_LEASE_TTL": str(LEASE_TTL),
    "KERNOS_POLL_INTERVAL": "0.2",
}
ENV = {**os.environ, **OWN_ENV, "PYTHONUNBUFFERED": "1", "COLUMNS": "130"}
KERNOS = [sys.executable, "-m", "kernos"]
PROCS: list[subprocess.Popen[bytes]] = []

TITLES = [
    "a support conversation on a bad afternoon",
    "a big refund waits for a person",
    "approved from the CLI",
    "the worker is killed mid-conversation",
    "another worker finishes the conversation",
    "the trace",
    "the cost",
    "the audit log, verified",
]


def act(number: int, setting: str) -> None:
    """An act's title, and what is about to happen."""
    console.print()
    console.rule(f"[bold]Act {number}: {TITLES[number - 1]}")
    console.print(f"[dim]{setting}[/]")


def say(text: str) -> None:
    console.print(text)


def moral(happened: str, why: str) -> None:
    """What just happened, and why it matters."""
    console.print(f"[bold green]What happened:[/] {happened}")
    console.print(f"[bold green]Why it matters:[/] {why}")


def expect(ok: bool, what: str) -> None:
    """The story is checked as it is told: a demo that did not happen as narrated fails."""
    if not ok:
        raise SystemExit(f"the demo did not go as told: expected {what}")


def show(cmd: list[str], *, quiet: bool = False) -> str:
    """Run ``kernos CMD`` as a user would; print the command and (unless quiet) its output."""
    if not quiet:
        console.print(f"[bold cyan]$ kernos {' '.join(_quoted(c) for c in cmd)}[/]")
    done = subprocess.run(
        [*KERNOS, *cmd], env=ENV, cwd=ROOT, capture_output=True, text=True, check=False
    )
    text = done.stdout.rstrip()
    if text and not quiet:
        console.print(text, markup=False, soft_wrap=True)
    if done.returncode != 0:
        console.print(done.stderr, markup=False)
        raise SystemExit(f"kernos {' '.join(cmd)} failed with exit code {done.returncode}")
    return text


def _quoted(arg: str) -> str:
    """``arg`` as a user would type it in a shell."""
    if arg and all(c.isalnum() or c in "-_.:/=@," for c in arg):
        return arg
    if "'" in arg and not any(c in arg for c in '"$`\\!'):
        return f'"{arg}"'
    return shlex.quote(arg)


def start(name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
    """``kernos CMD`` in the background, its output in a log file of the state directory."""
    with (STATE / f"{name.replace(' ', '-')}.log").open("wb") as log:
        proc = subprocess.Popen(
            [*KERNOS, *cmd], env=ENV, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
    PROCS.append(proc)
    return proc


def start_worker(name: str) -> subprocess.Popen[bytes]:
    cmd = ["worker", "--app", "examples.support", "--log-level", "WARNING"]
    console.print(f"[bold cyan]$ kernos {' '.join(cmd)} &[/]   [dim]({name})[/]")
    return start(name, cmd)


def start_simulator() -> str:
    """``kernos sim`` on a free port, and a kernos.toml whose providers point at it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    faults = [arg for f in SIM_FAULTS for arg in ("--fault", f)]
    cmd = ["sim", "--port", str(port), *faults]
    console.print(f"[bold cyan]$ kernos {' '.join(cmd)} &[/]")
    proc = start("sim", cmd)
    url = f"http://127.0.0.1:{port}"
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
[providers.openai]
kind = "openai"
base_url = "{url}/openai/v1"
api_key_env = ""

[providers.anthropic]
kind = "anthropic"
base_url = "{url}/anthropic"
api_key_env = ""

[routes]
support = ["openai:gpt-4.1-mini", "anthropic:claude-haiku-4-5"]

[gateway]
max_attempts = 3    # per model, then the next model of the route
backoff_base = 0.2

[[policy.rules]]
name = "big-refunds"
when = 'kind == "tool" && tool == "issue_refund" && args.amount > 100'
effect = "require_approval"
reason = "refunds over 100 EUR need a person"
"""
    )
    return url


# -- reading the state, as the demo's narrator ----------------------------------------------


async def get_run(run_id: str) -> Run:
    client = await connect()
    try:
        return await client.get(run_id)
    finally:
        await client.close()


async def wait_until_run(run_id: str, what: str, ok: Callable[[Run], bool], timeout: float) -> Run:
    deadline = time.monotonic() + timeout
    while True:
        run = await get_run(run_id)
        if ok(run):
            return run
        if run.state in (RunState.FAILED, RunState.CANCELLED) or time.monotonic() > deadline:
            raise SystemExit(f"run {run_id} did not get to {what} ({run.state.value}): {run.error}")
        await asyncio.sleep(0.05)


async def finished(run_id: str, timeout: float = 60) -> Run:
    run = await wait_until_run(
        run_id, "completed", lambda r: r.state == RunState.COMPLETED, timeout
    )
    say(f"run {run_id} is [bold green]{run.state.value}[/]. The agent's answer:")
    say(f"  [italic]{json.loads(run.output or 'null')}[/]")
    return run


def ledger() -> list[tuple[str, str, float]]:
    """(idempotency key, order, amount) of every refund made, from ACME's ledger."""
    if not LEDGER.exists():
        return []
    with sqlite3.connect(LEDGER, timeout=10) as conn:
        rows = conn.execute("SELECT idempotency_key, order_id, amount FROM refunds ORDER BY rowid")
        return [(str(k), str(o), float(a)) for k, o, a in rows]


def show_ledger() -> None:
    made = ledger()
    say(f"[bold]ACME's ledger: {len(made)} refund(s)[/]")
    for key, order, amount in made:
        say(f"  {order:<5} {amount:>7.2f} EUR   idempotency key {key}")


async def llm_story(run_id: str) -> list[tuple[str, str]]:
    """What each model call of a run went through, attempt by attempt, from its journal."""
    client = await connect()
    try:
        events = await client.journal(run_id)
    finally:
        await client.close()
    call, previous = 0, None
    seen: list[tuple[str, str]] = []
    for event in events:
        p = event.payload
        if event.type == "llm_checked":  # a new model call
            call, previous = call + 1, None
        if event.type not in ("llm_attempt", "llm_completed"):
            continue
        if event.type == "llm_attempt":
            where, began = f"{p['provider']}:{p['model']}", p["started_at"]
            then = f"retry {p['delay']:.2f} s" if p.get("then") == "retry" else p.get("then")
            outcome = f"{p['status']} {p['error_class']} -> {then}"
            seen.append((p["provider"], p["error_class"]))
        else:
            answer = p["response"]
            where = f"{answer['provider']}:{answer['model']}"
            began = event.created_at - answer["latency"]
            outcome = "answered"
            seen.append((answer["provider"], "answered"))
        gap = f"+{began - previous:.2f} s" if previous is not None else ""
        previous = began
        say(f"  call {call}  {where:<26} {gap:>7}  {outcome}")
    return seen


async def refund_completed(run_id: str) -> bool:
    """Whether the run's journal records issue_refund as completed."""
    client = await connect()
    try:
        events = await client.journal(run_id)
    finally:
        await client.close()
    return any(e.type == "tool_completed" and e.name == "issue_refund" for e in events)


def show_audit() -> None:
    """``kernos audit list``, one line per entry (its details are in the JSON)."""
    entries = json.loads(show(["audit", "list", "--json"], quiet=True))
    console.print("[bold cyan]$ kernos audit list[/]   [dim](one line per entry here)[/]")
    for e in entries:
        target = Path(e["target"]).name if e["target"].startswith("/") else e["target"]
        line = f"  {e['seq']:>2}  {e['action']:<24} {e['actor']:<24} {target}"
        console.print(line, markup=False, soft_wrap=True)


def answered_by_models(url: str) -> tuple[int, int]:
    """(requests the simulator received, requests it answered), from its request log."""
    with urllib.request.urlopen(f"{url}/_sim/log", timeout=10) as response:
        entries = json.load(response)["entries"]
    return len(entries), sum(1 for e in entries if e["status"] == 200)


# -- the story ------------------------------------------------------------------------------


def script(provider: str, url: str, *replies: object) -> None:
    texts = [r if isinstance(r, str) else json.dumps(r) for r in replies]
    show(["sim", "script", provider, *texts, "--url", url])


def tool_call(name: str, **arguments: object) -> dict[str, object]:
    return {"tool_calls": [{"name": name, "arguments": arguments}]}


async def story() -> None:
    STATE.mkdir(parents=True, exist_ok=True)
    for made in (DATABASE, LEDGER, CONFIG):  # a fresh start: this demo's own files only
        for suffix in ("", "-wal", "-shm"):
            made.with_name(made.name + suffix).unlink(missing_ok=True)
    os.environ.update(OWN_ENV)  # the narrator reads the database the commands write
    started = time.monotonic()

    act(
        1,
        "ACME's support agent (examples/support.py) answers customers with real tools: it looks "
        "orders up and refunds them into ACME's ledger. The model is the provider simulator "
        "(kernos sim, a real HTTP server) with scripted replies, so the story is the same "
        "every time. This afternoon it answers OpenAI's first three requests with 429, each "
        "asking for a second's patience.",
    )
    url = start_simulator()
    show(["db", "migrate"])
    worker_a = start_worker("worker A")
    script("anthropic", url, tool_call("lookup_order", order_id="A-17"))
    script(
        "openai",
        url,
        tool_call("issue_refund", order_id="A-17", amount=42.5, reason="arrived broken"),
        "I'm sorry about the kettle. I refunded 42.50 EUR for order A-17.",
    )
    first = show(
        ["run", "support", "--app", "examples.support", "--input",
         '"My kettle (order A-17) arrived broken. Can I have my money back?"']
    )  # fmt: skip
    await finished(first)
    say("Each model call, attempt by attempt (from the run's journal):")
    attempts = await llm_story(first)
    expect(
        [(a[0], a[1]) for a in attempts[:4]]
        == [("openai", "rate_limited")] * 3 + [("anthropic", "answered")],
        "three 429s from OpenAI, then Anthropic's answer",
    )
    moral(
        "The first call waited out each retry-after, gave up on OpenAI after 3 attempts and "
        "fell back to Anthropic. The customer got an answer and a 42.50 EUR refund.",
        "Providers rate-limit and fall over every week. The gateway copes, and every attempt "
        "is in the run's journal.",
    )

    act(
        2,
        "A second customer wants 310 EUR back. The demo's kernos.toml has this policy rule:",
    )
    rule = CONFIG.read_text().split("[[policy.rules]]")[1].strip()
    say("\n".join(f"  [dim]{line}[/]" for line in rule.splitlines()))
    script(
        "openai",
        url,
        tool_call("lookup_order", order_id="C-9"),
        tool_call("issue_refund", order_id="C-9", amount=310, reason="stopped working"),
        "I refunded 310.00 EUR for your espresso machine (order C-9). Sorry for the trouble!",
    )
    second = show(
        ["run", "support", "--app", "examples.support", "--input",
         '"My espresso machine (order C-9) stopped working after a week. Refund it, please."']
    )  # fmt: skip
    await wait_until_run(
        second,
        "waiting for approval",
        lambda r: r.state == RunState.WAITING and (r.waiting_for or "").startswith("approval"),
        timeout=60,
    )
    show(["approvals", "list"])
    moral(
        "The model asked for the refund; the policy stopped the call before it ran. The run is "
        "waiting (for: approval).",
        "The model cannot talk its way past a policy. A waiting run holds no worker and no "
        "memory: it can wait for days, through restarts.",
    )

    act(3, "A person decides: from the CLI here, or the HTTP API, or the dashboard.")
    pending = json.loads(show(["approvals", "list", "--json"], quiet=True))
    approval = next(a for a in pending if a.get("run_id") == second)
    show(["approvals", "approve", str(approval["id"]), "--by", APPROVER,
          "--reason", "under warranty"])  # fmt: skip
    moral(
        f"{APPROVER} approved. The run is runnable again: worker A picks it up and calls "
        "issue_refund.",
        "Who decided, when and why is in the run's journal and in the audit log.",
    )

    act(
        4,
        f"The payment provider takes {CONFIRM_SECONDS:g} s to confirm a refund. While "
        "issue_refund waits for it, worker A gets SIGKILL: no clean-up, no goodbye.",
    )
    deadline = time.monotonic() + 30
    while not any(order == "C-9" for _, order, _ in ledger()):  # the refund went out
        if time.monotonic() > deadline:
            raise SystemExit("the refund of C-9 did not start")
        await asyncio.sleep(0.02)
    os.kill(worker_a.pid, signal.SIGKILL)
    worker_a.wait()
    killed_at = time.monotonic()
    expect(not await refund_completed(second), "the kill to land while the refund was in flight")
    say(f"[bold red]$ kill -9 {worker_a.pid}[/]   [dim](worker A)[/]")
    show_ledger()
    show(["inspect", second])
    moral(
        "The refund went out (it is in ACME's ledger) but the journal does not know the call "
        f"finished. The run is still leased to worker A (vm-{worker_a.pid}-...), which is dead.",
        "This is the crash that makes a naive agent refund twice, or never answer.",
    )

    act(
        5,
        f"Worker B starts. Once worker A's lease expires ({LEASE_TTL:g} s here, 15 s by "
        "default), it claims the run.",
    )
    worker_b = start_worker("worker B")
    run = await finished(second)
    show_ledger()
    refunds = [order for _, order, _ in ledger()]
    expect(sorted(refunds) == ["A-17", "C-9"], "one refund of A-17 and one of C-9")
    received, answered = answered_by_models(url)
    expect(run.claims == 3, "three claims: worker A, worker A after the approval, worker B")
    expect(answered == 6, "six model answers in all: three per conversation")
    moral(
        f"Worker B finished the conversation {time.monotonic() - killed_at:.1f} s after the "
        "kill. It replayed the journal, so the model's answers came from there: the "
        f"simulator answered {answered} requests for the 6 model calls of both conversations "
        f"(and refused {received - answered} with 429). issue_refund ran again under the same "
        f"idempotency key, and ACME's ledger ignored the repeat: {len(refunds)} refunds, "
        "none made twice.",
        "A crash costs a few seconds, not a refund.",
    )

    act(6, "kernos trace: the run's journal as a tree, one branch per claim by a worker.")
    show(["trace", second])
    moral(
        "Worker A's first branch ends asking for approval; its second begins with the "
        "decision and ends at the kill. Worker B's has the refund (run again) and the answer.",
        "When someone asks what happened to a conversation, the answer is in the journal, "
        "with timings.",
    )

    act(7, "kernos costs: what the model calls cost, from the same journal.")
    show(["costs", "--by", "run"])
    show(["costs", "--by", "model"])
    moral(
        "Each call is priced from the tokens the provider reported; the 429s cost nothing.",
        "Spend per run, agent, tenant and model, with no separate bookkeeping (and budgets "
        "can stop a run before it overspends).",
    )

    act(
        8,
        "Control actions and decisions go to an append-only audit log; each entry's hash "
        "covers the one before.",
    )
    show_audit()
    verdict = show(["audit", "verify"])
    expect(verdict.startswith("audit log intact"), "the audit log verifies")
    moral(
        "The config the worker loaded, the MCP tool it pinned, the policy's decision and "
        f"{APPROVER}'s approval are in the log, and the chain verifies.",
        "Changing, deleting or reordering an entry breaks the chain, and kernos audit verify "
        "names the first entry that does not fit.",
    )

    worker_b.send_signal(signal.SIGTERM)
    code = worker_b.wait(timeout=30)
    console.print()
    console.print(
        f"[dim]worker B stopped on SIGTERM with exit code {code}. The demo's state is in "
        f"{STATE}; look around with KERNOS_DATABASE_URL=sqlite:///{DATABASE}[/]"
    )
    console.print(f"[bold]Demo took {time.monotonic() - started:.1f} s.[/]")


async def main() -> None:
    try:
        await story()
    finally:
        for proc in PROCS:  # a failed act must not leave workers behind
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in PROCS:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    asyncio.run(main())
