"""``kernos sim`` as a user runs it: a real process on a free port, steered by more processes."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
from anthropic.types import MessageParam
from openai.types.chat import ChatCompletionMessageParam

ROOT = Path(__file__).resolve().parents[2]
OAI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]
ANT: list[MessageParam] = [{"role": "user", "content": "hello"}]


def kernos(*args: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    if url:
        env["KERNOS_SIM_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "kernos", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _first_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "kernos sim printed nothing"
    return proc.stdout.readline()


@pytest.fixture
def server() -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``kernos sim --port 0`` with a rule from the command line; yields it and its URL."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kernos",
            "sim",
            "--port",
            "0",
            "--seed",
            "3",
            "--fault",
            "openai:rate_limit:count=1,retry_after=1",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = _first_line(proc, timeout=30)
        match = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert match, line
        yield proc, match.group(0)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def test_serve_steer_and_stop(server: tuple[subprocess.Popen[str], str]) -> None:
    proc, url = server
    with openai.OpenAI(
        base_url=f"{url}/openai/v1", api_key="k", max_retries=0, timeout=5
    ) as client:
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="m", messages=OAI)
        assert info.value.response.headers["retry-after"] == "1"
        assert client.chat.completions.create(model="m", messages=OAI).choices

    added = kernos("sim", "faults", "add", "anthropic", "overloaded:count=1", url=url)
    assert added.returncode == 0, added.stderr
    assert "overloaded:count=1" in added.stdout
    listed = kernos("sim", "faults", "list", "--json", url=url)
    assert json.loads(listed.stdout) == {
        "anthropic": [{"kind": "overloaded", "rate": 1.0, "count": 1}]
    }
    with anthropic.Anthropic(
        base_url=f"{url}/anthropic", api_key="k", max_retries=0, timeout=5
    ) as aclient:
        with pytest.raises(anthropic.InternalServerError) as ainfo:
            aclient.messages.create(model="c", max_tokens=20, messages=ANT)
        assert ainfo.value.status_code == 529

    log = kernos("sim", "log", "--json", url=url)
    assert [(e["provider"], e["status"]) for e in json.loads(log.stdout)] == [
        ("openai", 429),
        ("openai", 200),
        ("anthropic", 529),
    ]
    assert "rate_limit" in kernos("sim", "log", url=url).stdout

    # A request held by a hang must not keep SIGTERM from stopping the server.
    assert kernos("sim", "faults", "set", "openai", "hang", url=url).returncode == 0
    outcome: list[BaseException] = []

    def hung_call() -> None:
        with openai.OpenAI(
            base_url=f"{url}/openai/v1", api_key="k", max_retries=0, timeout=30
        ) as client:
            try:
                client.chat.completions.create(model="m", messages=OAI)
            except openai.APIError as exc:
                outcome.append(exc)

    caller = threading.Thread(target=hung_call)
    caller.start()
    with httpx.Client(base_url=url, timeout=5) as http:
        deadline = time.monotonic() + 10
        while not any(e["fault"] == "hang" for e in http.get("/_sim/log").json()["entries"]):
            assert time.monotonic() < deadline, "the hung request never arrived"
            time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    caller.join(timeout=10)
    assert len(outcome) == 1 and isinstance(outcome[0], openai.APIConnectionError)


def test_errors_are_one_line_with_exit_codes(server: tuple[subprocess.Popen[str], str]) -> None:
    _, url = server
    bad_rule = kernos("sim", "faults", "add", "openai", "rate_limit:rate=7", url=url)
    assert bad_rule.returncode == 2
    assert bad_rule.stderr.count("\n") == 1 and "rate" in bad_rule.stderr
    bad_flag = kernos("sim", "--port", "0", "--fault", "openai-no-kind")
    assert bad_flag.returncode == 2 and "PROVIDER:KIND" in bad_flag.stderr
    unreachable = kernos("sim", "faults", "list", url="http://127.0.0.1:9")
    assert unreachable.returncode == 3
    assert "no simulator answers at http://127.0.0.1:9" in unreachable.stderr
    port = url.rsplit(":", 1)[1]
    busy = kernos("sim", "--port", port)
    assert busy.returncode == 2 and "another --port" in busy.stderr
