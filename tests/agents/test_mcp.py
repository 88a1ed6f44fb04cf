"""Tools from MCP servers: real servers built with the official SDK (``mcp_servers/``), run as
stdio child processes and as streamable HTTP subprocesses, and killed with SIGKILL mid-call.

What is tried: the tools and their schemas as the server lists them, arguments checked against
those schemas, results and errors as the model reads them, one session shared by concurrent
calls, the tool cache and the server's list_changed notification, calls failing fast with
``ToolUnavailable`` when the server dies and succeeding again once it is back, timeouts, a clean
shutdown, and ``[mcp.servers.NAME]`` in kernos.toml.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kernos.agents import McpServer, McpToolError, Tool, ToolArgumentsInvalid, mcp_server
from kernos.agents._mcp import RESTART_BASE, RESTART_CAP, _checker, restart_delay
from kernos.agents._mcp_config import HttpTransport, StdioTransport, server_settings
from kernos.errors import ConfigError, InfrastructureError, ToolUnavailable, UsageError
from kernos.testing import wait_until

SERVERS = Path(__file__).resolve().parent / "mcp_servers"
SERVER = SERVERS / "tools_server.py"
#: generous: a server process starts in about a second, longer on a loaded machine
STARTUP = 60.0


def stdio_server(refuse: Path, *, timeout: float = 30.0) -> McpServer:
    """The test server as a child process; it exits at start while ``refuse`` exists."""
    return McpServer.stdio(
        "demo",
        sys.executable,
        [str(SERVER)],
        env={"MCP_TEST_REFUSE": str(refuse)},
        timeout=timeout,
        startup_timeout=STARTUP,
    )


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[McpServer]:
    async with stdio_server(tmp_path / "refuse") as server:
        yield server


class HttpServerProcess:
    """The test server over streamable HTTP, in a subprocess that a test can kill and start
    again on the same port."""

    def __init__(self, log: Path) -> None:
        self.port = _free_port()
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(SERVER),
                "--http",
                str(self.port),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        await wait_until(self._answers, timeout=STARTUP, what=f"the HTTP MCP server on {self.url}")

    async def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.returncode is not None:
            raise AssertionError(f"the HTTP MCP server exited; its log:\n{self._output()}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        writer.close()
        await writer.wait_closed()
        return True

    def _output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    async def kill(self) -> None:
        """SIGKILL: no goodbye to any client, connections cut mid-response."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            await self.proc.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
async def http_process(tmp_path: Path) -> AsyncIterator[HttpServerProcess]:
    process = HttpServerProcess(tmp_path / "http-server.log")
    await process.start()
    try:
        yield process
    finally:
        await process.kill()


def by_name(tools: list[Tool]) -> dict[str, Tool]:
    return {t.name: t for t in tools}


async def pid_of(server: McpServer) -> int:
    """The server process's id (the pid tool answers it as text)."""
    result = await server.call("pid")
    assert isinstance(result, str)
    return int(result)


async def a_call_succeeds(server: McpServer, tool: str, arguments: dict[str, Any]) -> Any:
    """The call's result once the server is back (None while it raises ToolUnavailable)."""
    try:
        return await server.call(tool, arguments)
    except ToolUnavailable:
        return None


# -- tools, arguments, results ------------------------------------------------------------


async def test_the_servers_tools_with_their_schemas_and_annotations(demo: McpServer) -> None:
    tools = by_name(await demo.tools())
    assert {"add", "set_flag", "refund", "fail", "block", "gather"} <= set(tools)
    add = tools["add"]
    assert add.description == "Add two whole numbers."
    assert add.parameters["type"] == "object"
    assert add.parameters["required"] == ["a", "b"]
    assert add.parameters["properties"]["a"]["type"] == "integer"
    assert add.spec.parameters == add.parameters
    # readOnlyHint and idempotentHint both make a call safe to repeat; no hint does not
    assert add.idempotent and tools["set_flag"].idempotent
    assert not tools["refund"].idempotent
    assert add.timeout == demo.timeout


async def test_arguments_are_checked_against_the_servers_schema(demo: McpServer) -> None:
    add = by_name(await demo.tools())["add"]
    with pytest.raises(ToolArgumentsInvalid) as missing:
        add.validate({"a": 1})
    assert str(missing.value) == "invalid arguments for add: 'b' is required"
    with pytest.raises(ToolArgumentsInvalid) as wrong:
        await add.invoke({"a": "one", "b": 2})
    assert str(wrong.value) == "invalid arguments for add: 'a': 'one' is not of type 'integer'"
    assert add.validate({"a": 1, "b": 2}) == {"a": 1, "b": 2}
    assert await add.invoke({"a": 2, "b": 3}) == "5"


