"""(i) the Agent loop's overhead per turn, (j) 1,000 concurrent conversations in one worker,
(k) the same workload on the OpenAI Agents SDK and LangGraph (issue #6, section 7).

The workload (``peers_agents.py``, shared with the peers): a ``kernos.Agent`` whose model is
the simulator's tool-loop model ``loop-10`` (``kernos.sim.loop_model(10)``: nine calls of the
first tool offered, then an answer, decided from each request, so any number of conversations
can run at once) and whose one tool is ``lookup_order``, a trivial ``async def``; a conversation
is ten model turns. The simulator runs in its own process (``gateway.sim_process``), with no
fault and no latency, so a turn costs what the client side costs, plus the simulator's answer.
Calls are costed at gpt-4.1-mini's list price, as in production.

(i) One conversation at a time, in an in-process worker on a fresh database, against the floor
(``peers_agents.floor_conversation``: the same ten model calls through the same SDK client's
``post()`` as the gateway makes them, and the tool awaited directly, nothing recorded). After a
warm-up, floor and kernos conversations alternate (which one first alternates too). A kernos
conversation's time is its run's ``updated_at - created_at`` from the store (created, claimed,
ten turns with every model call, tool call and mailbox check journaled, completed; the
client's polling is not in it); per turn = that / 10. Added = median kernos - median floor; the
target is at most 2 ms. Printed too: the steady-state turn from the journal (first to last
``llm_completed`` / 9), this process's CPU per turn for both (worker and client; kernos' from
``start()`` to ``wait()`` returning, the client polling every 20 ms), and the single-commit
floor of the same database (one autocommitted INSERT, as in (a)), since every turn commits
its model answer and its tool result durably.

(j) ``n`` conversations at once in one worker subprocess (``python -m kernos worker --app
benchmarks/agents.py``, concurrency n + 10, ``KERNOS_CONFIG`` pointing its gateway at the
simulator). It is warmed up with 20 conversations, its VmRSS read when idle; then it is
stopped (SIGSTOP) while the n runs are created, and resumed (SIGCONT), so that all n are
claimed and live at once. turns/s = 10 n / (resume to the last run completed, by the store's
clock). VmRSS is sampled every 20 ms while they run; memory per live conversation = (peak
VmRSS - idle) / n, as (c) measures a worker. The floor: the same n conversations at once, each
``floor_conversation``, in this process, on an SDK client whose pool holds at most 100
connections (with the SDK's default pool, which kernos' gateway uses, 1,000 open connections
cost more CPU per request in httpcore's pool than the rest of the call).

(k) ``peers_agents.py`` in ``.bench-venv`` against the same simulator: per turn of each peer and
of its own floor measured in its process; compared with kernos' (i) on SQLite by the added ms
per turn over each one's own floor (the peers call the model through the SDK's typed
``create()``, whose cost over ``post()`` the note gives).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _common import ROOT, STATE_DIR, Database, Row, _tmp_dir, database, fmt, median, percentile
from peers_agents import EXPECTED, INSTRUCTIONS, MODEL, QUESTION, TURNS, floor_conversation
from peers_agents import lookup_order as _lookup_order

import kernos
from kernos.sim import loop_model

if TYPE_CHECKING:
    from gateway import SimProcess

AGENT = "bench_support"
PROVIDER = "oa"
ADDED_TARGET_MS = 2.0
#: (j)'s floor keeps at most this many connections open: at 1,000 open connections the SDK's
#: default pool (httpcore) costs more CPU per request than the rest of the call
FLOOR_CONNECTIONS = 100
#: gpt-4.1-mini's list price ($ per million tokens): every call is costed, as in production
PRICE = {"input": 0.4, "output": 1.6}
PEER_PYTHON = ROOT / ".bench-venv" / "bin" / "python"
PEER_SCRIPT = Path(__file__).resolve().parent / "peers_agents.py"
assert loop_model(TURNS) == MODEL

lookup_order = kernos.tool(_lookup_order)
#: registered in kernos' default registry: what ``python -m kernos worker --app`` loads
SUPPORT = kernos.Agent(
    AGENT, model=f"{PROVIDER}:{MODEL}", instructions=INSTRUCTIONS, tools=[lookup_order]
)


def _gateway_config(sim: SimProcess) -> Any:
    from kernos.gateway import GatewayConfig, GatewaySettings, Price, ProviderConfig

    return GatewayConfig(
        providers={
            PROVIDER: ProviderConfig(
                name=PROVIDER,
                kind="openai",
                base_url=sim.openai_base_url(PROVIDER),
                api_key_env="",
            )
        },
        routes={},
        gateway=GatewaySettings(),
        prices={f"{PROVIDER}:{MODEL}": Price.model_validate(PRICE)},
    )


def _sdk_client(sim: SimProcess, connections: int | None = None) -> Any:
    """``openai.AsyncOpenAI`` on the simulator, its retries off; ``connections`` bounds its
    connection pool (default: the SDK's, 1,000 connections of which 100 are kept alive)."""
    import httpx
    import openai

    pool = {}
    if connections is not None:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        pool["http_client"] = openai.DefaultAsyncHttpxClient(limits=limits)
    return openai.AsyncOpenAI(
        base_url=sim.openai_base_url(PROVIDER), api_key="sim", max_retries=0, **pool
    )


def _check(answer: str) -> None:
    if answer != EXPECTED:
        raise RuntimeError(f"wrong answer {answer!r}, expected {EXPECTED!r}")


# -- (i) overhead per turn ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Turns:
    floor: list[float]  # seconds per conversation
    kernos: list[float]  # run updated_at - created_at
    steady: list[float]  # seconds per steady-state turn (journal)
    floor_cpu: list[float]  # this process's CPU seconds per conversation (all threads)
    kernos_cpu: list[float]
    commits: int  # journal writes per conversation (a commit each)
    events: int  # journal events per conversation
    commit_ms: list[float]  # the single-commit floor, measured before and after


@dataclass(frozen=True, slots=True)
class Conversation:
    seconds: float  # the run's created_at -> completed (the store's clock)
    cpu: float  # this process's CPU from start() to wait() returning
    steady: float  # first to last llm_completed / (turns - 1)
    commits: int  # journal writes (buffered events go out with the next one)
    events: int


async def _kernos_conversation(client: Any, worker: Any) -> Conversation:
    """One conversation; the client polls every 20 ms (a read each), its time is not counted."""
    from kernos.kernel import output_of

    cpu = time.process_time()
    run = await client.start(AGENT, QUESTION)
    worker.wake()
    done = await client.wait(run.id, timeout=60, poll=0.02)
    cpu = time.process_time() - cpu
    if done.state.value != "completed":
        raise RuntimeError(f"run {done.id} {done.state.value}: {done.error}")
    _check(output_of(done))
    events = await client.journal(run.id)
    llm = [e.created_at for e in events if e.type == "llm_completed"]
    steady = (llm[-1] - llm[0]) / (len(llm) - 1)
    commits = sum(1 for e in events if e.type != "mailbox_empty")
    return Conversation(done.updated_at - done.created_at, cpu, steady, commits, len(events))


async def _turns(db: Database, sim: SimProcess, rounds: int, warmup: int) -> Turns:
    from kernos.gateway import default_services
    from kernos.kernel import REGISTRY, Worker, WorkerConfig, connect

    client = await connect(db.url, registry=REGISTRY)
    # started runs are handed over by wake(): no idle polling competes with the conversations
    config = WorkerConfig(concurrency=100, poll_interval=30, lease_ttl=30)
    services = default_services(_gateway_config(sim))
    worker = Worker(client.store, REGISTRY, config, services=services)
    task = asyncio.create_task(worker.run())
    await worker.started.wait()
    sdk = _sdk_client(sim)
    floor: list[float] = []
    floor_cpu: list[float] = []
    runs: list[float] = []
    kernos_cpu: list[float] = []
    steady: list[float] = []
    commits = events = 0
    commit_ms = [_commit_floor(db)]
    try:
        for _ in range(warmup):
            _check(await floor_conversation(sdk))
            await _kernos_conversation(client, worker)
        gc.collect()
        gc.freeze()  # what lives on (clients, modules) leaves the collector's sight, as in (f)
        for r in range(rounds):
            for way in ("floor", "kernos") if r % 2 == 0 else ("kernos", "floor"):
                if way == "floor":
                    cpu, start = time.process_time(), time.perf_counter()
                    answer = await floor_conversation(sdk)
                    floor.append(time.perf_counter() - start)
                    floor_cpu.append(time.process_time() - cpu)
                    _check(answer)
                else:
                    c = await _kernos_conversation(client, worker)
                    runs.append(c.seconds)
                    kernos_cpu.append(c.cpu)
                    steady.append(c.steady)
                    commits, events = c.commits, c.events
    finally:
        gc.unfreeze()
        await sdk.close()
        worker.stop()
        await task
        await client.close()
    commit_ms.append(_commit_floor(db))
    return Turns(floor, runs, steady, floor_cpu, kernos_cpu, commits, events, commit_ms)


def _commit_floor(db: Database) -> float:
    """ms of one durable INSERT+COMMIT on this database ((a)'s floor, one statement)."""
    from _floor import measure_floor

    floor = measure_floor(db.backend, path=db.path, conninfo=db.conninfo, n=200, autocommit=True)
    return floor.latency_ms


def bench_i(backend: str, *, rounds: int = 30, warmup: int = 5) -> list[Row]:
    from gateway import sim_process

    with sim_process(seed=1) as sim, database(backend, "i") as db:
        t = asyncio.run(_turns(db, sim, rounds, warmup))
    ms = 1000.0 / TURNS  # seconds per conversation -> ms per turn
    floor = median(t.floor) * ms
    kernos_turn = median(t.kernos) * ms
    steady = median(t.steady) * 1000.0
    floor_cpu, kernos_cpu = median(t.floor_cpu) * ms, median(t.kernos_cpu) * ms
    added = kernos_turn - floor
    commit = median(t.commit_ms)
    note = (
        f"{rounds} conversations each way, alternating, after {warmup} warm-up each; per turn, "
        f"ms: floor p50 {floor:.2f} (p90 {percentile(t.floor, 90) * ms:.2f}), kernos p50 "
        f"{kernos_turn:.2f} (p90 {percentile(t.kernos, 90) * ms:.2f}), steady-state turn p50 "
        f"{steady:.2f}; CPU of this process (worker + client) per turn: floor {floor_cpu:.2f}, "
        f"kernos {kernos_cpu:.2f} ({kernos_cpu - floor_cpu:+.2f}). Journal: {t.events} events, "
        f"{t.commits} commits per conversation ({(t.commits - 2) / TURNS:.1f} per turn + claim "
        f"and completion); one durable commit on this database costs {commit:.2f} ms "
        f"(before/after: {', '.join(f'{c:.2f}' for c in t.commit_ms)}), so "
        f"{(t.commits - 2) / TURNS * commit:.2f} ms of each turn is the disk's"
    )
    base = dict(bench="i", backend=backend, system="kernos", unit="ms")
    return [
        Row(
            **base,  # type: ignore[arg-type]
            what=f"per turn, {TURNS}-turn conversation (added {added:+.2f} ms)",
            value=kernos_turn,
            floor=floor,
            ratio=kernos_turn / floor,
            target=f"+<= {ADDED_TARGET_MS:g} ms",
            ok=added <= ADDED_TARGET_MS,
            note=note,
            extra={"added_ms": added, "commit_ms": commit, "commits": t.commits},
        ),
        Row(
            **base,  # type: ignore[arg-type]
            what=f"per turn, steady state (added {steady - floor:+.2f} ms)",
            value=steady,
            floor=floor,
            ratio=steady / floor,
            target="(info)",
        ),
        Row(
            **base,  # type: ignore[arg-type]
            what=f"CPU per turn (added {kernos_cpu - floor_cpu:+.2f} ms)",
            value=kernos_cpu,
            floor=floor_cpu,
            ratio=kernos_cpu / floor_cpu,
            target="(info)",
        ),
    ]


# -- (j) 1,000 concurrent conversations ---------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (``/proc/PID/stat``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_kib(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


class _Sampler:
    """VmRSS of a process every ``interval`` seconds, on a thread (the peak is kept)."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_kib(self.pid))
            self._stop.wait(self.interval)


@contextmanager
def _worker(url: str, sim: SimProcess, concurrency: int, log: Path) -> Iterator[Any]:
    """``python -m kernos worker --app benchmarks/agents.py`` with its gateway on ``sim``."""
    with tempfile.TemporaryDirectory() as tmp:
        toml = os.path.join(tmp, "kernos.toml")
        with open(toml, "w") as f:
            f.write(
                f'[providers.{PROVIDER}]\nkind = "openai"\n'
                f'base_url = "{sim.openai_base_url(PROVIDER)}"\napi_key_env = ""\n'
                f'[prices."{PROVIDER}:{MODEL}"]\ninput = {PRICE["input"]}\noutput = {PRICE["output"]}\n'
            )
        cmd = [
            sys.executable,
            "-m",
            "kernos",
            "worker",
            "--app",
            str(Path(__file__).resolve()),
            "--concurrency",
            str(concurrency),
            "--poll-interval",
            "0.05",
            "--lease-ttl",
            "60",
            "--database",
            url,
            "--log-level",
            "WARNING",
        ]
        env = {**os.environ, "KERNOS_CONFIG": toml, "COLUMNS": "200"}
        with open(log, "ab") as out:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=out, env=env)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@dataclass(frozen=True, slots=True)
class Crowd:
    n: int
    wall: float
    idle_kib: int
    peak_kib: int
    hwm_kib: int
    created_in: float
    finished: list[float]  # seconds after resume at which each run completed
    worker_cpu: float  # the worker's CPU seconds from resume to the last run completed
    floor_wall: float


async def _all_done(client: Any, n: int, proc: Any, timeout: float) -> None:
    from kernos.store import RunState

    deadline = time.monotonic() + timeout
    while True:
        counts = await client.store.count_runs()
        done = sum(counts.get(s, 0) for s in (RunState.COMPLETED, RunState.FAILED))
        if done >= n:
            if counts.get(RunState.FAILED, 0):
                raise RuntimeError(f"{counts[RunState.FAILED]} runs failed")
            return
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{n - done} of {n} runs not done after {timeout} s")
        await asyncio.sleep(0.05)


async def _crowd(url: str, sim: SimProcess, n: int, log: Path) -> Crowd:
    from kernos.kernel import REGISTRY, connect, output_of

    client = await connect(url, registry=REGISTRY)
    try:
        with _worker(url, sim, n + 10, log) as proc:
            warm = [await client.start(AGENT, QUESTION) for _ in range(20)]
            for run in warm:
                done = await client.wait(run.id, timeout=120, poll=0.05)
                _check(output_of(done))
            await asyncio.sleep(1.5)
            idle = _rss_kib(proc.pid)
            proc.send_signal(signal.SIGSTOP)
            start = time.perf_counter()
            sem = asyncio.Semaphore(16)

            async def one() -> Any:
                async with sem:
                    return await client.start(AGENT, QUESTION)

            runs = await asyncio.gather(*(one() for _ in range(n)))
            created_in = time.perf_counter() - start
            with _Sampler(proc.pid) as sampler:
                cpu, wall_resumed = _cpu_seconds(proc.pid), time.time()
                proc.send_signal(signal.SIGCONT)
                await _all_done(client, n + len(warm), proc, timeout=600)
                cpu = _cpu_seconds(proc.pid) - cpu
            hwm = _rss_kib(proc.pid, "VmHWM")
        finished = []
        for run in runs:
            done = await client.get(run.id)
            _check(output_of(done))
            finished.append(done.updated_at - wall_resumed)
        wall = max(finished)  # the store's clock, not the 50 ms poll
    finally:
        await client.close()
    floor_wall = await _floor_crowd(sim, n)
    return Crowd(n, wall, idle, sampler.peak, hwm, created_in, finished, cpu, floor_wall)


async def _floor_crowd(sim: SimProcess, n: int) -> float:
    """The same ``n`` conversations at once on the bare SDK client, in this process, its pool
    at ``FLOOR_CONNECTIONS`` (the requests beyond wait for a connection in the pool)."""
    sdk = _sdk_client(sim, connections=FLOOR_CONNECTIONS)
    try:
        for answer in await asyncio.gather(*(floor_conversation(sdk) for _ in range(20))):
            _check(answer)
        start = time.perf_counter()
        answers = await asyncio.gather(*(floor_conversation(sdk) for _ in range(n)))
        wall = time.perf_counter() - start
    finally:
        await sdk.close()
    for answer in answers:
        _check(answer)
    return wall


def bench_j(backend: str, *, conversations: int = 1000) -> list[Row]:
    from gateway import sim_process

    STATE_DIR.mkdir(parents=True, exist_ok=True)
    log = STATE_DIR / f"bench-worker-j-{backend}.log"
    log.unlink(missing_ok=True)
    with sim_process(seed=1) as sim, database(backend, "j") as db:
        c = asyncio.run(_crowd(db.url, sim, conversations, log))
    n = c.n
    rate, floor_rate = n * TURNS / c.wall, n * TURNS / c.floor_wall
    per_conv_kib = (c.peak_kib - c.idle_kib) / n
    note = (
        f"{n:,} conversations of {TURNS} turns claimed at once by one worker subprocess "
        f"(concurrency {n + 10}): all done in {c.wall:.1f}s (p50 of completion "
        f"{percentile(c.finished, 50):.1f}s); floor, the same {n:,} at once on the bare SDK "
        f"client, {FLOOR_CONNECTIONS} connections: {c.floor_wall:.1f}s (kernos' gateway uses the "
        f"SDK's default pool: up to 1,000 connections). Worker VmRSS idle {c.idle_kib / 1024:.1f} MB, peak "
        f"sampled {c.peak_kib / 1024:.1f} MB (VmHWM {c.hwm_kib / 1024:.1f} MB); runs created in "
        f"{c.created_in:.1f}s while the worker was stopped; worker CPU "
        f"{c.worker_cpu / (n * TURNS) * 1000:.2f} ms per turn"
    )
    base = dict(bench="j", backend=backend, system="kernos")
    return [
        Row(
            **base,  # type: ignore[arg-type]
            what=f"turns/s, {n:,} concurrent conversations x {TURNS} turns",
            value=rate,
            unit="turns/s",
            floor=floor_rate,
            ratio=rate / floor_rate,
            target="(info)",
            better="higher",
            note=note,
        ),
        Row(
            **base,  # type: ignore[arg-type]
            what=f"wall time, {n:,} conversations",
            value=c.wall,
            unit="s",
            floor=c.floor_wall,
            ratio=c.wall / c.floor_wall,
            target="(info)",
        ),
        Row(
            **base,  # type: ignore[arg-type]
            what="worker RSS per live conversation (peak - idle) / n",
            value=per_conv_kib,
            unit="KiB",
            target="(info)",
            extra={"idle_kib": c.idle_kib, "peak_kib": c.peak_kib, "hwm_kib": c.hwm_kib},
        ),
    ]


# -- (k) the peers -------------------------------------------------------------------------------

#: the peers' systems, and which of them carry a comparison with kernos (the others are info)
PEER_SYSTEMS = {
    "openai-agents": ("none", "Runner.run, in memory (no durability)"),
    "langgraph (sqlite, sync)": ("sqlite", "ReAct + AsyncSqliteSaver, durability=sync"),
    "langgraph (sqlite, async)": ("sqlite", "ReAct + AsyncSqliteSaver, durability=async"),
    "langgraph (no checkpointer)": ("none", "ReAct, no checkpointer"),
}


def bench_k(*, rounds: int = 30, warmup: int = 5) -> tuple[list[Row], list[str]]:
    """The peers' rows, and lines of information (versions, errors)."""
    from gateway import sim_process

    if not PEER_PYTHON.exists():
        return [
            Row(
                bench="k",
                backend="-",
                system=name,
                what="per turn, 10-turn conversation",
                value=float("nan"),
                unit="",
                note="not installed: run make bench-peers",
            )
            for name in PEER_SYSTEMS
        ], ["(k) peers not installed: run make bench-peers"]
    with (
        sim_process(seed=1) as sim,
        tempfile.TemporaryDirectory(prefix="kernos-bench-k-", dir=_tmp_dir()) as tmp,
    ):
        out = os.path.join(tmp, "peers-agents.json")
        job = {
            "openai_base": sim.openai_base_url(PROVIDER),
            "rounds": rounds,
            "warmup": warmup,
            "tmp": tmp,
            "out": out,
        }
        proc = subprocess.run(
            [str(PEER_PYTHON), str(PEER_SCRIPT)],
            input=json.dumps(job),
            capture_output=True,
            text=True,
            timeout=900,
            cwd=ROOT,
        )
        if proc.returncode != 0 or not os.path.exists(out):
            tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
            raise RuntimeError(f"peers_agents.py exit {proc.returncode}: {tail}")
        with open(out) as f:
            data = json.load(f)
    return _peer_rows(data), _peer_info(data)


def _peer_rows(data: dict[str, Any]) -> list[Row]:
    seconds: dict[str, list[float]] = data["seconds"]
    versions: dict[str, str] = data["versions"]
    floor = median(seconds["floor"]) * 1000 / TURNS
    create = median(seconds["floor (create)"]) * 1000 / TURNS
    rows = []
    for name, (backend, how) in PEER_SYSTEMS.items():
        package = name.split(" ")[0]
        system = f"{package} {versions.get(package, '')}".strip()
        if name not in seconds:
            rows.append(
                Row(
                    bench="k",
                    backend=backend,
                    system=system,
                    what=f"per turn: {how}",
                    value=float("nan"),
                    unit="",
                    note=f"{name}: failed: {data['errors'].get(name, '?').splitlines()[-1]}",
                )
            )
            continue
        value = median(seconds[name]) * 1000 / TURNS
        rows.append(
            Row(
                bench="k",
                backend=backend,
                system=system,
                what=f"per turn: {how} (added {value - floor:+.2f} ms)",
                value=value,
                unit="ms",
                floor=floor,
                ratio=value / floor,
                note=(
                    f"{name}: {len(seconds[name])} conversations, per turn p50 {value:.2f} ms, "
                    f"p90 {percentile(seconds[name], 90) * 1000 / TURNS:.2f} ms; its floor "
                    f"(the SDK's post()) {floor:.2f} ms, the SDK's create() {create:.2f} ms"
                ),
                extra={"added_ms": value - floor, "peer": name},
            )
        )
    return rows


def _peer_info(data: dict[str, Any]) -> list[str]:
    versions = ", ".join(f"{k} {v}" for k, v in data["versions"].items())
    lines = [f"(k) peers (python {data['python']}): {versions}"]
    lines += [
        f"(k) {name} failed: {error.strip().splitlines()[-1]}"
        for name, error in data["errors"].items()
    ]
    return lines


def compare_k(rows: list[Row]) -> list[str]:
    """kernos' (i) per-turn overhead on SQLite next to each peer's, each over its own floor."""
    kernos = next(
        (r for r in rows if r.bench == "i" and r.backend == "sqlite" and "conversation" in r.what),
        None,
    )
    peers = [p for p in rows if p.bench == "k" and p.value == p.value and p.floor is not None]
    if not peers:
        return []
    lines = []
    if kernos is not None:
        k_added = kernos.extra["added_ms"]
        lines.append(
            f"  {'kernos':<22} {'sqlite':<7} {'Agent, in-process worker, every turn durable':<52} "
            f"added {k_added:+6.2f} ms/turn ({fmt(kernos.value, 'ms')} per turn)"
        )
    else:
        lines.append("  (kernos' figure comes from (i) on sqlite: add i to --only)")
    for p in peers:
        added = p.extra["added_ms"]
        how = p.what.split(" (added")[0].removeprefix("per turn: ")
        line = f"  {p.system:<22} {p.backend:<7} {how:<52} added {added:+6.2f} ms/turn"
        line += f" ({fmt(p.value, 'ms')} per turn)"
        if kernos is not None:
            verdict = "kernos lighter" if kernos.extra["added_ms"] < added else "kernos HEAVIER"
            line += f" -> {verdict} by {abs(added - kernos.extra['added_ms']):.2f} ms/turn"
        lines.append(line)
    return lines
