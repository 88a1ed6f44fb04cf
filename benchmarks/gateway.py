"""(f) the gateway's overhead over the SDKs, (g) goodput through an outage and a flaky fallback,
(h) the same goodput scenario through LiteLLM's Router (issue #5, section 6).

The provider simulator runs in its own process (``python -m kernos sim --port 0``), steered
over its ``/_sim/`` control endpoint, so that it never competes with the client for the GIL.

(f) The same chat call made two ways against the simulator with no fault and no latency: the
official async SDK client (``openai.AsyncOpenAI`` / ``anthropic.AsyncAnthropic``,
``max_retries=0``) called directly, and ``Gateway(config).complete("provider:model", messages)``
(its defaults: no rpm/tpm limit, breaker closed throughout). Connections are warmed up first; the
two are then measured in alternating rounds (SDK first in even rounds, gateway first in odd ones)
so that drift in the machine's speed falls on both alike. Each call is timed alone; p50/p99 of
all calls per (family, concurrency, way); "added" is gateway p50 minus SDK p50. At 50
concurrent calls a call's latency is mostly waiting for the CPU behind the other 49, so the
added p50 there is roughly 50 x the gateway's added CPU per call; the note gives that per-call
figure too (wall time of the rounds / calls).

(g) ``calls`` agent calls (half of them streamed) through the route ``[oa:gpt-4.1-mini,
an:claude-haiku-4-5]`` at ``concurrency`` at once: ``oa`` (OpenAI wire) is in a full outage (503
on every request), ``an`` (Anthropic wire) fails 20% of requests with a fault drawn from
rate_limit (429, retry-after-ms 100), server_error (500), unavailable (503), overloaded (529),
connection (dropped), malformed (a 200 whose body or SSE frame is not JSON) and truncate (half a
body, or a stream cut before its end). Every call asks for a distinct prompt, so its only right
answer is the simulator's ``sim reply to: <prompt>`` with finish reason stop: a call counts as a
success only when it returns exactly that. Attempts per success = requests the simulator logged
(both providers) / successes.

(h) The same calls, faults, seed and verification through ``litellm.Router`` (``peers_gateway.py``
in ``.bench-venv``, from ``make bench-peers``), in both of the configurations LiteLLM documents
for this, each given the attempts kernos has (3 per model) and the same per-request timeout,
everything else its defaults: two model groups as a fallback chain
(``fallbacks=[{"primary": ["secondary"]}]``, ``num_retries=2``), and one model group of both
deployments with ``order`` 1 and 2 (``num_retries=5``). kernos' rows are marked against the
better of the two.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx
import openai
from _common import ROOT, STATE_DIR, Row, fmt, percentile

from kernos.gateway import Endpoint, Gateway, GatewayConfig, GatewaySettings, ProviderConfig
from kernos.sim import Fault, FaultKind

OA_MODEL = "gpt-4.1-mini"
AN_MODEL = "claude-haiku-4-5"
PEER_PYTHON = ROOT / ".bench-venv" / "bin" / "python"
PEER_SCRIPT = ROOT / "benchmarks" / "peers_gateway.py"
ADDED_P50_TARGET_MS = 1.0

# -- the simulator in its own process -----------------------------------------------------------


class SimProcess:
    """``python -m kernos sim --port 0`` as a child process, steered through ``/_sim/``."""

    def __init__(self, proc: subprocess.Popen[str], url: str) -> None:
        self.proc = proc
        self.url = url
        self._control = httpx.Client(base_url=f"{url}/_sim", timeout=60)

    def openai_base_url(self, provider: str) -> str:
        return f"{self.url}/{provider}/v1"

    def anthropic_base_url(self, provider: str) -> str:
        return f"{self.url}/{provider}"

    def reset(self, seed: int) -> None:
        self._control.post("/reset", json={"seed": seed}).raise_for_status()

    def set_faults(self, provider: str, faults: list[Fault]) -> None:
        body = {"faults": [f.model_dump(mode="json", exclude_none=True) for f in faults]}
        self._control.put(f"/providers/{provider}/faults", json=body).raise_for_status()

    def log(self, provider: str) -> list[dict[str, Any]]:
        response = self._control.get("/log", params={"provider": provider})
        response.raise_for_status()
        entries: list[dict[str, Any]] = response.json()["entries"]
        return entries

    def close(self) -> None:
        self._control.close()


@contextlib.contextmanager
def sim_process(seed: int) -> Iterator[SimProcess]:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    log = open(STATE_DIR / "bench-sim.log", "a")
    cmd = [sys.executable, "-m", "kernos", "sim", "--port", "0", "--seed", str(seed)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    sim: SimProcess | None = None
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # "kernos sim listening on http://127.0.0.1:PORT ..."
        found = re.search(r"listening on (\S+)", first)
        if found is None:
            raise RuntimeError(
                f"the simulator did not start (first line {first!r}); see {log.name}"
            )
        sim = SimProcess(proc, found.group(1))
        yield sim
    finally:
        if sim is not None:
            sim.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        log.close()


def sim_config(sim: SimProcess, settings: GatewaySettings, **routes: list[str]) -> GatewayConfig:
    """``oa`` (OpenAI wire) and ``an`` (Anthropic wire) on the simulator; no rate limits."""
    return GatewayConfig(
        providers={
            "oa": ProviderConfig(
                name="oa", kind="openai", base_url=sim.openai_base_url("oa"), api_key_env=""
            ),
            "an": ProviderConfig(
                name="an", kind="anthropic", base_url=sim.anthropic_base_url("an"), api_key_env=""
            ),
        },
        routes={name: tuple(Endpoint.parse(e) for e in chain) for name, chain in routes.items()},
        gateway=settings,
        prices={},
    )


# -- (f) overhead ---------------------------------------------------------------------------------

Call = Callable[[], Awaitable[str]]


async def _round(call: Call, concurrency: int, per_worker: int, out: list[float]) -> int:
    """``concurrency`` workers making ``per_worker`` calls each; each call's latency into ``out``.
    Returns the number of answers that were not the simulator's reply (should be 0)."""
    bad = 0

    async def worker() -> None:
        nonlocal bad
        for _ in range(per_worker):
            start = time.perf_counter()
            text = await call()
            out.append(time.perf_counter() - start)
            if not text.startswith("sim reply to: "):
                bad += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return bad