def test_schema_errors_are_worded_for_the_model() -> None:
    schema = {
        "type": "object",
        "properties": {
            "order": {
                "type": "object",
                "properties": {"id": {"type": "string"}},
                "required": ["id"],
            },
            "amount": {"type": "number", "minimum": 0},
        },
        "required": ["order", "amount"],
        "additionalProperties": False,
    }
    check = _checker("refund", schema)
    assert check is not None
    with pytest.raises(ToolArgumentsInvalid) as caught:
        check({"order": {}, "amount": -1, "note": "x"})
    message = str(caught.value)
    assert message.startswith("invalid arguments for refund: ")
    assert "'order.id' is required" in message
    assert "'amount': -1 is less than the minimum of 0" in message
    assert "'note' is not a parameter of refund" in message
    assert check({"order": {"id": "A-1"}, "amount": 5}) == {"order": {"id": "A-1"}, "amount": 5}
    # a schema that is not JSON Schema: the server alone judges the arguments
    assert _checker("odd", {"type": "no-such-type"}) is None


async def test_results_are_text_structured_content_or_the_servers_error(demo: McpServer) -> None:
    assert await demo.call("refund", {"order_id": "A-17", "amount": 12.5}) == (
        "refunded 12.50 on A-17"
    )
    assert await demo.call("structured_only") == {"total": 3, "currency": "EUR"}
    with pytest.raises(McpToolError) as failed:
        await demo.call("fail", {"message": "the ledger is locked"})
    assert "the ledger is locked" in str(failed.value)
    with pytest.raises(McpToolError, match="no_such_tool"):
        await demo.call("no_such_tool", {})


async def test_twenty_concurrent_calls_share_one_session(demo: McpServer) -> None:
    """Each gather call answers only once all 20 are in flight on the server together: were
    calls serialised, or each given its own session or process, this would time out."""
    pid = await demo.call("pid")
    async with asyncio.timeout(STARTUP):
        pids = await asyncio.gather(*(demo.call("gather", {"n": 20}) for _ in range(20)))
    assert set(pids) == {pid}


async def test_the_tool_list_is_cached_and_refreshed_when_the_server_says_it_changed(
    demo: McpServer,
) -> None:
    first = await demo.tools()
    assert "late" not in by_name(first)
    assert [t.name for t in await demo.tools()] == [t.name for t in first]
    assert await demo.call("listings") == "1"  # the second tools() came from the cache

    assert await demo.call("add_tool_now") == "added"  # adds `late`, sends list_changed
    late = by_name(await demo.tools()).get("late")
    assert late is not None, "the tool added at runtime is listed without a restart"
    assert await demo.call("listings") == "2"
    assert await late.invoke({"word": "hello"}) == "HELLO"


# -- failures -----------------------------------------------------------------------------


async def test_a_stdio_server_killed_mid_call_fails_calls_fast_and_comes_back(
    demo: McpServer, tmp_path: Path
) -> None:
    """SIGKILL of the server process mid-call: the call in flight and new calls raise
    ToolUnavailable (retryable) instead of hanging, while kernos restarts the server; once it
    can start again, calls succeed without the caller doing anything but retry."""
    old_pid = await pid_of(demo)
    marker = tmp_path / "block-started"
    in_flight = asyncio.create_task(demo.call("block", {"marker": str(marker)}))
    await wait_until(marker.exists, timeout=STARTUP, what="the block call to reach the server")
    (tmp_path / "refuse").touch()  # restarts fail until the file is gone
    os.kill(old_pid, signal.SIGKILL)

    with pytest.raises(ToolUnavailable) as lost:
        async with asyncio.timeout(STARTUP):
            await in_flight
    assert lost.value.may_have_run and lost.value.tool == "block"
    assert lost.value.retryable and isinstance(lost.value, InfrastructureError)
    assert "exited" in str(lost.value) and "restarts it" in str(lost.value)

    with pytest.raises(ToolUnavailable) as down:
        await demo.call("pid")
    assert not down.value.may_have_run
    assert down.value.retry_after is None or 0 <= down.value.retry_after <= RESTART_CAP

    (tmp_path / "refuse").unlink()
    new_pid = await wait_until(
        lambda: a_call_succeeds(demo, "pid", {}), timeout=STARTUP, what="the restarted server"
    )
    assert int(new_pid) != old_pid
    assert await demo.call("add", {"a": 2, "b": 2}) == "4"


