"""The kernel against real databases, with an in-process worker: replay, retries, waits,
children, control and determinism. Crash tests with real processes are in test_recovery.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
from _kernel_support import WorkerFactory, until
from pydantic import BaseModel

import kernos
from kernos.errors import InvalidInput, UsageError
from kernos.kernel import Client, Registry, RetryPolicy, output_of, retry
from kernos.store import RunState


class Order(BaseModel):
    id: str
    amount: float


def error_of(run: kernos.Run) -> dict[str, Any]:
    assert run.error is not None
    return dict(json.loads(run.error))


async def types_of(client: Client, run_id: str) -> list[str]:
    return [e.type for e in await client.journal(run_id)]


async def test_steps_return_recorded_results_on_replay(
    client: Client, registry: Registry, worker: WorkerFactory
) -> None:
    """Guarantee 1: a completed step is never recomputed on replay."""
    calls: list[str] = []

    def effect(n: int) -> dict[str, Any]:
        calls.append(kernos.idempotency_key())
        return {"n": n, "tuple": (1, 2)}

    @kernos.agent("replayer", registry=registry)
    async def replayer(ctx: kernos.RunContext, n: int) -> list[Any]:
        first = await ctx.step("one", effect, n)
        second = await ctx.step("two", effect, n + 1)
        await ctx.wait_for_message("go")  # parks the run; waking it replays from the top
        third = await ctx.step("three", effect, n + 2)
        return [first, second, third]

    async with worker():
        run = await client.start("replayer", 1)
        await until(lambda: _waiting(client, run.id))
        await client.send(run.id, "go", None)
        done = await client.wait(run.id, timeout=15)
    assert done.state == RunState.COMPLETED
    assert output_of(done) == [
        {"n": 1, "tuple": [1, 2]},
        {"n": 2, "tuple": [1, 2]},
        {"n": 3, "tuple": [1, 2]},
    ]
    assert calls == [f"{run.id}:1", f"{run.id}:2", f"{run.id}:4"]


async def _waiting(client: Client, run_id: str) -> bool:
    return (await client.get(run_id)).state == RunState.WAITING


async def test_retries_are_journaled_then_succeed(
    client: Client, registry: Registry, worker: WorkerFactory
) -> None:
    attempts: list[str] = []

    @retry(RetryPolicy(max_attempts=4, initial_delay=0.01, retry_on=(ConnectionError,)))
    async def flaky() -> str:
        attempts.append(kernos.idempotency_key())
        if len(attempts) < 3:
            raise ConnectionError(f"refused #{len(attempts)}")
        return "ok"

    @kernos.agent("flaky", registry=registry)
    async def agent(ctx: kernos.RunContext, _: None) -> str:
        return str(await ctx.step("call", flaky))

    async with worker():
        run = await client.start("flaky")
        done = await client.wait(run.id, timeout=15)
    assert done.state == RunState.COMPLETED and output_of(done) == "ok"
    assert len(set(attempts)) == 1 and len(attempts) == 3
    events = await client.journal(run.id)
    failed = [e for e in events if e.type == "step_attempt_failed"]
    assert [e.attempt for e in failed] == [1, 2]
    assert failed[0].payload["error"]["type"] == "builtins.ConnectionError"
    assert "Traceback" in failed[0].payload["error"]["traceback"]
    assert "retry_in" in failed[0].payload
    assert [e.attempt for e in events if e.type == "step_completed"] == [3]


async def test_exhausted_step_fails_the_run_unless_caught(
    client: Client, registry: Registry, worker: WorkerFactory
) -> None:
    @retry(RetryPolicy(max_attempts=2, initial_delay=0))
    def broken() -> None:
        raise ValueError("bad data")

    @kernos.agent("fails", registry=registry)
    async def fails(ctx: kernos.RunContext, _: None) -> None:
        await ctx.step("broken", broken)

    @kernos.agent("catches", registry=registry)
    async def catches(ctx: kernos.RunContext, _: None) -> str:
        try:
            await ctx.step("broken", broken)
        except kernos.StepFailed as exc:
            return f"handled {exc.error_type} after {exc.attempts}"
        return "unreachable"

    async with worker():
        failing = await client.start("fails")
        catching = await client.start("catches")
        failed = await client.wait(failing.id, timeout=15)
        caught = await client.wait(catching.id, timeout=15)
    assert failed.state == RunState.FAILED
    err = error_of(failed)
    assert err["type"] == "kernos.errors.StepFailed" and "bad data" in err["message"]
    assert "'broken' failed after 2 attempt(s)" in err["message"]
    assert output_of(caught) == "handled builtins.ValueError after 2"


async def test_usage_errors_are_not_retried(
    client: Client, registry: Registry, worker: WorkerFactory
) -> None:
    calls = 0

    def wrong() -> None:
        nonlocal calls
        calls += 1
        raise UsageError("the call itself is wrong")

    @kernos.agent("wrong", registry=registry)
    async def agent(ctx: kernos.RunContext, _: None) -> None:
        await ctx.step("wrong", wrong)

    async with worker():
        done = await client.wait((await client.start("wrong")).id, timeout=15)
    assert done.state == RunState.FAILED and calls == 1


async def test_non_serialisable_result_names_the_step(
    client: Client, registry: Registry, worker: WorkerFactory
) -> None:
    @kernos.agent("unserialisable", registry=registry)
    async def agent(ctx: kernos.RunContext, _: None) -> None:
        await ctx.step("make_set", lambda: {1, 2})

    async with worker():
        done = await client.wait((await client.start("unserialisable")).id, timeout=15)
    assert done.state == RunState.FAILED
    err = error_of(done)
    assert err["type"] == "kernos.errors.NotSerializable"
    assert "step 'make_set'" in err["message"]
    assert "step_completed" not in await types_of(client, done.id)


async def test_changed_code_fails_with_determinism_error(
    client: Client, registry: Registry, worker: WorkerFactory
) -> None:
    """Guarantee 8: replayed code asking for a different step stops the run, naming both."""
    version = {"code": "old"}

    @kernos.agent("drifting", registry=registry)
    async def drifting(ctx: kernos.RunContext, _: None) -> str:
        await ctx.step("fetch" if version["code"] == "old" else "fetch_v2", lambda: 1)
        await ctx.wait_for_message("go")
        return "done"

    async with worker():
        run = await client.start("drifting")
        await until(lambda: _waiting(client, run.id))
        version["code"] = "new"
        await client.send(run.id, "go", 1)
        done = await client.wait(run.id, timeout=15)
    assert done.state == RunState.FAILED
    err = error_of(done)
    assert err["type"] == "kernos.errors.DeterminismError"
    assert "at step 1" in err["message"]
    assert "step 'fetch'" in err["message"] and "step 'fetch_v2'" in err["message"]


async def test_removed_steps_are_a_determinism_error(
    client: Client, registry: Registry, worker: WorkerFactory
) -> None:
    steps = {"n": 2}

    @kernos.agent("shrinking", registry=registry)
    async def shrinking(ctx: kernos.RunContext, _: None) -> str:
        for i in range(steps["n"]):
            await ctx.step(f"s{i}", lambda: 1)
        if steps["n"] == 2:
            await ctx.wait_for_message("go")
        return "done"

    async with worker():
        run = await client.start("shrinking")
        await until(lambda: _waiting(client, run.id))
        steps["n"] = 1
        await client.send(run.id, "go", 1)
        done = await client.wait(run.id, timeout=15)
    assert done.state == RunState.FAILED
    assert "no further step" in error_of(done)["message"]


async def test_now_uuid_random_replay_identically(
    client: Client, registry: Registry, worker: WorkerFactory
) -> None:
    seen: list[tuple[str, str, float]] = []

    @kernos.agent("values", registry=registry)
    async def values(ctx: kernos.RunContext, _: None) -> list[Any]:
        snapshot = (ctx.now().isoformat(), str(ctx.uuid()), ctx.random())
        seen.append(snapshot)
        await ctx.wait_for_message("go")
        return list(snapshot)

    async with worker():
        run = await client.start("values")
        await until(lambda: _waiting(client, run.id))
        await client.send(run.id, "go", 1)
        done = await client.wait(run.id, timeout=15)
    assert len(seen) == 2 and seen[0] == seen[1]
    assert output_of(done) == list(seen[0])


async def test_durable_sleep_parks_the_run(
    client: Client, registry: Registry, worker: WorkerFactory
) -> None:
    """Guarantee 4: a sleeping run is rows in the store, held by no worker."""

    @kernos.agent("sleeper", registry=registry)
    async def sleeper(ctx: kernos.RunContext, seconds: float) -> str:
        await ctx.sleep(seconds)
        return "awake"

    async with worker() as w:
        run = await client.start("sleeper", 1.5)
        await until(lambda: _waiting(client, run.id))
        parked = await client.get(run.id)
        assert parked.waiting_for == "timer" and parked.lease_owner is None
        assert w.active_runs == 0
        done = await client.wait(run.id, timeout=15)
    assert output_of(done) == "awake"
    assert await types_of(client, run.id) == [
        "run_claimed",
        "timer_started",
        "run_claimed",
        "timer_fired",
        "run_completed",
    ]


async def test_message_wait_times_out_to_default(
    client: Client, registry: Registry, worker: WorkerFactory
) -> None:
    @kernos.agent("impatient", registry=registry)
    async def impatient(ctx: kernos.RunContext, _: None) -> Any:
        return await ctx.wait_for_message("reply", timeout=1.2, default="no answer")

    async with worker():
        done = await client.wait((await client.start("impatient")).id, timeout=15)
    assert output_of(done) == "no answer"
    assert "message_timeout" in await types_of(client, done.id)


async def test_messages_sent_early_are_kept_in_order(
    client: Client, registry: Registry, worker: WorkerFactory
) -> None:
    @kernos.agent("mailbox", registry=registry)
    async def mailbox(ctx: kernos.RunContext, _: None) -> list[Any]:
        await ctx.sleep(1.2)
        return [await ctx.wait_for_message("t") for _ in range(3)]

    async with worker():
        run = await client.start("mailbox")
        for i in range(3):
            await client.send(run.id, "t", {"i": i}, sender="tester")
        done = await client.wait(run.id, timeout=15)
    assert output_of(done) == [{"i": 0}, {"i": 1}, {"i": 2}]


async def test_child_runs_and_their_failures(
    client: Client, registry: Registry, worker: WorkerFactory
) -> None:
    @kernos.agent("child", registry=registry)
    async def child(ctx: kernos.RunContext, n: int) -> int:
        if n < 0:
            raise ValueError("negative")
        return await ctx.step("double", lambda: n * 2)  # type: ignore[no-any-return]

    @kernos.agent("parent", registry=registry)
    async def parent(ctx: kernos.RunContext, n: int) -> dict[str, Any]:
        ok = await ctx.spawn("child", n)
        bad = await ctx.spawn("child", -1)
        result = await ok.result()
        try:
            await bad.result()
        except kernos.ChildRunFailed as exc:
            return {"result": result, "failed": exc.state, "child": ok.run_id}
        return {"result": result}

    async with worker():
        run = await client.start("parent", 21)
        done = await client.wait(run.id, timeout=20)
    out = output_of(done)
    assert out["result"] == 42 and out["failed"] == "failed"
    child_run = await client.get(out["child"])
    assert child_run.parent_id == run.id


async def test_pause_and_resume_at_step_boundaries(
    client: Client, registry: Registry, worker: WorkerFactory
) -> None:
    @kernos.agent("long", registry=registry)
    async def long(ctx: kernos.RunContext, n: int) -> int:
        for i in range(n):
            await ctx.step(f"s{i}", _slow)
        return n

    async with worker(kernos.WorkerConfig(lease_ttl=0.6, poll_interval=0.05)):
        run = await client.start("long", 30)
        await until(lambda: _steps_done(client, run.id, 2))
        await client.pause(run.id, reason="checking")
        await until(lambda: _state(client, run.id, RunState.PAUSED))
        paused_at = await _count_steps(client, run.id)
        await until(lambda: _state(client, run.id, RunState.PAUSED))
        assert await _count_steps(client, run.id) == paused_at < 30
        await client.resume(run.id)
        done = await client.wait(run.id, timeout=30)
    assert output_of(done) == 30
    types = await types_of(client, run.id)
    assert "run_paused" in types and "run_resumed" in types


async def _slow() -> None:
    import asyncio

    await asyncio.sleep(0.05)


async def _steps_done(client: Client, run_id: str, n: int) -> bool:
    return await _count_steps(client, run_id) >= n


async def _count_steps(client: Client, run_id: str) -> int:
    return sum(e.type == "step_completed" for e in await client.journal(run_id))


async def _state(client: Client, run_id: str, state: RunState) -> bool:
    return (await client.get(run_id)).state == state


async def test_cancel_delivers_cancelled_for_cleanup(
    client: Client, registry: Registry, worker: WorkerFactory
) -> None:
    @kernos.agent("cancellable", registry=registry)
    async def cancellable(ctx: kernos.RunContext, _: None) -> str:
        try:
            await ctx.wait_for_message("never")
        except kernos.Cancelled:
            await ctx.step("cleanup", lambda: "cleaned")
            raise
        return "unreachable"

    async with worker():
        run = await client.start("cancellable")
        await until(lambda: _waiting(client, run.id))
        await client.cancel(run.id, reason="customer left")
        done = await client.wait(run.id, timeout=15)
    assert done.state == RunState.CANCELLED
    types = await types_of(client, run.id)
    assert types.index("cancel_requested") < types.index("cancel_delivered")
    assert "step_completed" in types and types[-1] == "run_cancelled"


async def test_validated_input_and_bad_input_changes_nothing(
    client: Client, registry: Registry, worker: WorkerFactory
) -> None:
    """Guarantee 7: bad input gets a clear error and creates nothing."""

    @kernos.agent("typed", registry=registry)
    async def typed(ctx: kernos.RunContext, order: Order) -> str:
        return f"{order.id}:{order.amount:.2f}"

    with pytest.raises(InvalidInput, match="Order"):
        await client.start("typed", {"id": "A-1"})
    with pytest.raises(kernos.AgentNotFound, match="no agent named 'nope'"):
        await client.start("nope", 1)

    @kernos.agent("untyped", registry=registry)
    async def untyped(ctx: kernos.RunContext, value: Any) -> Any:
        return value

    with pytest.raises(InvalidInput, match="not JSON-serialisable"):
        await client.start("untyped", {"id": object()})
    assert await client.runs() == []
    async with worker():
        done = await client.wait(
            (await client.start("typed", {"id": "A", "amount": 2})).id, timeout=15
        )
    assert output_of(done) == "A:2.00"


async def test_idempotency_key_outside_a_step_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="outside a step"):
        kernos.idempotency_key()


async def test_priorities_and_agent_limits(
    client: Client, registry: Registry, worker: WorkerFactory
) -> None:
    order: list[int] = []
    running = {"now": 0, "max": 0}

    async def work(p: int) -> None:
        import asyncio

        running["now"] += 1
        running["max"] = max(running["max"], running["now"])
        order.append(p)
        await asyncio.sleep(0.05)
        running["now"] -= 1

    @kernos.agent("limited", registry=registry, max_concurrency=2)
    async def limited(ctx: kernos.RunContext, p: int) -> None:
        await ctx.step("work", work, p)

    runs = [await client.start("limited", p, priority=p) for p in (1, 5, 3, 9, 7, 2)]
    async with worker():
        for r in runs:
            await client.wait(r.id, timeout=15)
    assert running["max"] <= 2
    assert set(order[:2]) == {9, 7}  # the two highest priorities go first


async def test_drain_releases_runs_at_a_step_boundary(
    client: Client, registry: Registry, worker: WorkerFactory
) -> None:
    @kernos.agent("drained", registry=registry)
    async def drained(ctx: kernos.RunContext, n: int) -> int:
        for i in range(n):
            await ctx.step(f"s{i}", _slow)
        return n

    async with worker():
        run = await client.start("drained", 200)
        await until(lambda: _steps_done(client, run.id, 2))
    released = await client.get(run.id)
    assert released.state == RunState.QUEUED and released.lease_owner is None
    assert (await types_of(client, run.id))[-1] == "run_released"
    async with worker():
        done = await client.wait(run.id, timeout=60)
    assert output_of(done) == 200


async def test_cron_schedule_starts_runs(
    client: Client, registry: Registry, worker: WorkerFactory
) -> None:
    @kernos.agent("ticker", registry=registry)
    async def ticker(ctx: kernos.RunContext, payload: dict[str, int]) -> int:
        return payload["x"]

    with pytest.raises(InvalidInput, match="cron"):
        await client.add_schedule("bad", "ticker", "every minute", {"x": 1})
    await client.add_schedule("tick", "ticker", "* * * * *", {"x": 1})
    sched = (await client.schedules())[0]
    # Make the tick due now instead of waiting up to a minute.
    with client.store.dialect.write() as tx:  # type: ignore[attr-defined]
        tx.execute("UPDATE kernos_schedules SET next_fire_at = 0 WHERE name = 'tick'")
    async with worker(), worker():
        await until(lambda: _has_runs(client))
        runs = await client.runs(agent="ticker")
        await client.wait(runs[0].id, timeout=15)
    runs = await client.runs(agent="ticker")
    assert len(runs) == 1 and runs[0].schedule == "tick"
    assert (await client.schedules())[0].next_fire_at > sched.created_at


async def _has_runs(client: Client) -> bool:
    return bool(await client.runs())


async def test_cancelled_agent_may_wait_while_cleaning_up(
    client: Client, registry: Registry, worker: WorkerFactory
) -> None:
    @kernos.agent("slow_cleanup", registry=registry)
    async def slow_cleanup(ctx: kernos.RunContext, _: None) -> str:
        try:
            await ctx.wait_for_message("never")
        except kernos.Cancelled:
            await ctx.sleep(1.2)  # a durable wait after the cancel: must not loop forever
            await ctx.step("undo", lambda: "undone")
        return "cleaned up"

    async with worker():
        run = await client.start("slow_cleanup")
        await until(lambda: _waiting(client, run.id))
        await client.cancel(run.id)
        done = await client.wait(run.id, timeout=20)
    assert done.state == RunState.CANCELLED and output_of(done) is None
    types = await types_of(client, run.id)
    assert types.count("cancel_delivered") == 1 and "timer_fired" in types


async def test_resume_withdraws_a_pause_the_worker_already_saw(
    client: Client, registry: Registry, worker: WorkerFactory
) -> None:
    import asyncio

    entered, go = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        entered.set()
        await go.wait()

    @kernos.agent("held", registry=registry)
    async def held(ctx: kernos.RunContext, _: None) -> str:
        await ctx.step("hold", hold)
        await ctx.step("after", lambda: 1)
        return "done"

    async with worker(kernos.WorkerConfig(lease_ttl=0.3, poll_interval=0.05)):
        run = await client.start("held")
        await until(entered.is_set)
        await client.pause(run.id, reason="wait")
        await asyncio.sleep(0.3)  # let heartbeats carry the pause to the worker
        await client.resume(run.id)
        go.set()
        done = await client.wait(run.id, timeout=15)
    assert done.state == RunState.COMPLETED
    assert "run_paused" not in await types_of(client, run.id)


async def test_reasons_reach_the_journal_for_running_runs(
    client: Client, registry: Registry, worker: WorkerFactory
) -> None:
    @kernos.agent("steady", registry=registry)
    async def steady(ctx: kernos.RunContext, n: int) -> int:
        for i in range(n):
            await ctx.step(f"s{i}", _slow)
        return n

    async with worker():
        run = await client.start("steady", 400)
        await until(lambda: _steps_done(client, run.id, 1))
        await client.pause(run.id, reason="checking the refund amount")
        await until(lambda: _state(client, run.id, RunState.PAUSED))
        await client.cancel(run.id, reason="customer withdrew")
        done = await client.wait(run.id, timeout=15)
    events = await client.journal(run.id)
    paused = [e for e in events if e.type == "run_paused"]
    assert paused and paused[0].payload["reason"] == "checking the refund amount"
    assert done.state == RunState.CANCELLED
    assert events[-1].type == "run_cancelled"
    assert events[-1].payload["reason"] == "customer withdrew"


async def test_children_are_cancelled_with_their_parent(
    client: Client, registry: Registry, worker: WorkerFactory
) -> None:
    @kernos.agent("napper", registry=registry)
    async def napper(ctx: kernos.RunContext, _: None) -> None:
        await ctx.sleep(3600)

    @kernos.agent("orphaner", registry=registry)
    async def orphaner(ctx: kernos.RunContext, _: None) -> Any:
        child = await ctx.spawn("napper")
        return await child.result()

    async with worker():
        run = await client.start("orphaner")
        await until(lambda: _waiting(client, run.id))
        child_id = next(
            e.payload["child_id"] for e in await client.journal(run.id) if e.type == "child_spawned"
        )
        await until(lambda: _waiting(client, child_id))
        await client.cancel(run.id)
        await client.wait(run.id, timeout=15)
        child = await client.wait(child_id, timeout=15)
    assert child.state == RunState.CANCELLED


async def test_oversized_output_fails_the_run_instead_of_looping(
    client: Client, registry: Registry, worker: WorkerFactory
) -> None:
    @kernos.agent("huge", registry=registry)
    async def huge(ctx: kernos.RunContext, _: None) -> str:
        return "x" * (2 * 1024 * 1024)

    async with worker():
        done = await client.wait((await client.start("huge")).id, timeout=15)
    assert done.state == RunState.FAILED
    assert "over the limit" in error_of(done)["message"]


async def test_steps_run_concurrently_but_a_wait_beside_them_is_refused(
    client: Client, registry: Registry, worker: WorkerFactory
) -> None:
    import asyncio

    calls: list[str] = []

    async def slow(tag: str) -> str:
        calls.append(tag)
        await asyncio.sleep(0.05)
        return tag

    @kernos.agent("parallel", registry=registry)
    async def parallel(ctx: kernos.RunContext, _: None) -> list[str]:
        return list(await asyncio.gather(*(ctx.step(f"t{i}", slow, f"t{i}") for i in range(5))))

    @kernos.agent("mixed", registry=registry)
    async def mixed(ctx: kernos.RunContext, _: None) -> Any:
        return await asyncio.gather(ctx.step("slow", slow, "s"), ctx.wait_for_message("go"))

    async with worker():
        ok = await client.wait((await client.start("parallel")).id, timeout=15)
        bad = await client.wait((await client.start("mixed")).id, timeout=15)
    assert output_of(ok) == [f"t{i}" for i in range(5)]
    assert bad.state == RunState.FAILED
    assert "still run concurrently" in error_of(bad)["message"]
    assert calls.count("s") == 1
