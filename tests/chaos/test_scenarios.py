"""The parts of ``kernos chaos`` that can be checked without a scenario: the published
schedules, the journal check for stale-owner writes, the proxy's random delay, the plan a
conversation carries, and the command's refusals."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kernos.chaos import SCENARIOS, TcpProxy, Timing, scenario, stale_writes
from kernos.chaos._conversations import conversation
from kernos.errors import InvalidInput
from kernos.sim import PLAN_MARKER
from kernos.store import Event


def _timing(proxied: bool, minutes: float = 2) -> Timing:
    return Timing(seconds=minutes * 60, lease_ttl=5, proxied=proxied)


def test_tuesday_schedules_every_fault_the_issue_names() -> None:
    plan = scenario("tuesday").schedule(_timing(proxied=True))
    actions = [(i.target, i.action) for i in plan]
    for needed in [
        ("primary", "rate_limit"),
        ("primary", "outage"),
        ("fallback", "slow"),
        ("fallback", "truncate"),
        ("database", "db_slow"),
        ("database", "db_stall"),
        ("workers", "deploy"),
    ]:
        assert needed in actions
    kills = [i.at for i in plan if i.action == "kill"]
    assert kills == [10, 30, 50, 70, 90]  # every 20 s while the faults last
    stall = next(i for i in plan if i.action == "db_stall")
    assert stall.duration is not None and stall.duration > 5  # longer than the lease TTL
    rate = next(i for i in plan if i.action == "rate_limit")
    assert rate.params == {"rate": 0.3, "retry_after": 2.0}
    assert [i.at for i in plan] == sorted(i.at for i in plan)
    # a full outage lasts a minute once there is room for one
    long = scenario("tuesday").schedule(_timing(proxied=True, minutes=10))
    assert next(i for i in long if i.action == "outage").duration == 60


def test_without_a_proxied_database_no_database_fault_is_scheduled() -> None:
    plan = scenario("tuesday").schedule(_timing(proxied=False))
    assert not [i for i in plan if i.target == "database"]
    with pytest.raises(InvalidInput, match="postgresql://"):
        scenario("db-failover").schedule(_timing(proxied=False))
    assert [i.action for i in scenario("db-failover").schedule(_timing(proxied=True))] == [
        "db_failover",
        "db_failover",
    ]


def test_unknown_scenario_names_the_others() -> None:
    with pytest.raises(InvalidInput, match="tuesday, provider-outage, db-failover, crash-storm"):
        scenario("wednesday")
    assert set(SCENARIOS) == {"tuesday", "provider-outage", "db-failover", "crash-storm"}


def _ev(
    seq: int, type: str, step: int | None = None, token: int | None = None, **payload: object
) -> Event:
    return Event(seq=seq, type=type, step=step, payload=dict(payload), token=token)


def test_stale_writes_finds_a_second_result_and_claims_out_of_order() -> None:
    clean = [
        _ev(1, "run_claimed", claim=1),
        _ev(2, "step_completed", 0),
        _ev(3, "run_claimed", claim=2),
        _ev(4, "llm_completed", 1),
        _ev(5, "tool_completed", 2),
    ]
    assert stale_writes(clean) == 0
    # the old owner's result for step 1 landed after the new owner's: a fenced store refuses it
    assert stale_writes([*clean, _ev(6, "llm_completed", 1)]) == 1
    assert stale_writes([*clean, _ev(6, "run_claimed", claim=1)]) == 1
    # nothing may follow the run's end
    assert stale_writes([*clean, _ev(6, "run_completed")]) == 0
    assert stale_writes([*clean, _ev(6, "run_completed"), _ev(7, "tool_attempt", 3)]) == 1
    # the journal records each event's writer: an event under an older lease than the latest
    # claim's is a stale owner's write, even where it repeats no result
    claim = [
        Event(seq=1 + 2 * n, type="run_claimed", payload={"claim": n + 1, "token": t}, token=t)
        for n, t in enumerate((4, 5))
    ]
    tokened = [
        claim[0],
        _ev(2, "step_completed", 0, token=4),
        claim[1],
        _ev(4, "llm_attempt", 1, token=5),
        _ev(5, "cancel_requested"),  # a person's: no lease
    ]
    assert stale_writes(tokened) == 0
    assert stale_writes([*tokened, _ev(6, "llm_attempt", 1, token=4)]) == 1


def test_a_conversation_carries_the_plan_the_simulator_plays() -> None:
    message = conversation("large_refund")["message"]
    text, _, plan = message.partition(PLAN_MARKER)
    assert "C-9" in text
    turns = json.loads(plan)
    assert [t.get("tool") for t in turns] == [
        "lookup_order",
        "issue_refund",
        "notify_customer",
        None,
    ]
    assert turns[1]["arguments"]["amount"] == 310.0  # above the limit: a person approves


def test_the_proxy_draws_each_chunks_delay_from_the_range() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]

        def echo() -> None:
            conn, _ = server.accept()
            with conn:
                while data := conn.recv(1024):
                    conn.sendall(data)

        threading.Thread(target=echo, daemon=True).start()
        with TcpProxy(("127.0.0.1", port), delay=(0.05, 0.1)) as proxy:
            assert all(0.05 <= proxy.pause() <= 0.1 for _ in range(100))
            with socket.create_connection((proxy.host, proxy.port), timeout=5) as client:
                began = time.monotonic()
                client.sendall(b"ping")
                assert client.recv(16) == b"ping"
                # one delay each way, at least
                assert time.monotonic() - began >= 0.1
            proxy.delay = 0.0
            assert proxy.pause() == 0.0
    remote = TcpProxy.before("postgresql://u@db.example:6543/x")
    try:
        assert remote.upstream == ("db.example", 6543)
    finally:
        remote.close()


def _kernos(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kernos", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )


def test_chaos_list_and_refusals(tmp_path: Path) -> None:
    listed = _kernos("chaos", "list")
    assert listed.returncode == 0
    for name in SCENARIOS:
        assert name in listed.stdout
    mine = _kernos("chaos", "tuesday", "--app", "myapp", "--dir", str(tmp_path))
    assert mine.returncode != 0 and "--app needs --inputs" in mine.stderr
    failover = _kernos("chaos", "db-failover", "--minutes", "0.1", "--dir", str(tmp_path))
    assert failover.returncode != 0 and "postgresql://" in failover.stderr
    bad = tmp_path / "inputs.jsonl"
    bad.write_text('"fine"\n{not json\n')
    lines = _kernos(
        "chaos", "tuesday", "--app", "myapp", "--inputs", str(bad), "--dir", str(tmp_path)
    )
    assert lines.returncode != 0 and "inputs.jsonl:2: not JSON" in lines.stderr


def test_the_cli_registers_no_agent() -> None:
    """The shop's agent is registered by importing ``kernos.chaos.shop``, which only a
    scenario's workers do: a worker of another app must not also serve ``support``."""
    code = (
        "import kernos.cli, kernos.chaos, kernos.chaos._runner\n"
        "from kernos.kernel._registry import REGISTRY\n"
        "print(REGISTRY.keys())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


def _processes_of(directory: Path) -> list[int]:
    """Live processes whose environment names the scenario's kernos.toml (its sim, workers)."""
    config = str((directory / "kernos.toml").resolve()).encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if config in (proc / "environ").read_bytes():
                status = (proc / "status").read_text()
                if "\nState:\tZ" not in status:
                    found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_sigterm_stops_the_scenario_and_every_process_it_started(tmp_path: Path) -> None:
    directory = tmp_path / "chaos"
    runner = subprocess.Popen(
        [sys.executable, "-m", "kernos", "chaos", "crash-storm", "--runs", "5", "--workers",
         "2", "--minutes", "2", "--dir", str(directory)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while len(_processes_of(directory)) < 3:  # the simulator and two workers
            assert runner.poll() is None, runner.communicate()
            assert time.monotonic() < deadline, "the scenario did not start its processes"
            time.sleep(0.2)
        runner.send_signal(signal.SIGTERM)
        out, err = runner.communicate(timeout=60)
    finally:
        if runner.poll() is None:
            runner.kill()
    assert runner.returncode == 1, out + err
    assert "stopped by SIGTERM" in err
    assert _processes_of(directory) == []