async def test_an_http_server_killed_mid_call_fails_calls_fast_and_comes_back(
    http_process: HttpServerProcess, tmp_path: Path
) -> None:
    """The same over streamable HTTP: the killed server cuts the response stream of the call in
    flight (which the SDK alone would leave waiting); kernos reconnects once it is back."""
    async with McpServer.http("remote", http_process.url, startup_timeout=STARTUP) as server:
        assert "add" in by_name(await server.tools())
        old_pid = await server.call("pid")
        marker = tmp_path / "block-started"
        in_flight = asyncio.create_task(server.call("block", {"marker": str(marker)}))
        await wait_until(marker.exists, timeout=STARTUP, what="the block call to reach the server")
        await http_process.kill()

        with pytest.raises(ToolUnavailable) as lost:
            async with asyncio.timeout(STARTUP):
                await in_flight
        assert lost.value.may_have_run
        assert "reconnects" in str(lost.value)
        with pytest.raises(ToolUnavailable) as down:
            await server.call("add", {"a": 1, "b": 1})
        assert not down.value.may_have_run

        await http_process.start()
        new_pid = await wait_until(
            lambda: a_call_succeeds(server, "pid", {}), timeout=STARTUP, what="the reconnection"
        )
        assert new_pid != old_pid
        assert "late" not in by_name(await server.tools())


async def test_a_call_that_gets_no_answer_times_out(tmp_path: Path) -> None:
    async with stdio_server(tmp_path / "refuse", timeout=2.0) as server:
        await server.tools()  # started: the timeout is the call's, not the start's
        with pytest.raises(TimeoutError, match="did not answer within 2 s"):
            await server.call("block", {"marker": str(tmp_path / "m")})
        assert await server.call("add", {"a": 1, "b": 2}) == "3"  # the session is fine


async def test_a_server_that_cannot_start_is_unavailable() -> None:
    async with McpServer.stdio("ghost", "/nonexistent/mcp-server", startup_timeout=STARTUP) as s:
        with pytest.raises(ToolUnavailable, match="cannot be started"):
            await s.tools()


