"""The span exporter sidecar: it survives a SIGTERM meant for the worker's group, it is started
again after it dies, and the worker never waits for it."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator

import pytest
from _kernel_support import a_run, until
from _otlp import OtlpHttpReceiver

from kernos.store import Event
from kernos.telemetry import SpanPipe, _sidecar, tracing_settings

RUN = a_run(created_at=time.time(), tenant="t")


def step(seq: int) -> Event:
    return Event(
        seq=seq,
        type="step_completed",
        step=seq,
        name=f"s{seq}",
        created_at=time.time(),
        duration=0.001,
    )


@pytest.fixture
def receiver() -> Iterator[OtlpHttpReceiver]:
    r = OtlpHttpReceiver()
    try:
        yield r
    finally:
        r.close()


def pipe_to(receiver: OtlpHttpReceiver) -> SpanPipe:
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
    settings = tracing_settings(env)
    assert settings is not None
    pipe = SpanPipe(settings, env)
    assert pipe.wait_ready()
    return pipe


def names(receiver: OtlpHttpReceiver) -> set[str]:
    return {s.name for s in receiver.spans}


async def test_the_sidecar_ignores_sigterm_and_exports_everything_on_close(
    receiver: OtlpHttpReceiver,
) -> None:
    pipe = pipe_to(receiver)
    pipe.committed(RUN, [step(1)])
    os.kill(pipe.proc.pid, signal.SIGTERM)  # systemd stopping the unit signals every process
    pipe.committed(RUN, [step(2)])
    await pipe.aclose()
    assert pipe.proc.returncode == 0
    assert names(receiver) == {"kernos.step s1", "kernos.step s2"}


async def test_a_sidecar_that_dies_is_started_again(
    receiver: OtlpHttpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_sidecar, "RESTART_SECONDS", 0.2)
    pipe = pipe_to(receiver)
    try:
        pipe.committed(RUN, [step(1)])
        await until(lambda: "kernos.step s1" in names(receiver), timeout=20)
        first = pipe.proc.pid
        os.kill(first, signal.SIGKILL)
        pipe.proc.wait(5)
        pipe.committed(RUN, [step(2)])  # handed to a dead sidecar: dropped, counted
        await until(lambda: pipe.dropped >= 1, timeout=10)
        await asyncio.sleep(0.3)
        pipe.committed(RUN, [step(3)])  # a new sidecar takes it
        await until(lambda: "kernos.step s3" in names(receiver), timeout=30)
        assert pipe.proc.pid != first
    finally:
        await pipe.aclose()
