"""A provider's rate limit and its ``retry-after`` hold for the whole fleet, with real worker
processes (issue #9, section 2): three ``kernos worker`` processes against one database and one
provider simulator over real HTTP, all configured with the same ``rpm`` for provider ``oa``.

Each worker's kernos.toml sends an ``x-kernos-worker`` header naming it, which the simulator's
request log keeps: so every request the provider saw is known by its sender and its arrival
time, and the tests count there, at the provider, not in the workers. Without the sharing,
three workers send three times the configured rate, and a ``retry-after`` one of them is given
stops only that one: both tests would fail by a wide margin.

Each test prints what it measured (``pytest -s`` shows it).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest
from _gateway_support import OA
from _procs import WorkerProcess, Workers

from kernos.kernel import Client, Registry, connect
from kernos.sim import Fault, LogEntry, SimServer
from kernos.testing import wait_until

pytestmark = pytest.mark.slow

WORKERS = 3
#: a worker's heartbeat every second; dead only after 9 s of silence (a loaded machine)
LEASE_TTL = 3.0
SHARE = re.compile(r"provider oa: .* are shared by (\d+) live workers")
ADOPTED = re.compile(
    r"^(\S+ \S+) INFO kernos.gateway: provider oa paused for ([\d.]+)s", re.MULTILINE
)


@pytest.fixture
async def client(db_url: str) -> AsyncIterator[Client]:
    c = await connect(db_url, registry=Registry())
    try:
        yield c
    finally:
        await c.close()


def toml(path: Path, sim: SimServer, *, rpm: int, worker: str) -> Path:
    """One worker's kernos.toml: the fleet's ``rpm`` for ``oa``, and a header naming it."""
    path.write_text(
        f"""
[providers.oa]
kind = "openai"
base_url = "{sim.openai_base_url("oa")}"
api_key_env = ""
rpm = {rpm}
timeout = 120
headers = {{ "x-kernos-worker" = "{worker}" }}

[gateway]
backoff_base = 0.01
breaker_threshold = 50
timeout = 120
"""
    )
    return path


async def start_fleet(
    workers: Workers, db_url: str, sim: SimServer, tmp_path: Path, *, rpm: int
) -> list[WorkerProcess]:
    """Three workers, each known to share ``oa``'s limits with the other two."""
    fleet = []
    for n in range(1, WORKERS + 1):
        config = toml(tmp_path / f"kernos-w{n}.toml", sim, rpm=rpm, worker=f"w{n}")
        fleet.append(
            workers.start(
                db_url,
                app="llm_app.py",
                lease_ttl=LEASE_TTL,
                concurrency=20,
                env={"KERNOS_CONFIG": str(config)},
            )
        )

    def all_share() -> bool:
        return all(SHARE.findall(w.output())[-1:] == [str(WORKERS)] for w in fleet)

    await wait_until(all_share, timeout=60, what=f"{WORKERS} workers sharing oa's limits")
    return fleet


async def enqueue(client: Client, runs: int) -> None:
    for i in range(runs):
        await client.start("ask", {"route": OA, "text": f"question {i}"})


def sender(entry: LogEntry) -> str:
    return entry.headers.get("x-kernos-worker", "?")