@dataclass(frozen=True, slots=True)
class Overhead:
    family: str
    concurrency: int
    sdk: list[float]
    gateway: list[float]
    sdk_wall: float
    gateway_wall: float
    sdk_cpu: float  # this process's CPU seconds in the rounds (the simulator's not counted)
    gateway_cpu: float
    bad: int


async def _overhead(
    sim: SimProcess, family: str, concurrency: int, rounds: int, per_worker: int
) -> Overhead:
    gateway = Gateway(sim_config(sim, GatewaySettings()))
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    sdk_call: Call
    if family == "openai":
        oa = openai.AsyncOpenAI(base_url=sim.openai_base_url("oa"), api_key="sim", max_retries=0)
        route = f"oa:{OA_MODEL}"

        async def sdk_openai() -> str:
            r = await oa.chat.completions.create(
                model=OA_MODEL,
                messages=messages,  # type: ignore[arg-type]
                max_tokens=256,
            )
            return r.choices[0].message.content or ""

        sdk_call, close = sdk_openai, oa.close
    else:
        an = anthropic.AsyncAnthropic(
            base_url=sim.anthropic_base_url("an"), api_key="sim", max_retries=0
        )
        route = f"an:{AN_MODEL}"

        async def sdk_anthropic() -> str:
            r = await an.messages.create(
                model=AN_MODEL,
                messages=messages,  # type: ignore[arg-type]
                max_tokens=256,
            )
            return "".join(b.text for b in r.content if b.type == "text")

        sdk_call, close = sdk_anthropic, an.close

    async def gateway_call() -> str:
        return (await gateway.complete(route, messages, max_tokens=256)).text

    try:
        scratch: list[float] = []
        for call in (sdk_call, gateway_call):  # open the pool's connections, warm both paths
            await _round(call, 50, 2, scratch)
            await _round(call, 1, 50, scratch)
        # what lives on (clients, modules) leaves the collector's sight: collections stay short
        gc.collect()
        gc.freeze()
        sdk: list[float] = []
        gw: list[float] = []
        walls = {"sdk": 0.0, "gateway": 0.0}
        cpus = {"sdk": 0.0, "gateway": 0.0}
        bad = 0
        for r in range(rounds):
            order = [("sdk", sdk_call, sdk), ("gateway", gateway_call, gw)]
            for name, call, out in order if r % 2 == 0 else order[::-1]:
                start, cpu = time.perf_counter(), time.process_time()
                bad += await _round(call, concurrency, per_worker, out)
                walls[name] += time.perf_counter() - start
                cpus[name] += time.process_time() - cpu
        return Overhead(
            family,
            concurrency,
            sdk,
            gw,
            walls["sdk"],
            walls["gateway"],
            cpus["sdk"],
            cpus["gateway"],
            bad,
        )
    finally:
        gc.unfreeze()
        await gateway.aclose()
        await close()