async def test_a_server_that_never_answers_the_handshake_is_unavailable() -> None:
    """An HTTP endpoint that accepts connections and says nothing: the start gives up after
    startup_timeout instead of leaving the call waiting."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # reads the request, answers nothing, until the client hangs up
        writer.close()

    listener = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    async with listener:
        async with McpServer.http("mute", f"http://127.0.0.1:{port}/mcp", startup_timeout=1) as s:
            with pytest.raises(ToolUnavailable, match="handshake within 1 s"):
                await s.call("add", {"a": 1, "b": 2})


async def test_aclose_stops_the_server_process_and_can_be_repeated(tmp_path: Path) -> None:
    server = stdio_server(tmp_path / "refuse")
    pid = await pid_of(server)
    marker = tmp_path / "block-started"
    in_flight = asyncio.create_task(server.call("block", {"marker": str(marker)}))
    await wait_until(marker.exists, timeout=STARTUP, what="the block call to reach the server")
    await server.aclose()
    assert not _alive(pid)
    with pytest.raises(UsageError, match="closed"):
        await in_flight
    await server.aclose()
    with pytest.raises(UsageError, match="closed"):
        await server.call("pid")
    await McpServer.http("never-used", "http://127.0.0.1:1/mcp").aclose()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_bad_arguments_in_code_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="name"):
        McpServer.stdio("no spaces", "python")
    with pytest.raises(UsageError, match="timeout must be positive"):
        McpServer.stdio("demo", "python", timeout=0)
    with pytest.raises(UsageError, match="args must be a list"):
        McpServer.stdio("demo", "python", "server.py")
    with pytest.raises(UsageError, match="http://"):
        McpServer.http("demo", "127.0.0.1:8931/mcp")


def test_tool_unavailable_says_what_happened_and_what_to_do() -> None:
    error = ToolUnavailable(
        "MCP server 'billing'", "the server process exited", tool="refund", retry_after=0.4
    )
    assert isinstance(error, InfrastructureError) and error.retryable
    assert error.retry_after == 0.4 and not error.may_have_run
    assert str(error) == (
        "tool 'refund' of MCP server 'billing' is unavailable: the server process exited; the "
        "call was not sent: retry it in 0.4 s"
    )
    sent = ToolUnavailable("MCP server 'billing'", "it exited", tool="refund", may_have_run=True)
    assert "may have run" in str(sent) and "idempotent" in str(sent)


@given(failures=st.integers(min_value=1, max_value=10_000), rand=st.floats(0, 1, exclude_max=True))
def test_restarts_back_off_exponentially_with_jitter_up_to_a_cap(
    failures: int, rand: float
) -> None:
    delay = restart_delay(failures, rand)
    ceiling = min(RESTART_CAP, RESTART_BASE * 2 ** min(failures - 1, 64))
    assert ceiling / 2 <= delay <= ceiling <= RESTART_CAP
    assert restart_delay(failures + 1, rand) >= delay


# -- kernos.toml --------------------------------------------------------------------------


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A working directory with no kernos.toml, and no KERNOS_CONFIG."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KERNOS_CONFIG", raising=False)
    yield tmp_path


async def test_a_server_from_kernos_toml(in_tmp: Path) -> None:
    """cwd is relative to the file's directory, and pass_env carries a variable from kernos's
    environment to the server (the rest of it is withheld)."""
    _write_demo_config(in_tmp)
    env = {"MCP_TEST_REFUSE": str(in_tmp / "refuse")}
    async with mcp_server("demo", env=env) as server:
        assert server.name == "demo" and server.timeout == 7.0
        assert await server.call("add", {"a": 20, "b": 22}) == "42"


def _write_demo_config(directory: Path) -> None:
    _write(
        directory / "kernos.toml",
        f"[mcp.servers.demo]\n"
        f"command = {sys.executable!r}\n"
        f'args = ["tools_server.py"]\n'
        f"cwd = {os.path.relpath(SERVERS, directory)!r}\n"
        f'pass_env = ["MCP_TEST_REFUSE"]\n'
        f"timeout = 7\n"
        f"startup_timeout = {STARTUP}\n",
    )


def test_an_http_server_from_the_file_kernos_config_names(tmp_path: Path) -> None:
    config = tmp_path / "elsewhere.toml"
    config.write_text(
        "[providers.local]\n"
        'base_url = "http://127.0.0.1:11434/v1"\n'
        "[mcp.servers.search]\n"
        'url = "http://127.0.0.1:8931/mcp"\n'
        'headers = { X-Tenant = "acme" }\n'
        'headers_env = { Authorization = "SEARCH_AUTH" }\n'
    )
    env = {"KERNOS_CONFIG": str(config), "SEARCH_AUTH": "Bearer s3cret"}
    settings = server_settings("search", env=env)
    assert settings.transport == HttpTransport(
        url="http://127.0.0.1:8931/mcp",
        headers={"X-Tenant": "acme", "Authorization": "Bearer s3cret"},
    )
    assert settings.timeout == 30.0
    stdio = server_settings(
        "s", path=_write(tmp_path / "k.toml", '[mcp.servers.s]\ncommand = "srv"'), env={}
    )
    assert stdio.transport == StdioTransport(command="srv", cwd=str(tmp_path))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("toml", "env", "expected"),
    [
        (None, {}, "no MCP server 'demo' is configured: there is no ./kernos.toml"),
        ('[mcp.servers.other]\ncommand = "x"', {}, "no MCP server 'demo' (configured: other)"),
        (
            '[mcp.servers.demo]\ncommand = "x"\nurl = "http://h/mcp"',
            {},
            "mcp.servers.demo: give either command",
        ),
        ("[mcp.servers.demo]\ntimeout = 5", {}, "give either command"),
        (
            '[mcp.servers.demo]\ncommand = "x"\ntimeout = -5',
            {},
            "mcp.servers.demo.timeout: must be a positive number, got -5",
        ),
        (
            '[mcp.servers.demo]\ncomand = "x"',
            {},
            "mcp.servers.demo.comand: unknown key (the keys of a server are: command, args",
        ),
        ('[mcp.server.demo]\ncommand = "x"', {}, "mcp.server: unknown key"),
        (
            '[mcp.servers.demo]\ncommand = "x"\nargs = "server.py"',
            {},
            "mcp.servers.demo.args: must be a list, got 'server.py'",
        ),
        (
            '[mcp.servers.demo]\nurl = "http://h/mcp"\nheaders = { Authorization = "Bearer x" }',
            {},
            "must not be written in the file",
        ),
        (
            '[mcp.servers.demo]\ncommand = "x"\nheaders = { X-A = "1" }',
            {},
            "headers cannot be set for a command (stdio) server",
        ),
        (
            '[mcp.servers.demo]\ncommand = "x"\npass_env = ["MISSING_VAR"]',
            {},
            "mcp.servers.demo.pass_env: the environment variable MISSING_VAR is not set",
        ),
        ('[mcp.servers.demo]\nurl = "ftp://h/mcp"', {}, "url must start with http://"),
        ("[mcp.servers.demo\n", {}, "not valid TOML"),
        (None, {"KERNOS_CONFIG": "/nonexistent/kernos.toml"}, "no such config file"),
    ],
)
def test_config_errors_say_what_to_fix(
    in_tmp: Path, toml: str | None, env: dict[str, str], expected: str
) -> None:
    if toml is not None:
        (in_tmp / "kernos.toml").write_text(toml)
    with pytest.raises(ConfigError) as caught:
        mcp_server("demo", env=env)
    assert expected in str(caught.value)