async def test_the_fleet_sends_the_configured_rate_not_a_multiple_of_it(
    db_url: str, kernos_sim: SimServer, client: Client, workers: Workers, tmp_path: Path
) -> None:
    """rpm = 60 for the fleet: each of the three workers admits 20 a minute. The provider sees
    at most a minute's allowance at once (each limiter starts with a full minute of its share)
    and then 1 request a second; three unshared workers would send 180 at once, then 3 a
    second."""
    sim = kernos_sim
    rpm, window, settle = 60, 20.0, 5.0
    await start_fleet(workers, db_url, sim, tmp_path, rpm=rpm)
    await enqueue(client, 250)

    def observed() -> bool:
        log = sim.log("oa")
        return bool(log) and log[-1].arrived_monotonic - log[0].arrived_monotonic >= window

    await wait_until(observed, timeout=window + 120, what=f"{window:g} s of requests")
    log = sim.log("oa")
    start = log[0].arrived_monotonic
    seen = [e for e in log if e.arrived_monotonic - start <= window]
    steady = [e for e in seen if e.arrived_monotonic - start > settle]
    rate = len(steady) / (window - settle)
    allowed = rpm + rpm / 60 * window
    by_worker = Counter(sender(e) for e in seen)
    print(
        f"\nrpm {rpm} over {WORKERS} workers: {len(seen)} requests in the first {window:g} s "
        f"(allowed {allowed:g}, {WORKERS} unshared limiters: {WORKERS * allowed:g}); "
        f"{rate:.2f}/s after the first {settle:g} s (configured {rpm / 60:g}/s); "
        f"by worker {dict(sorted(by_worker.items()))}"
    )
    assert all(e.status == 200 for e in seen), [e.status for e in seen]
    assert len(seen) <= allowed * 1.1 + 2, (len(seen), workers.logs())
    assert 0.5 * rpm / 60 <= rate <= 1.5 * rpm / 60, (rate, workers.logs())
    assert set(by_worker) == {f"w{n}" for n in range(1, WORKERS + 1)}


async def test_a_retry_after_given_to_one_worker_stops_them_all(
    db_url: str, kernos_sim: SimServer, client: Client, workers: Workers, tmp_path: Path
) -> None:
    """The provider answers one request 429 with retry-after 12 s. The worker that got it
    pauses; the two others learn it through the database within a few seconds (measured:
    each logs when it adopts the pause) and the provider sees nothing more from anyone until
    the 12 s have passed. Three unshared workers would go on sending 2 a second."""
    sim = kernos_sim
    rpm, retry_after, grace = 120, 12.0, 4.0
    fleet = await start_fleet(workers, db_url, sim, tmp_path, rpm=rpm)
    await enqueue(client, 400)
    # a minute's allowance goes out at once; after it the fleet sends at the configured rate
    await wait_until(
        lambda: len(sim.log("oa")) >= rpm + 10, timeout=120, what="a steady flow of requests"
    )
    sim.add_fault("oa", Fault(kind="rate_limit", count=1, retry_after=retry_after))

    def limited() -> LogEntry | None:
        return next((e for e in sim.log("oa") if e.status == 429), None)

    hit: LogEntry = await wait_until(limited, timeout=60, what="the 429")
    at = hit.arrived_monotonic

    def resumed() -> bool:
        return any(e.arrived_monotonic > at + retry_after + 1 for e in sim.log("oa"))

    await wait_until(resumed, timeout=90, what="the fleet to send again after the pause")
    log = sim.log("oa")
    during = [e for e in log if at < e.arrived_monotonic < at + retry_after]
    late = [(sender(e), round(e.arrived_monotonic - at, 2)) for e in during]
    quiet = [(who, offset) for who, offset in late if offset > grace]
    others = [w for w in fleet if w.name != sender(hit)]
    delays = {}
    for worker in others:
        adopted = ADOPTED.findall(worker.output())
        assert adopted, f"{worker.name} never adopted the pause:\n{workers.logs()}"
        logged = datetime.strptime(adopted[0][0], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        delays[worker.name] = round(logged - hit.arrived_wall, 2)
    after = Counter(sender(e) for e in log if e.arrived_monotonic >= at + retry_after)
    print(
        f"\n429 (retry-after {retry_after:g} s) to {sender(hit)}; the others adopted the pause "
        f"after {delays} s; requests during the pause (worker, s after the 429): {late}; "
        f"after it, by worker: {dict(sorted(after.items()))}"
    )
    assert quiet == [], (late, workers.logs())
    assert all(delay <= grace for delay in delays.values()), (delays, workers.logs())
    assert sum(after.values()) > 0