def bench_f(*, quick: bool = False) -> list[Row]:
    """Per-call latency of the gateway against the SDK it wraps, at 1 and 50 concurrent calls."""
    # (rounds, calls per worker in a round): short rounds, so that SDK and gateway alternate
    # often and a burst of load from elsewhere on the machine falls on both
    shapes = {1: (20, 25), 50: (4, 5)} if quick else {1: (80, 25), 50: (8, 5)}
    results: list[Overhead] = []
    with sim_process(seed=1) as sim:
        for family in ("openai", "anthropic"):
            for concurrency, (rounds, per_worker) in shapes.items():
                results.append(asyncio.run(_overhead(sim, family, concurrency, rounds, per_worker)))
    return [row for o in results for row in _overhead_rows(o)]


def _overhead_rows(o: Overhead) -> list[Row]:
    ms = 1000.0
    sdk50, gw50 = percentile(o.sdk, 50) * ms, percentile(o.gateway, 50) * ms
    sdk99, gw99 = percentile(o.sdk, 99) * ms, percentile(o.gateway, 99) * ms
    added = gw50 - sdk50
    n = len(o.sdk)
    per_call_us = (o.gateway_wall - o.sdk_wall) / n * 1e6
    sdk_cpu_us, gw_cpu_us = o.sdk_cpu / n * 1e6, o.gateway_cpu / n * 1e6
    shape = f"{n:,} calls" if o.concurrency == 1 else f"{o.concurrency} x {n // o.concurrency}"
    note = (
        f"{o.family} {shape} per way, SDK p50/p99 {sdk50:.3f}/{sdk99:.3f} ms, gateway "
        f"{gw50:.3f}/{gw99:.3f} ms, added p50 {added:+.3f} ms, p99 {gw99 - sdk99:+.3f} ms; "
        f"throughput SDK {n / o.sdk_wall:,.0f}/s, gateway {n / o.gateway_wall:,.0f}/s "
        f"(added {per_call_us:+.0f} us of wall time per call); client CPU per call SDK "
        f"{sdk_cpu_us:.0f} us, gateway {gw_cpu_us:.0f} us ({gw_cpu_us - sdk_cpu_us:+.0f} us)"
        + (f"; {o.bad} WRONG ANSWERS" if o.bad else "")
    )
    base = dict(bench="f", backend=f"sim/{o.family}", system="kernos", unit="ms")
    return [
        Row(
            **base,  # type: ignore[arg-type]
            what=f"p50 per call, {o.concurrency} concurrent (added {added:+.3f} ms)",
            value=gw50,
            floor=sdk50,
            ratio=gw50 / sdk50,
            target=f"+<= {ADDED_P50_TARGET_MS:g} ms",
            ok=added <= ADDED_P50_TARGET_MS and o.bad == 0,
            note=note,
        ),
        Row(
            **base,  # type: ignore[arg-type]
            what=f"p99 per call, {o.concurrency} concurrent (added {gw99 - sdk99:+.3f} ms)",
            value=gw99,
            floor=sdk99,
            ratio=gw99 / sdk99,
        ),
    ]


