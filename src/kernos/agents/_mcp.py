"""Tools from MCP servers (stdio and streamable HTTP), through the official ``mcp`` SDK.

An :class:`McpServer` is one server as this process sees it: built in code
(:meth:`McpServer.stdio`, :meth:`McpServer.http`) or from ``kernos.toml`` (:func:`mcp_server`),
it lists the server's tools as :class:`~kernos.agents.Tool` objects and calls them.

Guarantees, and why they take the shape they do:

- **One session per server, opened on first use and shared.** Starting a server process or an
  HTTP session per call would cost a process spawn or a handshake each time; concurrent calls
  share the one session (the protocol multiplexes requests by id). The SDK's session is an
  anyio context that must be entered and left by one task, so a background task per server
  (the *owner*) holds it for its whole life; calls are sent from the callers' own tasks.
- **A dead server fails calls fast and comes back by itself.** When the server process exits
  or the HTTP connection breaks, every call in flight and every new call raises
  :class:`~kernos.errors.ToolUnavailable` (retryable; ``may_have_run`` says whether the call had
  been sent), while the owner restarts the server, or reconnects, with exponential backoff
  (0.2 s doubling to 10 s, jittered). Once it is back, calls succeed again: the caller only
  retries. A call made while a (re)start is under way waits for its outcome.
- **No call hangs.** Each call and each listing is bounded by the server's ``timeout``
  (``TimeoutError``), the start and handshake by ``startup_timeout``. The SDK does not notice
  every broken connection (a response stream cut by a killed HTTP server ends quietly), so
  kernos watches underneath it: the end of a stdio server's output, and every broken HTTP
  connection, mark the session lost at once.
- **Tool lists are cached** per server, and listed again after the server announces a change
  (``notifications/tools/list_changed``) or after a reconnection.

A tool's result is text for the model: the text items of the MCP result joined; a result with
no text but ``structuredContent`` returns that dict. A result flagged ``isError`` raises
:class:`McpToolError` whose message is the server's own text.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import TracebackType
from typing import Any, Final, TypeVar

import anyio
import httpx
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from jsonschema import (  # type: ignore[import-untyped,unused-ignore]
    Draft202012Validator,
    SchemaError,
    ValidationError,
    validators,
)
from mcp import ClientSession, types
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import McpError
from mcp.shared.message import SessionMessage
from mcp.shared.session import RequestResponder

from kernos.agents._mcp_config import (
    DEFAULT_TIMEOUT,
    HttpTransport,
    ServerSettings,
    StdioTransport,
    Transport,
    server_settings,
)
from kernos.agents._tools import Tool, ToolArgumentsInvalid
from kernos.errors import ToolUnavailable, UsageError

__all__ = ["McpServer", "McpToolError", "mcp_server", "restart_delay"]

log = logging.getLogger("kernos.mcp")

_T = TypeVar("_T")
_Read = MemoryObjectReceiveStream[SessionMessage | Exception]
_Write = MemoryObjectSendStream[SessionMessage]
_Incoming = (
    RequestResponder[types.ServerRequest, types.ClientResult] | types.ServerNotification | Exception
)

#: the first restart waits up to this long (seconds), doubling per failure...
RESTART_BASE: Final = 0.2
#: ...up to this
RESTART_CAP: Final = 10.0
#: a session that stayed up this long (seconds) resets the backoff
STABLE_AFTER: Final = 10.0
#: what the SDK's HTTP client answers for a 404 (the server does not know the session: it
#: restarted, or expired the session)
_SESSION_TERMINATED: Final = 32600
#: the SDK's own defaults: a server may hold a response stream open for long
_HTTP_TIMEOUT: Final = httpx.Timeout(30.0, read=300.0)
_GOODBYE_TIMEOUT: Final = httpx.Timeout(5.0)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_MAX_PROBLEMS = 10


def _client_info() -> types.Implementation:
    try:
        return types.Implementation(name="kernos", version=version("kernos"))
    except PackageNotFoundError:  # running from a source tree that was never installed
        return types.Implementation(name="kernos", version="0")


class McpToolError(Exception):
    """An MCP tool failed (its result is flagged ``isError``) or the server refused the call.

    ``str()`` is the server's own text: it goes back to the model, which may fix its call.
    """


def restart_delay(failures: int, rand: float) -> float:
    """Seconds to wait before restarting a server after ``failures`` (>= 1) failures in a row.

    The ceiling doubles from :data:`RESTART_BASE` up to :data:`RESTART_CAP`; the delay is
    between half the ceiling and the ceiling (``rand`` uniform in [0, 1)), so that servers that
    failed together do not all restart at the same moment, yet none restarts at once.
    """
    ceiling = min(RESTART_CAP, RESTART_BASE * 2.0 ** min(max(failures, 1) - 1, 64))
    return ceiling * (0.5 + rand / 2)


@dataclass(eq=False)
class _Connection:
    """One live session; ``lost`` is resolved (with the reason) the moment it is unusable."""

    session: ClientSession
    lost: asyncio.Future[str]
    since: float


class _Lost(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _settle(lost: asyncio.Future[str], reason: str) -> None:
    """Mark a session lost (the first reason wins)."""
    if not lost.done():
        lost.set_result(reason)


async def _unless_lost(work: Coroutine[Any, Any, _T], lost: asyncio.Future[str]) -> _T:
    """Await ``work``, but raise ``_Lost`` as soon as the session is lost: a caller waiting on a
    response that a dead server will never send must not wait for its timeout."""
    task = asyncio.ensure_future(work)
    try:
        await asyncio.wait((task, lost), return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
    if task.done() and not task.cancelled():
        return task.result()
    raise _Lost(lost.result() if lost.done() else "the call was cancelled")


class McpServer:
    """An MCP server's tools, through one long-lived session per server (see the module's
    docstring for the guarantees).

    Build one per server and per process and share it: each instance owns its own session
    (and, for stdio, its own server process). It belongs to the event loop that first uses it
    and, once that loop has ended, to the next one (a module-level server survives a test's
    loop, or one ``asyncio.run`` after another).
    Close it with :meth:`aclose` (or ``async with``), which also stops a stdio server.
    """

    def __init__(self, settings: ServerSettings) -> None:
        """Prefer :meth:`stdio`, :meth:`http` or :func:`mcp_server`."""
        self._settings = settings
        self._loop: asyncio.AbstractEventLoop | None = None
        self._owner: asyncio.Task[None] | None = None
        self._closing: asyncio.Future[None] | None = None
        #: the outcome of the (re)start under way, or of the last one: a _Connection or why not
        self._attempt: asyncio.Future[_Connection | str] | None = None
        self._connection: _Connection | None = None
        self._down_reason = "it has not started yet"
        #: loop time of the next restart while backing off
        self._retry_at: float | None = None
        self._closed = False
        #: bumped by every new session and every list_changed notification
        self._generation = 0
        self._listed: list[Tool] | None = None
        self._listed_at = -1
        self._listing = asyncio.Lock()

    @classmethod
    def stdio(
        cls,
        name: str,
        command: str,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        startup_timeout: float = DEFAULT_TIMEOUT,
    ) -> McpServer:
        """A server that kernos starts as a child process (``command`` with ``args``) and talks to
        over its stdin and stdout.

        The process gets the SDK's minimal environment (PATH, HOME, ...) plus ``env``, not
        kernos's own: pass on what the server needs, secrets included, through ``env``. It is
        started on first use, restarted when it dies, and stopped by :meth:`aclose`.
        """
        _check(name, timeout, startup_timeout)
        if isinstance(args, str):
            raise UsageError(f"MCP server {name!r}: args must be a list of strings, not a string")
        transport = StdioTransport(
            command=command,
            args=tuple(args),
            env=dict(env) if env is not None else None,
            cwd=str(cwd) if cwd is not None else None,
        )
        return cls(
            ServerSettings(
                name=name, transport=transport, timeout=timeout, startup_timeout=startup_timeout
            )
        )

    @classmethod
    def http(
        cls,
        name: str,
        url: str,
        headers: Mapping[str, str] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        startup_timeout: float = DEFAULT_TIMEOUT,
    ) -> McpServer:
        """A running server reached over streamable HTTP at ``url`` (e.g.
        ``http://127.0.0.1:8931/mcp``), with ``headers`` on every request."""
        _check(name, timeout, startup_timeout)
        if not url.startswith(("http://", "https://")):
            raise UsageError(
                f"MCP server {name!r}: url must start with http:// or https://, got {url!r}"
            )
        transport = HttpTransport(url=url, headers=dict(headers or {}))
        return cls(
            ServerSettings(
                name=name, transport=transport, timeout=timeout, startup_timeout=startup_timeout
            )
        )

    @property
    def name(self) -> str:
        return self._settings.name

    @property
    def timeout(self) -> float:
        """Seconds one call may take."""
        return self._settings.timeout

    def __repr__(self) -> str:
        return f"McpServer({self.name!r}, {self._settings.transport.describe()!r})"

    async def __aenter__(self) -> McpServer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def tools(self) -> list[Tool]:
        """The server's tools, as listed once per session and again after the server announces
        a change. While the server is down, the last list it gave (its calls raise
        ``ToolUnavailable`` until it is back); ``ToolUnavailable`` if it never gave one."""
        async with self._listing:
            if self._listed is not None and self._listed_at == self._generation:
                return list(self._listed)
            try:
                connection = await self._connected(None)
            except ToolUnavailable:
                if self._listed is None:
                    raise
                return list(self._listed)
            generation = self._generation
            listed = await self._list(connection)
            self._listed = [self._as_tool(spec) for spec in listed]
            self._listed_at = generation
            return list(self._listed)

    async def call(
        self, tool: str, arguments: Mapping[str, Any] | None = None
    ) -> str | dict[str, Any]:
        """Call ``tool`` with ``arguments`` (not checked here: :meth:`Tool.invoke` checks them
        against the tool's schema) and return its result for the model: text, or a dict when
        the result is structured content only.

        Raises ``McpToolError`` (the tool failed: the server's text), ``ToolUnavailable`` (the
        server is down or the session broke: retryable) or ``TimeoutError`` (no answer within
        the server's ``timeout``).
        """
        connection = await self._connected(tool)
        request = connection.session.call_tool(tool, dict(arguments or {}))
        try:
            async with asyncio.timeout(self.timeout):
                result = await _unless_lost(request, connection.lost)
        except TimeoutError:
            raise TimeoutError(
                f"tool {tool!r} of MCP server {self.name!r} did not answer within "
                f"{self.timeout:g} s (raise the server's timeout if the tool is that slow)"
            ) from None
        except Exception as exc:
            failure = self._failure(exc, connection, tool)
            if failure is None:
                raise
            raise failure from exc
        return _for_the_model(result)

    async def aclose(self) -> None:
        """End the session and stop a stdio server (its stdin is closed, then it is terminated
        if it does not exit). Safe to call more than once; the server is unusable afterwards."""
        self._closed = True
        owner = self._owner
        if owner is None:
            return
        if self._closing is not None and not self._closing.done():
            self._closing.set_result(None)
        if self._attempt is not None and not self._attempt.done():
            owner.cancel()  # a (re)start under way has no session to close gracefully yet
        await asyncio.wait((owner,))
        if not owner.cancelled() and owner.exception() is not None:
            log.error(
                "MCP server %r: its session ended with an error",
                self.name,
                exc_info=owner.exception(),
            )

    # -- the owner: one background task that holds the session ---------------------------

    def _closed_error(self) -> UsageError:
        return UsageError(
            f"MCP server {self.name!r} was closed (aclose()); build a new McpServer to use it again"
        )

    def _start(self) -> None:
        if self._closed:
            raise self._closed_error()
        loop = asyncio.get_running_loop()
        if self._owner is not None and self._loop is not loop and self._loop is not None:
            if not self._loop.is_closed():
                raise UsageError(
                    f"MCP server {self.name!r} is used from another event loop than the one "
                    f"it runs on, which is still running: build one McpServer per event loop"
                )
            # The loop it ran on has ended (an asyncio.run that returned, a test's loop):
            # its session went with it. Start afresh on this loop; its process, its pipes
            # closed, exits on its own.
            self._owner = None
            self._connection = None
            self._attempt = None
            self._closing = None
            self._listing = asyncio.Lock()
            self._generation += 1
        if self._owner is None:
            self._loop = loop
            self._closing = loop.create_future()
            self._attempt = loop.create_future()
            self._owner = loop.create_task(
                self._keep_connected(self._attempt), name=f"kernos-mcp-{self.name}"
            )

    async def _keep_connected(self, attempt: asyncio.Future[_Connection | str]) -> None:
        """Hold a session until closed: (re)start the server whenever it goes away."""
        loop = asyncio.get_running_loop()
        assert self._closing is not None
        failures = 0
        try:
            while True:
                lost: asyncio.Future[str] = loop.create_future()
                try:
                    await self._serve(attempt, lost)
                except Exception as exc:  # whatever broke it, the server is down: say why
                    _settle(lost, _why(exc))
                reason = lost.result()
                if not attempt.done():
                    attempt.set_result(reason)
                if self._closing.done():
                    return
                outcome = attempt.result()
                lasted = loop.time() - outcome.since if isinstance(outcome, _Connection) else 0.0
                failures = 1 if lasted >= STABLE_AFTER else failures + 1
                delay = restart_delay(failures, random.random())
                self._down_reason = reason
                self._retry_at = loop.time() + delay
                log.warning(
                    "MCP server %r is down (%s); next attempt in %.1f s", self.name, reason, delay
                )
                await asyncio.wait((self._closing,), timeout=delay)
                if self._closing.done():
                    return
                self._retry_at = None
                attempt = loop.create_future()
                self._attempt = attempt
        finally:
            if not attempt.done():
                attempt.set_result("the server was closed")

    async def _serve(
        self, attempt: asyncio.Future[_Connection | str], lost: asyncio.Future[str]
    ) -> None:
        """Start a session, publish it, and hold it until it is lost or the server closed."""
        assert self._closing is not None
        loop = asyncio.get_running_loop()

        def release(done: asyncio.Future[str]) -> None:
            if not attempt.done():
                attempt.set_result(done.result())

        # calls waiting for this start learn that it failed at once, not after the teardown
        lost.add_done_callback(release)
        async with AsyncExitStack() as stack:
            read, write = await stack.enter_async_context(_open(self._settings.transport, lost))
            session = await stack.enter_async_context(
                ClientSession(
                    read, write, message_handler=self._on_message, client_info=_client_info()
                )
            )
            try:
                async with asyncio.timeout(self._settings.startup_timeout):
                    await _unless_lost(session.initialize(), lost)
            except TimeoutError:
                _settle(
                    lost,
                    f"it did not complete the MCP handshake within "
                    f"{self._settings.startup_timeout:g} s",
                )
                return
            except McpError as exc:  # e.g. no protocol version in common
                _settle(lost, _why(exc))
                return
            except _Lost:
                return
            connection = _Connection(session=session, lost=lost, since=loop.time())
            self._connection = connection
            self._generation += 1  # a new session may serve other tools: list them again
            attempt.set_result(connection)
            log.info("MCP server %r is up (%s)", self.name, self._settings.transport.describe())
            try:
                await asyncio.wait((lost, self._closing), return_when=asyncio.FIRST_COMPLETED)
            except BaseException:
                _settle(lost, "the session was cancelled")
                raise
            finally:
                self._connection = None
        # settled only now, after a graceful close has said goodbye to the server
        _settle(lost, "the server was closed")

    async def _on_message(self, message: _Incoming) -> None:
        if isinstance(message, types.ServerNotification):
            if isinstance(message.root, types.ToolListChangedNotification):
                self._generation += 1
        elif isinstance(message, Exception):
            # e.g. a late answer to a call that timed out, or a line that is not JSON-RPC
            log.debug("MCP server %r: %s", self.name, message)

    # -- calls -------------------------------------------------------------------------

    async def _connected(self, tool: str | None) -> _Connection:
        """The live session; waits for a (re)start under way, fails fast while backing off."""
        self._start()
        attempt = self._attempt
        if attempt is not None and not attempt.done():
            await asyncio.shield(attempt)  # a caller giving up must not cancel it for others
        connection = self._connection
        if connection is not None and not connection.lost.done():
            return connection
        if self._closed:
            raise self._closed_error()
        outcome = attempt.result() if attempt is not None and attempt.done() else None
        if isinstance(outcome, str):
            reason = outcome
        elif isinstance(outcome, _Connection) and outcome.lost.done():
            reason = outcome.lost.result()
        else:
            reason = self._down_reason
        raise self._unavailable(reason, tool=tool)

    async def _list(self, connection: _Connection) -> list[types.Tool]:
        capabilities = connection.session.get_server_capabilities()
        if capabilities is not None and capabilities.tools is None:
            return []  # a server without tools (only resources or prompts)
        found: list[types.Tool] = []
        cursor: str | None = None
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
                    page = await _unless_lost(
                        connection.session.list_tools(params=params), connection.lost
                    )
                    found.extend(page.tools)
                    if not page.nextCursor:
                        return found
                    cursor = page.nextCursor
        except TimeoutError:
            raise TimeoutError(
                f"MCP server {self.name!r} did not list its tools within {self.timeout:g} s"
            ) from None
        except Exception as exc:
            failure = self._failure(exc, connection, None)
            if failure is None:
                raise
            raise failure from exc

    def _failure(
        self, exc: Exception, connection: _Connection, tool: str | None
    ) -> Exception | None:
        """The kernos error for what a request raised (None: raise it as it is)."""
        if self._closed:
            return self._closed_error()
        if isinstance(exc, _Lost):
            return self._unavailable(exc.reason, tool=tool, may_have_run=True)
        if isinstance(exc, anyio.ClosedResourceError | anyio.BrokenResourceError):
            _settle(connection.lost, "the session with the server has ended")
            return self._unavailable(connection.lost.result(), tool=tool)
        if not isinstance(exc, McpError):
            if connection.lost.done():
                return self._unavailable(connection.lost.result(), tool=tool, may_have_run=True)
            return None
        if exc.error.code == types.CONNECTION_CLOSED or connection.lost.done():
            _settle(connection.lost, "the connection to the server was closed")
            return self._unavailable(connection.lost.result(), tool=tool, may_have_run=True)
        if exc.error.code == _SESSION_TERMINATED:
            _settle(connection.lost, "the server does not know this session (it restarted)")
            return self._unavailable(connection.lost.result(), tool=tool)
        if tool is None:
            return self._unavailable(f"it failed to list its tools: {exc.error.message}", tool=None)
        return McpToolError(exc.error.message)

    def _unavailable(
        self, reason: str, *, tool: str | None, may_have_run: bool = False
    ) -> ToolUnavailable:
        retry_after = None
        if self._retry_at is not None and self._loop is not None:
            retry_after = max(0.0, self._retry_at - self._loop.time())
        again = (
            "kernos restarts it in the background"
            if isinstance(self._settings.transport, StdioTransport)
            else "kernos reconnects in the background"
        )
        return ToolUnavailable(
            f"MCP server {self.name!r}",
            f"{reason} ({again})",
            tool=tool,
            retry_after=retry_after,
            may_have_run=may_have_run,
        )

    def _as_tool(self, spec: types.Tool) -> Tool:
        name = spec.name
        hints = spec.annotations
        idempotent = bool(hints and (hints.idempotentHint or hints.readOnlyHint))

        async def call(**arguments: Any) -> str | dict[str, Any]:
            return await self.call(name, arguments)

        call.__name__ = name
        schema = dict(spec.inputSchema)
        return Tool(
            name=name,
            description=spec.description or spec.title or "",
            fn=call,
            parameters=schema,
            idempotent=idempotent,
            timeout=self.timeout,
            check=_checker(name, schema),
        )


def mcp_server(
    name: str, *, path: str | Path | None = None, env: Mapping[str, str] = os.environ
) -> McpServer:
    """The server ``[mcp.servers.NAME]`` of ``kernos.toml`` (or ``path``, or the file
    ``KERNOS_CONFIG`` names) describes; ``ConfigError`` saying what to fix.

    ``env`` (default: this process's environment) supplies the variables the table names in
    ``pass_env`` and ``headers_env``, and ``KERNOS_CONFIG``. Each call builds a new server with
    its own session: build it once and share it.
    """
    return McpServer(server_settings(name, path=path, env=env))


def _check(name: str, timeout: float, startup_timeout: float) -> None:
    if not _NAME.fullmatch(name):
        raise UsageError(
            f"MCP server name {name!r} is not allowed: use letters, digits, '_', '.' and '-'"
        )
    for key, value in (("timeout", timeout), ("startup_timeout", startup_timeout)):
        if not value > 0:
            raise UsageError(f"MCP server {name!r}: {key} must be positive, not {value}")


# -- transports ---------------------------------------------------------------------------


@asynccontextmanager
async def _open(
    transport: Transport, lost: asyncio.Future[str]
) -> AsyncIterator[tuple[_Read, _Write]]:
    """The SDK's transport for ``transport``, watched so that its death settles ``lost``."""
    if isinstance(transport, StdioTransport):
        params = StdioServerParameters(
            command=transport.command,
            args=list(transport.args),
            env=dict(transport.env) if transport.env is not None else None,
            cwd=transport.cwd,
        )
        async with stdio_client(params) as (read, write):
            async with _until_eof(read, lost, "the server process exited") as watched:
                yield watched, write
        return
    client = httpx.AsyncClient(
        headers=dict(transport.headers),
        timeout=_HTTP_TIMEOUT,
        transport=_Watchdog(lost, transport.url),
    )
    async with client, streamable_http_client(transport.url, http_client=client) as streams:
        read, write, _ = streams
        async with _until_eof(read, lost, "the connection to the server was closed") as watched:
            yield watched, write


@asynccontextmanager
async def _until_eof(read: _Read, lost: asyncio.Future[str], reason: str) -> AsyncIterator[_Read]:
    """``read`` passed through to the session, settling ``lost`` when it ends.

    Settled before the session hears of the end, so calls in flight fail as ``ToolUnavailable``
    with the reason; the SDK itself would answer them "connection closed", or (when its task
    group is torn down first) never.
    """
    sender, receiver = anyio.create_memory_object_stream[SessionMessage | Exception](0)

    async def pump() -> None:
        with sender:
            try:
                async for message in read:
                    await sender.send(message)
            except anyio.BrokenResourceError:
                return  # the session stopped reading: it is being closed and says why itself
            except anyio.ClosedResourceError:
                pass  # the transport closed its end under us: gone, like an end of stream
            _settle(lost, reason)

    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(pump)
            try:
                yield receiver
            finally:
                tasks.cancel_scope.cancel()
    finally:
        # the session closes the stream it reads; the transport's own is ours to close now
        for stream in (read, sender, receiver):
            stream.close()


class _Watchdog(httpx.AsyncBaseTransport):
    """An HTTP transport that settles ``lost`` when the connection to the server breaks.

    The SDK's HTTP client swallows a response stream that breaks (a killed server's SSE stream
    ends quietly, and the call waiting on it would wait for its timeout), so the break is seen
    here, underneath it. Once the connection broke, requests fail at once instead of waiting
    for a connection that will not come (the goodbye ``DELETE`` included). A read timeout is not
    a break: an idle notification stream times out that way.
    """

    def __init__(self, lost: asyncio.Future[str], url: str) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self._lost = lost
        self._url = url
        self._broke: str | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._broke is not None:
            raise httpx.ConnectError(f"not sent: {self._broke}", request=request)
        if request.method == "DELETE":  # the goodbye: a hung server must not hold up a restart
            request.extensions["timeout"] = _GOODBYE_TIMEOUT.as_dict()
        try:
            response = await self._inner.handle_async_request(request)
        except httpx.TransportError as exc:
            self._broken(exc)
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _WatchedStream(response.stream, self._broken)
        return response

    def _broken(self, exc: httpx.TransportError) -> None:
        if isinstance(exc, httpx.ReadTimeout | httpx.PoolTimeout):
            return
        detail = str(exc) or type(exc).__name__
        self._broke = f"the connection to {self._url} broke ({detail})"
        _settle(self._lost, self._broke)

    async def aclose(self) -> None:
        await self._inner.aclose()


class _WatchedStream(httpx.AsyncByteStream):
    def __init__(
        self, inner: httpx.AsyncByteStream, broken: Callable[[httpx.TransportError], None]
    ) -> None:
        self._inner = inner
        self._broken = broken

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except httpx.TransportError as exc:
            self._broken(exc)
            raise

    async def aclose(self) -> None:
        await self._inner.aclose()


# -- results and arguments ----------------------------------------------------------------


def _for_the_model(result: types.CallToolResult) -> str | dict[str, Any]:
    """The result as the model reads it; ``McpToolError`` when the tool says it failed."""
    parts: list[str] = []
    has_text = False
    for item in result.content:
        if isinstance(item, types.TextContent):
            has_text = True
            parts.append(item.text)
        elif isinstance(item, types.EmbeddedResource):
            resource = item.resource
            if isinstance(resource, types.TextResourceContents):
                has_text = True
                parts.append(resource.text)
            else:
                parts.append(f"[resource {resource.uri} ({resource.mimeType or 'binary'})]")
        elif isinstance(item, types.ResourceLink):
            parts.append(f"[resource {item.uri}]")
        else:  # image, audio: the model cannot read base64 as text
            parts.append(f"[{item.type} ({item.mimeType})]")
    if result.isError:
        raise McpToolError("\n".join(parts) or "the tool failed and gave no reason")
    if not has_text and result.structuredContent is not None:
        return dict(result.structuredContent)
    return "\n".join(parts)


def _checker(
    name: str, schema: dict[str, Any]
) -> Callable[[Mapping[str, Any]], dict[str, Any]] | None:
    """A check of the model's arguments against the server's JSON schema (None: a schema that
    is not valid JSON Schema, so the server alone judges the arguments)."""
    validator_class = validators.validator_for(schema, default=Draft202012Validator)
    try:
        validator_class.check_schema(schema)
    except SchemaError as exc:
        log.warning(
            "MCP tool %r: its input schema is not valid JSON Schema (%s); its arguments go to "
            "the server unchecked",
            name,
            exc.message,
        )
        return None
    validator = validator_class(schema)

    def check(arguments: Mapping[str, Any]) -> dict[str, Any]:
        given = dict(arguments)
        errors: list[ValidationError] = list(validator.iter_errors(given))
        if errors:
            raise ToolArgumentsInvalid(_problems(name, errors))
        return given

    return check


def _problems(name: str, errors: list[ValidationError]) -> str:
    """Validation errors as short lines the model can act on (as for Python tools)."""
    problems: list[str] = []
    for error in errors:
        path = [str(part) for part in error.absolute_path]
        if error.validator == "required" and isinstance(error.instance, dict):
            required = error.validator_value if isinstance(error.validator_value, list) else []
            missing = [p for p in required if p not in error.instance]
            problems.extend(f"'{'.'.join([*path, p])}' is required" for p in missing)
        elif error.validator == "additionalProperties" and isinstance(error.instance, dict):
            known = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
            extra = [key for key in error.instance if key not in known]
            problems.extend(
                f"'{'.'.join([*path, key])}' is not a parameter of {name}" for key in extra
            )
        else:
            where = ".".join(path) or "arguments"
            message = error.message if len(error.message) <= 200 else error.message[:197] + "..."
            problems.append(f"'{where}': {message}")
    shown = problems[:_MAX_PROBLEMS]
    more = f" (and {len(problems) - _MAX_PROBLEMS} more)" if len(problems) > _MAX_PROBLEMS else ""
    return f"invalid arguments for {name}: " + "; ".join(shown) + more


def _why(exc: BaseException) -> str:
    """A one-line reason for a failure to start or keep a session, from the first real error
    inside the SDK's exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, FileNotFoundError | PermissionError):
        return f"it cannot be started: {exc.strerror or exc}: {exc.filename!r}"
    if isinstance(exc, McpError):
        return f"the MCP handshake failed: {exc.error.message}"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
