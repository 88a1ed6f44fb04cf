"""The ``kernos`` command, run as a user runs it: a real process on a real database.

Each bad input (malformed JSON, unknown agent, unknown run, unreachable database) must print a
short message saying what to do, exit non-zero, and change nothing (guarantee 7).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


class Kernos:
    def __init__(self, url: str) -> None:
        self.env = {**os.environ, "KERNOS_DATABASE_URL": url, "COLUMNS": "200"}

    def __call__(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "kernos", *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if ok:
            assert done.returncode == 0, done.stderr
        return done

    def json(self, *args: str) -> object:
        return json.loads(self(*args, "--json").stdout)

    def worker(self, log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            return subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "kernos",
                    "worker",
                    "--app",
                    "examples.refund",
                    "--poll-interval",
                    "0.1",
                    "--lease-ttl",
                    "3",
                ],
                env=self.env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )


@pytest.fixture
def kernos(db_url: str) -> Kernos:
    return Kernos(db_url)


@pytest.fixture
def worker(kernos: Kernos, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A worker process for the example app; SIGTERM at the end must exit it cleanly (0)."""
    proc = kernos.worker(tmp_path / "worker.log")
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        assert code == 0, (tmp_path / "worker.log").read_text()


def wait_state(kernos: Kernos, run_id: str, state: str, timeout: float = 20) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        data = kernos.json("inspect", run_id)
        assert isinstance(data, dict)
        if data["state"] == state:
            return data
        assert time.monotonic() < deadline, f"run {run_id} still {data['state']}"
        time.sleep(0.1)


def test_the_refund_story(kernos: Kernos, worker: subprocess.Popen[bytes]) -> None:
    run_id = kernos(
        "run", "refund", "--app", "examples.refund", "--input", '{"id": "A-17", "cooling_off": 1.2}'
    ).stdout.strip()
    waiting = wait_state(kernos, run_id, "waiting")
    assert waiting["waiting_for"] in ("timer", "message:customer")
    wait_state_for = time.monotonic() + 20
    while kernos.json("inspect", run_id)["waiting_for"] != "message:customer":  # type: ignore[index]
        assert time.monotonic() < wait_state_for
        time.sleep(0.1)
    sent = kernos("send", run_id, "customer", '"yes please"')
    assert "sent" in sent.stdout
    done = wait_state(kernos, run_id, "completed")
    assert done["output"] == {
        "found": {"id": "A-17", "total": 42.0, "currency": "EUR"},
        "reply": "yes please",
    }
    steps = done["steps"]
    assert isinstance(steps, list) and [s["kind"] for s in steps] == [
        "step",
        "sleep",
        "wait_for_message",
    ]
    runs = kernos.json("runs", "--state", "completed")
    assert isinstance(runs, list) and [r["id"] for r in runs] == [run_id]
    trace = kernos("trace", run_id).stdout
    assert "run_claimed" in trace and "step_completed #1 lookup" in trace
    logs = kernos("logs", run_id).stdout
    assert "message_received" in logs and "run_completed" in logs
    events = kernos.json("trace", run_id)
    assert isinstance(events, dict) and events["events"][-1]["type"] == "run_completed"


def test_run_wait_prints_the_output(kernos: Kernos, worker: subprocess.Popen[bytes]) -> None:
    started = kernos(
        "run",
        "refund",
        "--app",
        "examples.refund",
        "--input",
        '{"id": "B-2", "cooling_off": 0}',
        "--json",
    )
    run_id = json.loads(started.stdout)["id"]
    wait_state(kernos, run_id, "waiting")
    kernos("send", run_id, "customer", '{"ok": true}')
    logs = kernos("logs", run_id, "--follow", "--json").stdout.splitlines()
    assert json.loads(logs[-1])["type"] == "run_completed"