# -- (g) and (h) goodput ------------------------------------------------------------------------

SEED = 20260
CONCURRENCY = 50
#: what the fallback model fails with (20% of its requests); the kinds a gateway must retry
#: plus the two it must never hand back as an answer
MIX: tuple[FaultKind, ...] = (
    "rate_limit",
    "server_error",
    "unavailable",
    "overloaded",
    "connection",
    "malformed",
    "truncate",
)
FAULTS = {
    "oa": [Fault(kind="outage")],
    "an": [Fault(kind="mixed", rate=0.2, mix=MIX, retry_after_ms=100)],
}
TIMEOUT = 10.0
GOODPUT = GatewaySettings(max_attempts=3, backoff_base=0.05, backoff_cap=2.0, timeout=TIMEOUT)


@dataclass(frozen=True, slots=True)
class Job:
    prompt: str
    stream: bool

    @property
    def expected(self) -> str:
        return f"sim reply to: {self.prompt}"


def jobs(n: int) -> list[Job]:
    """Distinct prompts (short enough that the simulator echoes them whole); odd ones streamed."""
    return [Job(f"call {i:04d}: look up order {i:04d}, summarise it", i % 2 == 1) for i in range(n)]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one call returned: its text and finish reason, or the error it raised."""

    text: str | None
    finish: str | None
    error: str | None
    latency: float


@dataclass(frozen=True, slots=True)
class Goodput:
    system: str
    outcomes: list[Outcome]
    jobs: list[Job]
    requests: dict[str, collections.Counter[str]]  # provider -> fault kind (or "ok") -> count
    wall: float
    settings: str
    version: str = ""
    problem: str = ""

    def verdicts(self) -> collections.Counter[str]:
        out: collections.Counter[str] = collections.Counter()
        for job, o in zip(self.jobs, self.outcomes, strict=True):
            if o.error is not None:
                out["failed"] += 1
            elif o.text == job.expected and o.finish == "stop":
                out["ok"] += 1
            else:
                out["wrong"] += 1
        return out


def _faults(sim: SimProcess) -> None:
    sim.reset(SEED)
    for provider, faults in FAULTS.items():
        sim.set_faults(provider, faults)


def _requests(sim: SimProcess) -> dict[str, collections.Counter[str]]:
    return {p: collections.Counter(e["fault"] or "ok" for e in sim.log(p)) for p in ("oa", "an")}


async def _kernos_goodput(sim: SimProcess, work: list[Job]) -> list[Outcome]:
    gateway = Gateway(
        sim_config(sim, GOODPUT, agent=[f"oa:{OA_MODEL}", f"an:{AN_MODEL}"]),
    )
    queue = collections.deque(enumerate(work))
    outcomes: list[Outcome | None] = [None] * len(work)

    async def worker() -> None:
        while queue:
            i, job = queue.popleft()
            start = time.perf_counter()
            try:
                r = await gateway.complete(
                    "agent",
                    [{"role": "user", "content": job.prompt}],
                    stream=job.stream,
                    max_tokens=256,
                )
            except Exception as exc:  # a failed call is a figure here, not a crash
                outcomes[i] = Outcome(None, None, _error(exc), time.perf_counter() - start)
                continue
            outcomes[i] = Outcome(r.text, r.finish_reason, None, time.perf_counter() - start)

    try:
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    finally:
        await gateway.aclose()
    return [o for o in outcomes if o is not None]


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def bench_g(*, quick: bool = False) -> Goodput:
    work = jobs(300 if quick else 1000)
    with sim_process(seed=SEED) as sim:
        _faults(sim)
        start = time.perf_counter()
        outcomes = asyncio.run(_kernos_goodput(sim, work))
        wall = time.perf_counter() - start
        requests = _requests(sim)
    s = GOODPUT
    settings = (
        f"route [oa:{OA_MODEL}, an:{AN_MODEL}], max_attempts={s.max_attempts}, "
        f"backoff_base={s.backoff_base:g}s, backoff_cap={s.backoff_cap:g}s, "
        f"timeout={s.timeout:g}s, breaker {s.breaker_threshold} failures/{s.breaker_cooldown:g}s "
        f"cooldown (max {s.breaker_max_cooldown:g}s), no rpm/tpm, no deadline (Gateway.complete "
        f"then waits out a down route for up to 300 s)"
    )
    return Goodput("kernos", outcomes, work, requests, wall, settings)


#: LiteLLM's two ways of saying "this model, else that one" (see peers_gateway.py), and the
#: num_retries that gives each the attempts kernos has: 3 per model, 6 in all
LITELLM_CONFIGS = {
    "fallbacks": GOODPUT.max_attempts - 1,
    "order": 2 * GOODPUT.max_attempts - 1,
}


def bench_h(*, quick: bool = False) -> list[Goodput]:
    work = jobs(300 if quick else 1000)
    if not PEER_PYTHON.exists():
        problem = "no .bench-venv with litellm: run `make bench-peers`"
        return [
            Goodput(f"litellm ({c})", [], work, {}, 0.0, "", problem=problem)
            for c in LITELLM_CONFIGS
        ]
    out: list[Goodput] = []
    with sim_process(seed=SEED) as sim:
        for config, num_retries in LITELLM_CONFIGS.items():
            _faults(sim)
            out.append(_litellm(sim, work, config, num_retries))
    return out


def _litellm(sim: SimProcess, work: list[Job], config: str, num_retries: int) -> Goodput:
    system = f"litellm ({config})"
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "litellm.json")
        job = {
            "config": config,
            "openai_base": sim.openai_base_url("oa"),
            "anthropic_base": sim.anthropic_base_url("an"),
            "openai_model": OA_MODEL,
            "anthropic_model": AN_MODEL,
            "num_retries": num_retries,
            "timeout": TIMEOUT,
            "concurrency": CONCURRENCY,
            "calls": [{"prompt": j.prompt, "stream": j.stream} for j in work],
            "out": out,
        }
        env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
        start = time.perf_counter()
        proc = subprocess.run(
            [str(PEER_PYTHON), str(PEER_SCRIPT)],
            input=json.dumps(job),
            capture_output=True,
            text=True,
            timeout=900,
            env=env,
            cwd=ROOT,
        )
        wall = time.perf_counter() - start
        requests = _requests(sim)
        if proc.returncode != 0 or not os.path.exists(out):
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            problem = f"peers_gateway.py exit {proc.returncode}: " + " | ".join(tail)
            return Goodput(system, [], work, requests, wall, "", problem=problem)
        with open(out) as f:
            data = json.load(f)
    return Goodput(
        system,
        [Outcome(**o) for o in data["outcomes"]],
        work,
        requests,
        data["wall"],
        data["settings"],
        version=data["version"],
    )


def goodput_rows(g: Goodput | None, h: list[Goodput]) -> list[Row]:
    """Rows of (g) and (h); kernos' rows say whether it is ahead of LiteLLM's best
    configuration, when LiteLLM ran."""
    peers = [p for p in h if not p.problem]
    rows: list[Row] = []
    if g is not None:
        rows += _goodput_rows("g", g, peers)
    for p in h:
        rows += _goodput_rows("h", p, [])
    return rows


def _summary(r: Goodput) -> tuple[float, float]:
    """Success rate (%) and attempts per success."""
    ok = r.verdicts()["ok"]
    sent = sum(sum(c.values()) for c in r.requests.values())
    return 100.0 * ok / len(r.jobs), (sent / ok if ok else float("inf"))


def _wrong_kinds(r: Goodput) -> str:
    kinds: collections.Counter[str] = collections.Counter()
    for o, j in zip(r.outcomes, r.jobs, strict=True):
        if o.error is not None or (o.text == j.expected and o.finish == "stop"):
            continue
        text = o.text or ""
        kind = "empty" if not text else "cut short" if j.expected.startswith(text) else "other"
        kinds[f"{kind}{' (streamed)' if j.stream else ''}"] += 1
    return ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))


def _goodput_rows(bench: str, r: Goodput, peers: list[Goodput]) -> list[Row]:
    n = len(r.jobs)
    system = r.system + (f" {r.version}" if r.version else "")
    if r.problem:
        return [
            Row(
                bench=bench,
                backend="sim",
                system=system,
                what=f"goodput, {n} calls",
                value=float("nan"),
                unit="",
                note=f"not measured: {r.problem}",
            )
        ]
    v = r.verdicts()
    success, per_success = _summary(r)
    sent = sum(sum(c.values()) for c in r.requests.values())
    latencies = [o.latency for o in r.outcomes]
    ok_latencies = [
        o.latency
        for o, j in zip(r.outcomes, r.jobs, strict=True)
        if o.error is None and o.text == j.expected
    ]
    best_success = max((_summary(p)[0] for p in peers), default=None)
    best_per = min((_summary(p)[1] for p in peers), default=None)
    kernos = bench == "g"
    errors = collections.Counter(
        (o.error or "").split(":")[0] for o in r.outcomes if o.error is not None
    )
    faults = "; ".join(
        f"{p}: {sum(c.values())} requests ("
        + ", ".join(f"{k} {c[k]}" for k in sorted(c, key=lambda k: -c[k]))
        + ")"
        for p, c in r.requests.items()
    )
    note = (
        f"{r.settings}. {n} calls ({n // 2} streamed), {CONCURRENCY} at once, "
        f"{r.wall:.1f}s: {v['ok']} right, {v['wrong']} wrong"
        + (f" ({_wrong_kinds(r)})" if v["wrong"] else "")
        + f", {v['failed']} raised"
        + (f" ({', '.join(f'{k} {c}' for k, c in errors.items())})" if errors else "")
        + f"; the simulator saw {faults}; latency p50 {percentile(latencies, 50) * 1000:.0f} ms, "
        f"p99 {percentile(latencies, 99) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms"
        + (
            f" (successful calls p95 {percentile(ok_latencies, 95) * 1000:.0f} ms)"
            if ok_latencies
            else ""
        )
    )
    base = dict(bench=bench, backend="sim", system=system)
    return [
        Row(
            **base,  # type: ignore[arg-type]
            what=f"success rate, {n} calls (right answer returned)",
            value=success,
            unit="%",
            target=("100%" + (", >= litellm" if peers else "")) if kernos else "",
            ok=(success == 100.0 and (best_success is None or success >= best_success))
            if kernos
            else None,
            better="higher",
            note=note,
        ),
        Row(
            **base,  # type: ignore[arg-type]
            what="wrong answers returned (truncated/malformed)",
            value=float(v["wrong"]),
            unit="",
            target="0" if kernos else "",
            ok=v["wrong"] == 0 if kernos else None,
        ),
        Row(
            **base,  # type: ignore[arg-type]
            what=f"attempts per success ({sent} requests)",
            value=per_success,
            unit="",
            target="< litellm" if kernos and peers else "",
            ok=per_success < best_per if kernos and best_per is not None else None,
        ),
        Row(
            **base,  # type: ignore[arg-type]
            what="p95 latency per call",
            value=percentile(latencies, 95) * 1000,
            unit="ms",
        ),
    ]


def compare_goodput(rows: list[Row]) -> list[str]:
    """Per metric, kernos (g) against each LiteLLM configuration (h) in ``rows``."""

    def metric(row: Row) -> str:
        return row.what.split(",")[0].split(" (")[0]

    kernos = {metric(r): r for r in rows if r.bench == "g"}
    lines = []
    for p in rows:
        k = kernos.get(metric(p))
        if p.bench != "h" or k is None or p.value != p.value:  # NaN: not measured
            continue
        lower = metric(p) != "success rate"
        ahead = k.value < p.value if lower else k.value > p.value
        verdict = "even" if k.value == p.value else ("kernos ahead" if ahead else "kernos BEHIND")
        lines.append(
            f"  {metric(p):<24} kernos {fmt(k.value, k.unit):>9}  {p.system:<28} "
            f"{fmt(p.value, p.unit):>9} -> {verdict}"
        )
    return lines
