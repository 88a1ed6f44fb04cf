"""Real worker processes trying to break the guarantees of DESIGN.md (issue #4, section 7).

Each test starts ``python -m kernos worker`` subprocesses on a real SQLite file or a real
PostgreSQL schema, and kills (SIGKILL), freezes (SIGSTOP/SIGCONT) or drains (SIGTERM) them.
Agents live in ``tests/apps/recovery_app.py``; their step effects are appended to files outside
kernos' database, so what really happened can be compared with what the journal says.

Reading a journal: a claim's ``run_claimed`` event is written together with that claim's first
write, so the events from one ``run_claimed`` up to the next belong to that claim.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from _procs import (
    APPS,
    Workers,
    frozen,
    pid_of_worker,
    read_effects,
)

from kernos.kernel import Client, connect, load_app, output_of
from kernos.store import Event, NewRun, RunState, new_run_id
from kernos.testing import wait_until

REGISTRY = load_app(str(APPS / "recovery_app.py"))  # the agents the worker processes run
import recovery_app as app  # noqa: E402 - importable once load_app put tests/apps on sys.path


@asynccontextmanager
async def connected(url: str) -> AsyncIterator[Client]:
    client = await connect(url, registry=REGISTRY)
    try:
        yield client
    finally:
        await client.close()


def claims(events: list[Event]) -> list[tuple[int, int, list[Event]]]:
    """Split a journal by claim: ``(token, worker pid, events of that claim)``.

    Checks on the way that seqs are 1..n and that tokens strictly increase.
    """
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), "journal seqs have gaps"
    out: list[tuple[int, int, list[Event]]] = []
    for ev in events:
        if ev.type == "run_claimed":
            token = int(ev.payload["token"])
            assert not out or token > out[-1][0], f"claim tokens not increasing: {events}"
            out.append((token, pid_of_worker(ev.payload["worker"]), [ev]))
        elif ev.type in ("run_paused", "run_resumed", "cancel_requested") or not out:
            raise AssertionError(f"unexpected event outside a claim: {ev}")
        else:
            out[-1][2].append(ev)
    return out


def assert_owner_committed(events: list[Event]) -> dict[int, int]:
    """Every step result was committed by the worker holding the claim it sits in.

    Returns ``{step position: pid that committed it}``.
    """
    committed: dict[int, int] = {}
    for _, pid, evs in claims(events):
        for ev in evs:
            if ev.type == "step_completed":
                assert ev.step not in committed, f"step {ev.step} committed twice: {events}"
                assert ev.payload["result"]["pid"] == pid, (
                    f"step {ev.name} (position {ev.step}) was committed by pid "
                    f"{ev.payload['result']['pid']} inside the claim of pid {pid}"
                )
                assert ev.step is not None
                committed[ev.step] = pid
    assert [e.type for e in events].count("run_completed") == 1
    assert events[-1].type == "run_completed"
    return committed


# -- 1 ------------------------------------------------------------------------------------------

RUNS = 20
STEPS = 30
KILLS = 10


@pytest.mark.slow
async def test_sigkill_at_random_moments_loses_nothing_and_repeats_only_in_flight_steps(
    db_url: str, workers: Workers, tmp_path: Path
) -> None:
    """Guarantees 1 and 2 (durable progress; at-least-once steps with stable idempotency keys).

    20 runs of 30 steps; the worker is SIGKILLed at 10 random moments and restarted. Every run
    must complete with the right output; a step's effect may be repeated only when a kill
    landed while that step was in flight (its executor was killed before committing), and every
    repeat carries the key of the original.
    """
    seed = int(os.environ.get("KERNOS_TEST_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    effects = tmp_path / "effects.log"
    spec = {"effects": str(effects), "steps": STEPS, "low": 0.1, "high": 0.3}
    async with connected(db_url) as client:
        runs = [(await client.start("chain", {**spec, "seed": s})).id for s in range(RUNS)]
        killed: list[int] = []
        for _ in range(KILLS):
            w = workers.start(db_url, lease_ttl=1.0, concurrency=RUNS)
            await wait_until(
                lambda: any(e["pid"] == w.pid for e in read_effects(effects)),  # noqa: B023
                timeout=30,
                what=f"worker {w.name} to make progress (seed {seed})",
            )
            await asyncio.sleep(rng.uniform(0.0, 0.5))  # the random moment of the kill
            assert w.kill() == -signal.SIGKILL
            killed.append(w.pid)
            done = [r for r in runs if (await client.get(r)).state.terminal]
            assert not done, f"runs ended before all kills landed (seed {seed}): make steps longer"
        final = workers.start(db_url, lease_ttl=1.0, concurrency=RUNS)
        ended = [await client.wait(r, timeout=60) for r in runs]
        journals = {r: await client.journal(r) for r in runs}
    assert final.terminate() == 0

    for seed_of_run, run in enumerate(ended):
        assert run.state == RunState.COMPLETED, (seed, run.error)
        expected = sum(app.chain_value(seed_of_run, i) for i in range(1, STEPS + 1))
        assert output_of(run) == {"seed": seed_of_run, "total": expected}

    log = read_effects(effects)
    by_step: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for e in log:
        by_step[(e["run"], e["step"])].append(e)
    assert len(by_step) == RUNS * STEPS
    repeats = 0
    orphans_per_kill: Counter[tuple[int, str]] = Counter()
    for run_id, events in journals.items():
        committed = assert_owner_committed(events)
        assert sorted(committed) == list(range(1, STEPS + 1))
        for pos, committer in committed.items():
            runs_of_step = by_step[(run_id, f"step-{pos}")]
            assert {e["key"] for e in runs_of_step} == {f"{run_id}:{pos}"}, runs_of_step
            # The committing execution is the last one; each earlier one was cut short by a
            # kill: its process was SIGKILLed, and it ran the step once only.
            assert runs_of_step[-1]["pid"] == committer, (seed, runs_of_step)
            earlier = [e["pid"] for e in runs_of_step[:-1]]
            assert set(earlier) <= set(killed), (seed, runs_of_step, killed)
            assert len(set(earlier)) == len(earlier), (seed, runs_of_step)
            repeats += len(earlier)
            orphans_per_kill.update((pid, run_id) for pid in earlier)
    print(f"seed {seed}: {len(killed)} kills, {repeats} repeated step effects")
    # A kill interrupts at most one step per run it was executing.
    assert max(orphans_per_kill.values(), default=0) <= 1
    assert repeats <= len(killed) * RUNS
    assert repeats > 0, "no kill landed inside a step: the test did not test anything"


# -- 2 ------------------------------------------------------------------------------------------


async def test_stale_worker_after_sigstop_commits_nothing(
    db_url: str, workers: Workers, tmp_path: Path
) -> None:
    """Guarantee 3 (one owner at a time; a worker that lost its lease cannot commit).

    Worker A is frozen with SIGSTOP in the middle of a step, past its lease; worker B takes the
    run over and enters the same step. A is then continued and its step returns: A must append
    no event at all (the journal is unchanged), and the step's one ``step_completed`` is B's.
    """
    effects = tmp_path / "effects.log"
    gates = tmp_path / "gates"
    gates.mkdir()
    inp = {"effects": str(effects), "gates": str(gates)}

    def slow_by(pid: int) -> bool:
        return any(e["step"] == "slow" and e["pid"] == pid for e in read_effects(effects))

    async with connected(db_url) as client:
        a = workers.start(db_url, lease_ttl=1.5)
        run_id = (await client.start("fenced", inp)).id
        await wait_until(lambda: slow_by(a.pid), timeout=30, what="worker A inside step 'slow'")
        as_a_left_it = await client.journal(run_id)
        assert [e.type for e in as_a_left_it] == ["run_claimed", "step_completed"]

        with frozen(a, db_url, run_id):
            b = workers.start(db_url, lease_ttl=1.5)
            await wait_until(lambda: slow_by(b.pid), timeout=30, what="worker B inside 'slow'")
            taken = await client.get(run_id)
            assert pid_of_worker(taken.lease_owner or "") == b.pid
            assert taken.lease_token == 2
            (gates / str(a.pid)).touch()  # A's step returns as soon as A runs again

        await wait_until(
            lambda: "lease lost" in a.output(), timeout=15, what="worker A to notice its loss"
        )
        assert a.alive, workers.logs()
        assert await client.journal(run_id) == as_a_left_it, "the stale worker appended"

        (gates / str(b.pid)).touch()
        done = await client.wait(run_id, timeout=30)
        events = await client.journal(run_id)
    assert a.terminate() == 0
    assert b.terminate() == 0

    assert done.state == RunState.COMPLETED, done.error
    assert output_of(done) == {"before_pid": a.pid, "slow_pid": b.pid}
    by_claim = claims(events)
    assert [(token, pid) for token, pid, _ in by_claim] == [(1, a.pid), (2, b.pid)]
    assert [(e.type, e.name) for e in by_claim[0][2]] == [
        ("run_claimed", None),
        ("step_completed", "before"),
    ]
    assert [(e.type, e.name) for e in by_claim[1][2]] == [
        ("run_claimed", None),
        ("step_completed", "slow"),
        ("run_completed", None),
    ]
    assert_owner_committed(events)
    slow = [(e["pid"], e["key"]) for e in read_effects(effects) if e["step"] == "slow"]
    assert slow == [(a.pid, f"{run_id}:2"), (b.pid, f"{run_id}:2")]


# -- 3 ------------------------------------------------------------------------------------------

DRAIN_RUNS = 500


@pytest.mark.slow
@pytest.mark.postgres
async def test_two_workers_drain_500_runs_each_once(
    pg_url: str, workers: Workers, tmp_path: Path
) -> None:
    """Guarantee 3 on the distributed engine (PostgreSQL, ``FOR UPDATE SKIP LOCKED``).

    Two workers drain 500 runs at once: no run is ever committed to by two owners, every run
    completes exactly once, and a step's effect happens once unless its run changed hands.
    """
    effects = tmp_path / "effects.log"
    async with connected(pg_url) as client:
        ids = [
            (await client.start("drain", {"effects": str(effects), "n": n})).id
            for n in range(DRAIN_RUNS)
        ]
        pair = [workers.start(pg_url, lease_ttl=5.0, concurrency=25) for _ in range(2)]

        async def all_done() -> bool:
            counts = await client.store.count_runs()
            assert not counts.get(RunState.FAILED), workers.logs()
            return counts.get(RunState.COMPLETED, 0) == DRAIN_RUNS

        await wait_until(all_done, timeout=120, what="500 runs to complete", interval=0.2)
        runs = [await client.get(i) for i in ids]
        journals = {i: await client.journal(i) for i in ids}
    assert [w.terminate() for w in pair] == [0, 0]

    log = read_effects(effects)
    count = Counter(e["key"] for e in log)
    finished_by: Counter[int] = Counter()
    for run in runs:
        events = journals[run.id]
        committed = assert_owner_committed(events)
        assert sorted(committed) == [1, 2, 3]
        by_claim = claims(events)
        finished_by[by_claim[-1][1]] += 1
        assert output_of(run)["pids"] == [committed[1], committed[2], committed[3]]
        for pos in (1, 2, 3):
            key = f"{run.id}:{pos}"
            if len(by_claim) == 1:
                assert count[key] == 1, (key, [e for e in log if e["key"] == key])
            else:
                assert 1 <= count[key] <= len(by_claim)
    assert sum(count.values()) == len(log)
    assert set(finished_by) == {w.pid for w in pair}, f"one worker did all the work: {finished_by}"


# -- 4 ------------------------------------------------------------------------------------------


async def test_timer_and_message_survive_worker_restarts(
    db_url: str, workers: Workers, tmp_path: Path
) -> None:
    """Guarantees 1 and 4 (a waiting run is rows in the store, and nothing is lost by a crash).

    The worker is SIGKILLed while the run sleeps on a timer, which comes due while no worker is
    alive; a new worker fires it. That one is killed while the run waits for a message, which is
    sent while no worker is alive; a third worker delivers it and the run completes.
    """
    effects = tmp_path / "effects.log"
    async with connected(db_url) as client:
        w1 = workers.start(db_url)
        run_id = (await client.start("waiter", {"effects": str(effects), "sleep": 3})).id

        async def waiting_for(what: str) -> bool:
            run = await client.get(run_id)
            return run.state == RunState.WAITING and run.waiting_for == what

        await wait_until(lambda: waiting_for("timer"), timeout=30, what="the run to sleep")
        assert w1.kill() == -signal.SIGKILL
        started = [e for e in await client.journal(run_id) if e.type == "timer_started"]
        fire_at = float(started[0].payload["fire_at"])
        await wait_until(lambda: time.time() > fire_at + 0.2, timeout=10, what="the timer due")
        assert (await client.get(run_id)).state == RunState.WAITING

        w2 = workers.start(db_url)
        await wait_until(lambda: waiting_for("message:go"), timeout=30, what="the timer to fire")
        assert w2.kill() == -signal.SIGKILL
        await client.send(run_id, "go", {"x": 42})
        assert (await client.get(run_id)).state == RunState.QUEUED

        w3 = workers.start(db_url)
        done = await client.wait(run_id, timeout=30)
        events = await client.journal(run_id)
    assert w3.terminate() == 0

    assert done.state == RunState.COMPLETED, done.error
    assert output_of(done) == {"message": {"x": 42}}
    types = Counter(e.type for e in events)
    assert types["timer_started"] == types["timer_fired"] == types["message_received"] == 1
    pids = [pid for _, pid, _ in claims(events)]
    assert pids == [w1.pid, w2.pid, w3.pid]
    assert [(e["step"], e["pid"]) for e in read_effects(effects)] == [
        ("a", w1.pid),
        ("b", w2.pid),
        ("c", w3.pid),
    ]


PARKED = 10_000


async def _park(client: Client, agent: str, count: int) -> list[str]:
    """Create ``count`` queued runs in a few transactions (``client.start`` is one each)."""
    # The SQL store's own insert, in batches: this is set-up, not the system under test.
    store: Any = client.store
    ids = [new_run_id() for _ in range(count)]

    def insert() -> None:
        now = time.time()
        for chunk in range(0, count, 1000):
            with store.dialect.write() as tx:
                for rid in ids[chunk : chunk + 1000]:
                    store._insert_run(tx, NewRun(rid, agent, "1", "null"), now)

    await asyncio.to_thread(insert)
    return ids


@pytest.mark.slow
async def test_ten_thousand_waiting_runs_hold_no_worker_memory(
    db_url: str, workers: Workers
) -> None:
    """Guarantee 4 (waiting costs nothing): 10,000 runs parked on timers and messages are rows
    in the store, and the worker that parked them holds no memory for them."""
    async with connected(db_url) as client:
        w = workers.start(db_url, lease_ttl=10.0, poll_interval=0.2, log_level="WARNING")
        probe = (await client.start("park_message", None)).id
        await wait_until(lambda: waiting(client, probe), timeout=30, what="the worker to start")
        await client.send(probe, "wake", "warm")  # exercise every code path once before
        await client.wait(probe, timeout=30)  # measuring the idle worker
        idle = w.rss_kib()

        timers = await _park(client, "park_timer", PARKED // 2)
        messages = await _park(client, "park_message", PARKED // 2)

        async def all_parked() -> bool:
            counts = await client.store.count_runs()
            return counts.get(RunState.WAITING, 0) == PARKED

        await wait_until(all_parked, timeout=180, what="10,000 runs waiting", interval=0.5)
        parked = w.rss_kib()
        timer_rows = await count_rows(client, "kernos_timers")
        sample = random.sample(messages, 20)
        for rid in sample:
            await client.send(rid, "wake", rid)
        woken = [await client.wait(rid, timeout=30) for rid in sample]
        one = await client.get(timers[0])
    assert w.terminate() == 0

    growth_mib = (parked - idle) / 1024
    print(
        f"worker RSS idle {idle / 1024:.1f} MiB, with {PARKED} parked runs "
        f"{parked / 1024:.1f} MiB (growth {growth_mib:.1f} MiB)"
    )
    assert growth_mib < 50, f"the worker grew by {growth_mib:.1f} MiB for runs it is not running"
    assert timer_rows == PARKED // 2
    assert one.state == RunState.WAITING and one.waiting_for == "timer" and one.lease_owner is None
    assert [(r.state, output_of(r)) for r in woken] == [(RunState.COMPLETED, r.id) for r in woken]


async def waiting(client: Client, run_id: str) -> bool:
    return (await client.get(run_id)).state == RunState.WAITING


async def count_rows(client: Client, table: str) -> int:
    store: Any = client.store

    def count() -> int:
        with store.dialect.read() as tx:
            return int(tx.fetchone(f"SELECT COUNT(*) FROM {table}")[0])

    return await asyncio.to_thread(count)


# -- 5 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("point", "raw_calls"), [("after_effect", 2), ("before_effect", 1)])
async def test_crash_between_effect_and_commit_repeats_with_same_key(
    db_url: str, workers: Workers, tmp_path: Path, point: str, raw_calls: int
) -> None:
    """Guarantee 2 (at-least-once steps, exactly-once effects through the idempotency key).

    ``KERNOS_FAULT=after_effect:charge`` SIGKILLs the worker after the charge was made and
    before its result is committed. The recovering worker runs the step again with the same
    ``kernos.idempotency_key()``: the raw call happens twice, the deduplicated charge once.
    (``before_effect``: the crash comes first, so the call happens once.)
    """
    effects = tmp_path / "effects.log"
    ledger = tmp_path / "ledger.db"
    inp = {"effects": str(effects), "ledger": str(ledger), "amount": 1250}
    async with connected(db_url) as client:
        crashing = workers.start(db_url, fault=f"{point}:charge")
        run_id = (await client.start("payment", inp)).id
        assert crashing.proc.wait(timeout=30) == -signal.SIGKILL, crashing.output()
        first = await client.journal(run_id)
        assert [(e.type, e.name) for e in first] == [
            ("run_claimed", None),
            ("step_completed", "reserve"),
        ]
        recovering = workers.start(db_url)
        done = await client.wait(run_id, timeout=30)
        events = await client.journal(run_id)
    assert recovering.terminate() == 0

    key = f"{run_id}:2"
    assert done.state == RunState.COMPLETED, done.error
    receipt = output_of(done)["receipt"]
    assert receipt == {"key": key, "amount": 1250, "pid": recovering.pid}
    calls = [(e["pid"], e["key"]) for e in read_effects(effects) if e["step"] == "charge"]
    expected = [(crashing.pid, key), (recovering.pid, key)]
    assert calls == expected[-raw_calls:]
    with sqlite3.connect(ledger) as conn:
        rows = conn.execute("SELECT key, run, amount FROM charges").fetchall()
    conn.close()
    assert rows == [(key, run_id, 1250)]
    assert assert_owner_committed(events) == {1: crashing.pid, 2: recovering.pid, 3: recovering.pid}
    assert [e.attempt for e in events if e.name == "charge"] == [1]
