"""``kernos chaos tuesday --runs 50 --minutes 2`` on SQLite and on PostgreSQL (issue #9, §4).

The command is run as a user runs it: a subprocess that starts the simulator, four worker
processes and (on PostgreSQL) the proxy, injects the published faults and writes its report.
The test asserts the report's invariants, and that the faults really happened (a scenario in
which nothing went wrong would pass the invariants and prove nothing): 429s and an outage at the
primary, cut responses at the fallback, workers killed and claimed from, a deploy drained,
refunds held for a person and approved, and on PostgreSQL a stall that cost leases.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _db_support import PG_URL, SKIP_PG, pg_schema

RUNS = 50


def _tuesday(tmp_path: Path, database: str | None) -> dict[str, Any]:
    report = tmp_path / "report.json"
    cmd = [
        sys.executable, "-m", "kernos", "chaos", "tuesday",
        "--runs", str(RUNS), "--minutes", "2",
        "--dir", str(tmp_path / "chaos"), "--report", str(report),
    ]  # fmt: skip
    if database is not None:
        cmd += ["--database", database]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERNOS_")}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert report.exists(), f"no report; the command said:\n{done.stdout}\n{done.stderr}"
    result: dict[str, Any] = json.loads(report.read_text())
    # the exit code says whether the invariants held; the table shows why not
    assert done.returncode == (0 if result["ok"] else 1), done.stdout + done.stderr
    return result


def _check(r: dict[str, Any], *, postgres: bool) -> None:
    c = r["conversations"]
    inv = r["invariants"]
    summary = json.dumps({k: r[k] for k in ("conversations", "invariants", "effects")}, indent=1)
    # the invariants, each by its own measure
    assert c["started"] == RUNS, summary
    assert c["lost"] == 0 and inv["lost_runs"]["ok"], summary
    assert r["effects"]["measured"] and r["effects"]["duplicate_effects"] == 0, summary
    assert r["stale_owner_writes"] == 0, summary
    assert c["completed"] + c["waiting"].get("approval", 0) == RUNS, summary
    assert inv["workers_that_died_on_their_own"]["ok"], r["faults"]
    assert inv["deploys_drained_with_exit_0"]["ok"], r["faults"]
    assert r["ok"] is True
    # every refund conversation that completed refunded exactly once
    refunds_asked = c["by_kind"].get("refund", 0) + c["by_kind"].get("large_refund", 0)
    assert r["effects"]["refunds"] == refunds_asked, summary

    # the faults happened, and kernos did something about each
    llm = r["llm"]
    assert llm["failed_attempts_by_class"].get("rate_limited", 0) > 0, llm
    assert llm["answered_by"].get("fallback", 0) > 0, llm
    assert llm["calls_answered"] >= RUNS * 2, llm
    kinds = {(f["target"], f["fault"].split(":")[0]) for f in r["faults"]}
    assert any(t == "primary" and "outage" in f for t, f in kinds), kinds
    kills = [f for f in r["faults"] if f["fault"].startswith("SIGKILL")]
    assert len(kills) >= 4, r["faults"]
    # the busiest worker is the one killed: at least one kill took runs with it, and every
    # run it held was claimed again by another worker (or had finished as it died)
    held = [f for f in kills if f["detail"]["in_flight"]]
    assert held, kills
    for f in held:
        assert "; 0 not recovered" in f["kernos"], f
    assert all(f["detail"].get("restarted") for f in kills), kills
    deploy = next(f for f in r["faults"] if f["fault"].startswith("SIGTERM"))
    assert deploy["detail"]["exit_code"] == 0, deploy
    assert c["claims_per_run"] > 1.0, c
    # retry-after, measured between the simulator's requests: most retries of a 429 waited
    rate = next(f for f in r["faults"] if f["fault"].startswith("30% of requests"))
    assert "at least retry-after" in rate["kernos"], rate
    assert r["approvals"]["requested"] >= 1, r["approvals"]
    assert r["approvals"]["approved"] == r["approvals"]["requested"], r["approvals"]
    assert r["answer_seconds"]["p50"] is not None and r["cost_usd"] > 0
    database = [f for f in r["faults"] if f["target"] == "database"]
    if postgres:
        stall = next(f for f in database if "stops answering" in f["fault"])
        assert "claimed again" in stall["kernos"], stall
        assert any("delayed" in f["fault"] for f in database), database
    else:
        assert [f["fault"].startswith("not injected") for f in database] == [True], database


def test_tuesday_on_sqlite(tmp_path: Path) -> None:
    _check(_tuesday(tmp_path, None), postgres=False)


@pytest.mark.skipif(PG_URL is None, reason=SKIP_PG)
def test_tuesday_on_postgresql(tmp_path: Path) -> None:
    with pg_schema("chaos") as url:
        _check(_tuesday(tmp_path, url), postgres=True)
