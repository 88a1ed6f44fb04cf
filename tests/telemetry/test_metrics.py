"""Prometheus metrics of a real worker process, read by a real scrape of its /metrics, and its
JSON logs naming run, step and trace."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
from _gateway_support import AN, config_for, write_config
from _kernel_support import a_run, until
from _procs import WorkerProcess, Workers
from prometheus_client.parser import text_string_to_metric_families

from kernos.kernel import connect, load_app
from kernos.sim import Fault, SimServer
from kernos.store import Event, RunState
from kernos.telemetry import MAX_TENANTS, WorkerMetrics, trace_id_hex

APPS = Path(__file__).resolve().parents[1] / "apps"
APP = load_app(str(APPS / "telemetry_app.py"))


def metrics_url(worker: WorkerProcess) -> str | None:
    found = re.search(r"metrics at http://[^:]+:(\d+)/metrics", worker.output())
    return f"http://127.0.0.1:{found.group(1)}/metrics" if found else None


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url, timeout=5).text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def total(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return sum(
        v
        for (n, ls), v in samples.items()
        if n == name and all(dict(ls).get(k) == want for k, want in labels.items())
    )


@pytest.mark.slow
async def test_a_real_scrape_counts_runs_steps_attempts_and_tokens(
    db_url: str, workers: Workers, kernos_sim: SimServer, tmp_path: Path
) -> None:
    kernos_sim.add_fault("an", Fault(kind="rate_limit", count=1, retry_after=0.1))
    env = {
        "KERNOS_CONFIG": str(write_config(tmp_path / "kernos.toml", config_for(kernos_sim))),
        "KERNOS_LOG_FORMAT": "json",
    }
    worker = workers.start(
        db_url, app="telemetry_app.py", env=env, args=["--metrics-port", "0"], log_level="INFO"
    )
    client = await connect(db_url, registry=APP)
    try:
        await until(lambda: metrics_url(worker) is not None, timeout=30)
        runs = [
            await client.start("traced", {"steps": 2, "route": AN}, tenant=f"t{i % 2}")
            for i in range(3)
        ]
        for run in runs:
            done = await client.wait(run.id, timeout=60)
            assert done.state == RunState.COMPLETED, (done.error, worker.output()[-3000:])
    finally:
        await client.close()
    url = metrics_url(worker)
    assert url is not None
    samples = scrape(url)
    assert total(samples, "kernos_run_claims_total", agent="traced") >= 3
    assert total(samples, "kernos_runs_finished_total", agent="traced", state="completed") == 3
    assert total(samples, "kernos_steps_total", kind="step", outcome="completed") == 6
    assert total(samples, "kernos_steps_total", kind="llm", outcome="completed") == 3
    assert (
        total(samples, "kernos_llm_attempts_total", provider="an", error_class="rate_limited") == 1
    )
    assert total(samples, "kernos_llm_attempts_total", provider="an", error_class="none") == 3
    assert total(samples, "kernos_step_duration_seconds_count", kind="step") == 6
    assert total(samples, "kernos_claim_wait_seconds_count") >= 3
    assert total(samples, "kernos_llm_tokens_total", tenant="t0", direction="input") > 0
    assert total(samples, "kernos_llm_tokens_total", tenant="t1", direction="output") > 0
    names = {n for n, _ in samples}
    labels = {k for _, ls in samples for k, _ in ls}
    assert all(n.startswith(("kernos_", "python_", "process_")) for n in names)
    assert "run_id" not in labels and "run" not in labels  # bounded cardinality

    # the JSON log lines: one object each; a line logged inside a step names run, step, trace
    lines = [json.loads(line) for line in worker.output().splitlines() if line.startswith("{")]
    assert lines and all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    working = [line for line in lines if line["message"].startswith("working on part")]
    assert len(working) == 6
    ids = {r.id for r in runs}
    assert all(line["run_id"] in ids for line in working)
    assert all(line["trace_id"] == trace_id_hex(line["run_id"]) for line in working)
    assert {line["step"] for line in working} == {1, 2}


def test_tenant_labels_are_bounded() -> None:
    metrics = WorkerMetrics()
    answer = Event(
        seq=1,
        type="llm_completed",
        step=1,
        name="r",
        payload={"response": {"model": "m", "provider": "p", "usage": {"input_tokens": 5}}},
    )
    for i in range(MAX_TENANTS + 50):
        metrics.committed(a_run(id=f"r{i}", tenant=f"tenant-{i}"), [answer])
    tenants = {
        s.labels["tenant"]
        for f in metrics.registry.collect()
        for s in f.samples
        if f.name == "kernos_llm_tokens"
    }
    assert len(tenants) == MAX_TENANTS + 1 and "other" in tenants