def test_pause_resume_cancel(kernos: Kernos) -> None:
    run_id = kernos(
        "run", "refund", "--app", "examples.refund", "--input", '{"id": "C"}', "--delay", "3600"
    ).stdout.strip()
    assert "paused" in kernos("pause", run_id, "--reason", "look first").stdout
    again = kernos("pause", run_id, ok=False)
    assert again.returncode == 2 and "only a live run pauses" in again.stderr
    assert "queued" in kernos("resume", run_id).stdout
    assert "cancelled" in kernos("cancel", run_id).stdout
    logs = kernos("logs", run_id).stdout
    assert "run_paused" in logs and "look first" in logs and "run_cancelled" in logs


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["run", "refund", "--app", "examples.refund", "--input", "{oops"], 2, "not valid JSON"),
        (["run", "nobody", "--input", "1"], 2, "no agent named 'nobody'"),
        (["run", "refund", "--app", "no_such_module"], 2, "cannot import the app module"),
        (["inspect", "01NOSUCHRUN"], 2, "not found in"),
        (["send", "01NOSUCHRUN", "t", "1"], 2, "not found in"),
        (["send", "01NOSUCHRUN", "t", "{x"], 2, "not valid JSON"),
        (["cancel", "01NOSUCHRUN"], 2, "not found in"),
        (["runs", "--state", "sleeping"], 2, "not a run state"),
        (
            ["schedule", "add", "s", "refund", "every day", "--app", "examples.refund"],
            2,
            "not a valid cron expression",
        ),
        (["schedule", "remove", "nope"], 2, "no schedule named"),
        (["worker"], 2, "no app module"),
    ],
)
def test_bad_input_is_a_clear_error_and_changes_nothing(
    kernos: Kernos, args: list[str], code: int, message: str
) -> None:
    kernos("db", "migrate")
    before = kernos.json("db", "status")  # the schema version and the runs by state
    env_app = kernos.env.pop("KERNOS_APP", None)
    done = kernos(*args, ok=False)
    if env_app is not None:
        kernos.env["KERNOS_APP"] = env_app
    assert done.returncode == code, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert kernos.json("db", "status") == before


def test_a_mistyped_sqlite_path_is_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "typo" / "kernos.db"
    done = Kernos(f"sqlite:///{missing}")("runs", ok=False)
    assert done.returncode == 2 and "no kernos database at" in done.stderr
    assert not missing.parent.exists()
    bad = Kernos(f"sqlite:///{ROOT / 'README.md'}")("runs", ok=False)
    assert bad.returncode == 2 and "not a usable kernos database" in bad.stderr
    env = Kernos(f"sqlite:///{missing}")
    env.env["KERNOS_LEASE_TTL"] = "soon"
    done = env("runs", ok=False)
    assert done.returncode == 2 and "KERNOS_LEASE_TTL" in done.stderr
    assert "Traceback" not in done.stderr


def test_unreachable_database(tmp_path: Path) -> None:
    k = Kernos("postgresql://postgres@127.0.0.1:1/nothing?connect_timeout=1")
    done = k("runs", ok=False)
    assert done.returncode == 3 and "unavailable" in done.stderr
    bad = Kernos("mysql://x")
    done = bad("runs", ok=False)
    assert done.returncode == 2 and "unsupported database URL" in done.stderr


def test_schedules_and_db_commands(kernos: Kernos) -> None:
    kernos("db", "migrate")
    status = kernos.json("db", "status")
    assert isinstance(status, dict) and status["current"] == status["latest"] >= 1
    kernos(
        "schedule",
        "add",
        "nightly",
        "refund",
        "0 3 * * *",
        "--input",
        '{"id": "N"}',
        "--app",
        "examples.refund",
    )
    listed = kernos.json("schedule", "list")
    assert isinstance(listed, list) and listed[0]["name"] == "nightly"
    assert listed[0]["input"] == {"id": "N"}
    dup = kernos(
        "schedule", "add", "nightly", "refund", "0 3 * * *", "--app", "examples.refund", ok=False
    )
    assert dup.returncode == 2 and "exists already" in dup.stderr
    kernos("schedule", "remove", "nightly")
    assert kernos.json("schedule", "list") == []


def test_data_that_looks_like_markup_is_printed_as_it_is(kernos: Kernos) -> None:
    """A run's input, output or error with ``[bold]`` or ``[/oops]`` in it must neither crash
    a command nor lose text: the CLI prints data, not rich markup."""
    kernos("db", "migrate")
    text = "see [bold]this[/bold] and [/oops] and [routes]"
    started = kernos("run", "refund", "--app", "examples.refund", "--input", json.dumps(text))
    run_id = started.stdout.strip()
    for args in (["inspect", run_id], ["inspect", run_id, "--json"], ["runs", "--json"]):
        done = kernos(*args)
        assert "[/oops]" in done.stdout and "Traceback" not in done.stderr
    trace = kernos("trace", run_id, "--json")
    assert "[/oops]" in trace.stdout
