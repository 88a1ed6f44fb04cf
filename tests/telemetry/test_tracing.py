"""Runs exported as OpenTelemetry traces: one trace per run (its id is the run's), GenAI
semantic conventions, each LLM attempt a span, and nothing exported twice across a SIGKILL.

The receivers are real (``tests/_otlp.py``): OTLP over HTTP and over gRPC, decoded with the
official protobuf definitions, as a collector would.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _gateway_support import OA, config_for, write_config
from _kernel_support import until
from _otlp import OtlpGrpcReceiver, OtlpHttpReceiver, ReceivedSpan
from _procs import Workers
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import kernos
from kernos.errors import ConfigError
from kernos.gateway import default_services
from kernos.governance import Budget, Governor
from kernos.kernel import Client, Registry, connect, load_app
from kernos.sim import Fault, SimServer
from kernos.store import RunState
from kernos.telemetry import (
    TraceExporter,
    call_span_id,
    run_span_id,
    trace_id_hex,
    trace_id_of,
    tracing_from_env,
)
from kernos.testing import FAST, running_worker

APPS = Path(__file__).resolve().parents[1] / "apps"
#: a chat span is named for the model (the route "oa:gpt-4.1-mini" names provider oa)
CHAT = f"chat {OA.partition(':')[2]}"


@kernos.tool
def lookup(order_id: str) -> str:
    """Look an order up."""
    return f"order {order_id}: shipped"


def register(registry: Registry) -> None:
    @kernos.agent("traced", registry=registry)
    async def traced(ctx: kernos.RunContext, _: Any) -> str:
        await ctx.memory.put("notes", "the customer likes green tea")
        await ctx.memory.search("notes", "tea")
        answer = await ctx.llm(OA, [{"role": "user", "content": "Where is A-1?"}])
        await ctx.tool(lookup, {"order_id": "A-1"}, call_id="call_7")
        await ctx.sleep(0.05)
        return str(answer.text)


class Span:
    """A finished span, typed loosely for assertions."""

    def __init__(self, span: ReadableSpan) -> None:
        assert span.context is not None and span.start_time is not None
        assert span.end_time is not None
        self.name = span.name
        self.context = span.context
        self.parent = span.parent
        self.attributes: dict[str, Any] = dict(span.attributes or {})
        self.start_time: int = span.start_time
        self.end_time: int = span.end_time


def _by_name(spans: list[Span]) -> dict[str, list[Span]]:
    out: dict[str, list[Span]] = {}
    for s in spans:
        out.setdefault(s.name, []).append(s)
    return out


@pytest.mark.parametrize("content", [False, True])
async def test_a_run_is_one_trace_of_genai_spans(
    client: Client, registry: Registry, kernos_sim: SimServer, content: bool
) -> None:
    register(registry)
    kernos_sim.add_fault("oa", Fault(kind="rate_limit", count=1, retry_after=0.05))
    memory = InMemorySpanExporter()
    tracing = TraceExporter(
        SimpleSpanProcessor(memory), content=content, providers={"oa": "openai"}
    )
    config = config_for(kernos_sim)
    governor = Governor(
        client.store, budgets=[Budget(name="day", per="tenant", tokens=10**9)], gateway=config
    )
    async with running_worker(
        client,
        registry,
        FAST,
        services=default_services(config),
        gatekeeper=governor,
        observer=tracing,
    ):
        run = await client.start("traced", None, tenant="acme")
        done = await client.wait(run.id, timeout=30)
    assert done.state == RunState.COMPLETED, done.error
    spans = [Span(s) for s in memory.get_finished_spans()]
    assert {s.context.trace_id for s in spans} == {trace_id_of(run.id)}
    assert trace_id_hex(run.id) == f"{trace_id_of(run.id):032x}"
    named = _by_name(spans)

    [root] = named["invoke_agent traced"]
    assert root.parent is None and root.context.span_id == run_span_id(run.id)
    assert root.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert root.attributes["kernos.tenant"] == "acme"
    assert root.attributes["kernos.run.state"] == "completed"

    # the call, under the run (its attempts, also "chat <model>", are under the call)
    [chat] = [s for s in spans if s.name == CHAT and s.parent == root.context]
    assert chat.parent is not None and chat.parent.span_id == root.context.span_id
    attrs = chat.attributes
    assert attrs["gen_ai.operation.name"] == "chat" and attrs["gen_ai.provider.name"] == "openai"
    assert attrs["kernos.provider"] == "oa" and attrs["kernos.llm.route"] == OA
    assert attrs["gen_ai.request.model"] == attrs["gen_ai.response.model"] == CHAT[5:]
    assert attrs["gen_ai.usage.input_tokens"] > 0 and attrs["gen_ai.usage.output_tokens"] > 0
    assert attrs["kernos.llm.attempts"] == 2
    assert attrs["kernos.idempotency_key"] == f"{run.id}:{attrs['kernos.step']}"
    assert chat.context.span_id == call_span_id(run.id, attrs["kernos.step"])
    assert ("gen_ai.output.messages" in attrs) is content

    # the 429: its own span under the call, with its error class and the delay it asked for
    [failed] = [s for s in spans if s.attributes.get("error.type") == "rate_limited"]
    assert failed.parent is not None and failed.parent.span_id == chat.context.span_id
    assert failed.attributes["kernos.llm.then"] == "retry"
    assert failed.attributes["http.response.status_code"] == 429
    assert failed.start_time <= chat.end_time and chat.start_time <= failed.start_time

    # the budget check before the call: a policy span under the call, naming the budget
    checks = named["kernos.policy allow"]  # one before the LLM call, one before the tool call
    [check] = [c for c in checks if c.parent is not None and c.parent == chat.context]
    assert list(check.attributes["kernos.budgets"]) == ["day"]

    [tool] = named["execute_tool lookup"]
    assert tool.attributes["gen_ai.tool.call.id"] == "call_7"
    assert ("gen_ai.tool.call.result" in tool.attributes) is content
    assert "kernos.memory.put notes" in named and "kernos.memory.search notes" in named
    assert named["kernos.memory.search notes"][0].attributes["kernos.memory.hits"] == 1
    [wait] = named["kernos.wait timer"]
    assert wait.end_time - wait.start_time >= 0.04e9
    assert len({s.context.span_id for s in spans}) == len(spans)


def test_tracing_is_off_unless_the_environment_asks() -> None:
    assert tracing_from_env({}) is None
    assert (
        tracing_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_SDK_DISABLED": "true"})
        is None
    )
    assert (
        tracing_from_env(
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_TRACES_EXPORTER": "none"}
        )
        is None
    )
    on = tracing_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"})
    assert on is not None and not on.content
    on.shutdown()
    with pytest.raises(ConfigError, match="http/protobuf"):
        tracing_from_env(
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}
        )


@pytest.fixture
def grpc_receiver() -> Iterator[OtlpGrpcReceiver]:
    r = OtlpGrpcReceiver()
    try:
        yield r
    finally:
        r.close()


async def test_spans_reach_a_real_receiver_over_grpc(
    client: Client, registry: Registry, kernos_sim: SimServer, grpc_receiver: OtlpGrpcReceiver
) -> None:
    register(registry)
    tracing = tracing_from_env(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": grpc_receiver.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_SERVICE_NAME": "support-workers",
        }
    )
    assert tracing is not None
    async with running_worker(
        client, registry, FAST, services=default_services(config_for(kernos_sim)), observer=tracing
    ):
        run = await client.start("traced", None)
        await client.wait(run.id, timeout=30)
    await tracing.aclose()
    spans = grpc_receiver.of_trace(trace_id_hex(run.id))
    names = {s.name for s in spans}
    assert {"invoke_agent traced", CHAT, "execute_tool lookup"} <= names
    assert {s.resource.get("service.name") for s in spans} == {"support-workers"}


# -- across a SIGKILL, with real worker processes -----------------------------------------------


@pytest.fixture
def http_receiver() -> Iterator[OtlpHttpReceiver]:
    r = OtlpHttpReceiver()
    try:
        yield r
    finally:
        r.close()


@pytest.mark.slow
async def test_one_trace_across_a_sigkill_and_nothing_exported_twice(
    db_url: str,
    workers: Workers,
    http_receiver: OtlpHttpReceiver,
    kernos_sim: SimServer,
    tmp_path: Path,
) -> None:
    app = load_app(str(APPS / "telemetry_app.py"))
    client = await connect(db_url, registry=app)
    try:
        env = {
            "KERNOS_CONFIG": str(write_config(tmp_path / "kernos.toml", config_for(kernos_sim))),
            "OTEL_EXPORTER_OTLP_ENDPOINT": http_receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "50",
        }
        first = workers.start(db_url, app="telemetry_app.py", env=env)
        run = await client.start("traced", {"steps": 8, "seconds": 0.4, "route": OA})
        trace = trace_id_hex(run.id)

        def parts() -> list[ReceivedSpan]:
            return [s for s in http_receiver.of_trace(trace) if s.name.startswith("kernos.step")]

        await until(lambda: len(parts()) >= 2, timeout=30)
        assert first.kill() < 0  # SIGKILL, mid-run
        before = {s.span_id for s in http_receiver.of_trace(trace)}
        workers.start(db_url, app="telemetry_app.py", env=env)
        done = await client.wait(run.id, timeout=60)
        assert done.state == RunState.COMPLETED, (done.error, workers.logs())
        await until(
            lambda: any(s.parent_id == "" for s in http_receiver.of_trace(trace)), timeout=30
        )
    finally:
        await client.close()

    spans = http_receiver.of_trace(trace)
    assert all(
        s.trace_id == trace
        for s in http_receiver.spans
        if s.attributes.get("kernos.run_id") == run.id
    )
    counts = Counter(s.span_id for s in spans)
    assert max(counts.values()) == 1, "a span was exported twice"
    [root] = [s for s in spans if s.parent_id == ""]
    assert root.attributes["kernos.run.claims"] == 2 and root.name == "invoke_agent traced"
    steps = Counter(s.name for s in parts())
    assert max(steps.values()) == 1  # steps answered from the journal were not exported again
    # the successor exported the steps it made and the call, parented to the same root
    after = [s for s in spans if s.span_id not in before]
    assert any(s.name == CHAT for s in after)
    assert all(
        s.parent_id == f"{run_span_id(run.id):016x}"
        for s in after
        if s.name.startswith("kernos.step")
    )
    journal = await _journal_steps(db_url, run.id)
    assert len(steps) >= journal - 1  # at most the one in the kill's last batch window is lost


async def _journal_steps(db_url: str, run_id: str) -> int:
    client = await connect(db_url)
    try:
        return sum(e.type == "step_completed" for e in await client.journal(run_id))
    finally:
        await client.close()


@pytest.mark.slow
async def test_spans_handed_to_the_sidecar_outlive_a_sigkilled_worker(
    db_url: str, workers: Workers, http_receiver: OtlpHttpReceiver
) -> None:
    """The sidecar batches for 30 s here; the worker is SIGKILLed right after the run ends:
    the pipe closes and the sidecar exports what it holds at once, then exits."""
    app = load_app(str(APPS / "telemetry_app.py"))
    client = await connect(db_url, registry=app)
    try:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": http_receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "30000",
        }
        worker = workers.start(db_url, app="telemetry_app.py", env=env)
        run = await client.start("traced", {"steps": 3, "seconds": 0.01})
        done = await client.wait(run.id, timeout=30)
        assert done.state == RunState.COMPLETED
        await asyncio.sleep(0.3)  # > the worker's hand-over interval (0.1 s)
        assert http_receiver.of_trace(trace_id_hex(run.id)) == []  # still batched
        assert worker.kill() < 0
        await until(lambda: len(http_receiver.of_trace(trace_id_hex(run.id))) >= 4, timeout=20)
    finally:
        await client.close()
    names = sorted(s.name for s in http_receiver.of_trace(trace_id_hex(run.id)))
    assert names == ["invoke_agent traced", *[f"kernos.step part-{i}" for i in (1, 2, 3)]]


async def test_a_call_cut_off_by_a_cancel_still_has_its_span(
    client: Client, registry: Registry
) -> None:
    """Cancelled while its LLM call is parked: the call is journaled as abandoned, and every
    exported span's parent is exported too (no orphans in the trace)."""

    async def parks(call: Any, route: str, messages: Any, *_: Any, **__: Any) -> Any:
        call.park("provider", time.time() + 60, {"why": "provider down"})

    @kernos.agent("parker", registry=registry)
    async def parker(ctx: kernos.RunContext, _: Any) -> str:
        return str((await ctx.llm(OA, [{"role": "user", "content": "hi"}])).text)

    memory = InMemorySpanExporter()
    governor = Governor(client.store, budgets=[Budget(name="day", per="tenant", tokens=10**9)])
    async with running_worker(
        client,
        registry,
        FAST,
        services={"llm": parks},
        gatekeeper=governor,
        observer=TraceExporter(SimpleSpanProcessor(memory)),
    ):
        run = await client.start("parker", None)

        async def parked() -> bool:
            return any(e.type == "llm_parked" for e in await client.journal(run.id))

        await until(parked, timeout=20)
        await client.cancel(run.id, reason="operator")
        done = await client.wait(run.id, timeout=20)
    assert done.state == RunState.CANCELLED
    assert "call_abandoned" in [e.type for e in await client.journal(run.id)]
    spans = [Span(s) for s in memory.get_finished_spans()]
    ids = {s.context.span_id for s in spans}
    assert all(s.parent is None or s.parent.span_id in ids for s in spans)
    [call] = [s for s in spans if s.attributes.get("error.type") == "abandoned"]
    assert call.name == CHAT and call.parent is not None
    assert {"kernos.wait provider", "kernos.policy allow"} <= {s.name for s in spans}
