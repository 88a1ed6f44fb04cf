"""The simulator's HTTP face: provider endpoints per name, and a JSON control endpoint.

    POST /<provider>/v1/chat/completions      OpenAI Chat Completions (SDK base_url .../<provider>/v1)
    POST /<provider>/v1/messages              Anthropic Messages (SDK base_url .../<provider>)
    GET  /<provider>/v1/models                a model list in the caller's family
    GET|PUT|POST|DELETE /_sim/providers/<provider>/faults
    GET|POST|DELETE     /_sim/providers/<provider>/script
    GET  /_sim/log?provider=&since=           the request log
    GET  /_sim/providers                      names used so far
    POST /_sim/reset                          forget everything (optional {"seed": N})
    GET  /_sim/health

A request for a model named ``loop-N`` that no scripted reply matches is answered by the
tool-loop responder (``_loop``): N turns of a tool-calling conversation, decided from the
request alone, so that any number of conversations can run at once. A request for the model
``plan`` plays the plan its conversation carries (``[sim-plan] [...]``, also in ``_loop``).

The request path is kept lean (one lock round trip to decide, one to log, no logging I/O): the
gateway's benchmark measures its own overhead against calls made straight to this server.

Dropping a connection without a response has no ASGI message, so the app keeps the server's
transport (uvicorn's, found through its ``send``) in the scope and aborts it: the client sees
the socket close, exactly as when a proxy dies.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, get_args

from pydantic import TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, Router
from starlette.types import Receive, Scope, Send

from kernos.errors import InvalidInput
from kernos.sim._anthropic import AnthropicWire
from kernos.sim._faults import Fault, one_line
from kernos.sim._loop import PLAN_MODEL, loop_reply, loop_turns, plan_reply
from kernos.sim._openai import OpenAIWire
from kernos.sim._script import Reply
from kernos.sim._simulator import LogEntry, Outcome, Simulator
from kernos.sim._wire import (
    Completion,
    ErrorKind,
    Frames,
    ParsedRequest,
    Wire,
    WireError,
    compose,
)

__all__ = ["SimApp"]

_TRANSPORT = "kernos.sim.transport"
_ERROR_KINDS: dict[str, ErrorKind] = {k: k for k in get_args(ErrorKind)}
_HANG = 600.0
_SLOW = 1.0
_MALFORMED = b"<html><body><h1>502 Bad Gateway</h1><p>upstream sent garbage</p></body></html>"
_FAULTS = TypeAdapter(list[Fault])
_REPLIES = TypeAdapter(list[Reply])

Plan = tuple[int | None, Response, float]


class SimApp:
    """The ASGI application over one ``Simulator``.

    ``closing`` (set on the server's loop) releases every held request at once, so that a
    server with hung requests still stops promptly.
    """

    def __init__(self, simulator: Simulator) -> None:
        self.simulator = simulator
        self.closing = asyncio.Event()
        self._openai = OpenAIWire()
        self._anthropic = AnthropicWire()
        self._router = Router(
            routes=[
                Route("/_sim/health", self._health, methods=["GET"]),
                Route("/_sim/providers", self._providers, methods=["GET"]),
                Route(
                    "/_sim/providers/{provider}/faults",
                    _control(self._faults),
                    methods=["GET", "PUT", "POST", "DELETE"],
                ),
                Route(
                    "/_sim/providers/{provider}/script",
                    _control(self._script),
                    methods=["GET", "POST", "DELETE"],
                ),
                Route("/_sim/log", _control(self._log), methods=["GET"]),
                Route("/_sim/reset", _control(self._reset), methods=["POST"]),
                Route("/{provider}/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/{provider}/v1/messages", self._messages, methods=["POST"]),
                Route("/{provider}/v1/models", self._models, methods=["GET"]),
            ]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[_TRANSPORT] = getattr(getattr(send, "__self__", None), "transport", None)
        await self._router(scope, receive, send)

    async def pause(self, seconds: float, receive: Receive) -> bool:
        """Wait ``seconds``; False if the client left or the simulator began closing first."""
        if self.closing.is_set():
            return False
        waiters = {
            asyncio.ensure_future(self.closing.wait()),
            asyncio.ensure_future(_client_gone(receive)),
        }
        try:
            done, _ = await asyncio.wait(
                waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in waiters:
                waiter.cancel()
        return not done

    # -- provider endpoints -------------------------------------------------------------------

    async def _chat(self, request: Request) -> Response:
        return await self._complete(request, self._openai)

    async def _messages(self, request: Request) -> Response:
        return await self._complete(request, self._anthropic)

    async def _complete(self, request: Request, wire: Wire) -> Response:
        arrived, wall = time.monotonic(), time.time()
        provider: str = request.path_params["provider"]
        headers = {
            k: v
            for k, v in request.headers.items()
            if k == "idempotency-key" or k.startswith("x-kernos-")
        }
        raw = await request.body()
        body: Any = None
        try:
            body = json.loads(raw)
            parsed = wire.parse(body)
        except (ValueError, WireError) as exc:
            return self._reject(wire, provider, body, exc, headers, arrived, wall)
        outcome = self.simulator.decide(provider, parsed.model, parsed.stream)
        if outcome.reply is None and (turns := loop_turns(parsed.model)) is not None:
            reply = loop_reply(turns, wire.tools(body), wire.tool_results(body), parsed.prompt)
            outcome = dataclasses.replace(outcome, reply=reply)
        elif outcome.reply is None and parsed.model == PLAN_MODEL:
            reply = plan_reply(body.get("messages"), wire.tool_results(body))
            outcome = dataclasses.replace(outcome, reply=reply)
        status, response, pause = self._plan(wire, parsed, outcome)
        self.simulator.record(
            LogEntry.model_construct(
                seq=outcome.seq,
                provider=provider,
                family=wire.family,
                model=parsed.model,
                stream=parsed.stream,
                fault=outcome.kind,
                status=status,
                arrived_monotonic=arrived,
                arrived_wall=wall,
                headers=headers,
                request=body,
            )
        )
        if pause and not await self.pause(pause, request.receive):
            return _Drop()
        return response

    def _reject(
        self,
        wire: Wire,
        provider: str,
        body: Any,
        exc: Exception,
        headers: dict[str, str],
        arrived: float,
        wall: float,
    ) -> Response:
        seq = self.simulator.next_seq()
        model = body.get("model") if isinstance(body, dict) else None
        message = exc.message if isinstance(exc, WireError) else f"Invalid JSON body: {exc}"
        request = ParsedRequest(str(model or ""), False, None, "", 0)
        status, content = wire.error("bad_request", request, message, _request_id(seq))
        self.simulator.record(
            LogEntry.model_construct(
                seq=seq,
                provider=provider,
                family=wire.family,
                model=model if isinstance(model, str) else None,
                stream=isinstance(body, dict) and body.get("stream") is True,
                fault=None,
                status=status,
                arrived_monotonic=arrived,
                arrived_wall=wall,
                headers=headers,
                request=body if isinstance(body, dict) else {},
            )
        )
        return _json(status, content, {wire.request_id_header: _request_id(seq)})

    def _plan(self, wire: Wire, parsed: ParsedRequest, outcome: Outcome) -> Plan:
        """The response for a decided request, its status for the log, and the wait before it."""
        kind, fault = outcome.kind, outcome.fault
        request_id = _request_id(outcome.seq)
        id_header = {wire.request_id_header: request_id}

        def frames() -> Frames:
            return wire.frames(completion(), parsed)

        def completion() -> Completion:
            return compose(outcome.reply, parsed, ids=wire.ids(outcome.seq), kind=kind)

        if kind is None or kind in ("slow", "content_filter"):
            delay = 0.0
            if kind == "slow":
                delay = fault.delay if fault and fault.delay is not None else _SLOW
            if parsed.stream:
                f = frames()
                return 200, _EventStream(self, [*f.head, *f.body, *f.tail], id_header), delay
            return 200, _json(200, wire.completion(completion()), id_header), delay
        assert fault is not None
        after = fault.after
        error = _ERROR_KINDS.get(kind)
        if error is not None:
            if parsed.stream and after is not None:
                f = frames()
                sent = [*f.head, *f.body[:after], wire.stream_error(error, parsed, fault.message)]
                return 200, _EventStream(self, sent, id_header), 0.0
            status, content = wire.error(error, parsed, fault.message, request_id)
            return status, _json(status, content, {**id_header, **_retry_headers(fault)}), 0.0
        if kind == "malformed":
            if parsed.stream:
                sent = [*frames().head, wire.malformed_frame()]
                return 200, _EventStream(self, sent, id_header), 0.0
            return 200, _json(200, _MALFORMED, id_header), 0.0
        if kind == "truncate":
            if parsed.stream:
                f = frames()
                cut = len(f.body) // 2 if after is None else after
                return 200, _EventStream(self, [*f.head, *f.body[:cut]], id_header), 0.0
            content = wire.completion(completion())
            return 200, _json(200, content[: len(content) // 2], id_header), 0.0
        hold = (fault.delay if fault.delay is not None else _HANG) if kind == "hang" else 0.0
        if parsed.stream and after is not None:
            f = frames()
            sent = [*f.head, *f.body[:after]]
            return 200, _EventStream(self, sent, id_header, ending="drop", stall=hold), 0.0
        return None, _Drop(), hold

    async def _models(self, request: Request) -> Response:
        provider: str = request.path_params["provider"]
        seen = sorted({e.model for e in self.simulator.log(provider) if e.model} | {"sim-1"})
        if "anthropic-version" in request.headers:
            data: list[dict[str, Any]] = [
                {
                    "type": "model",
                    "id": m,
                    "display_name": m,
                    "created_at": "2025-01-01T00:00:00Z",
                }
                for m in seen
            ]
            return JSONResponse(
                {"data": data, "has_more": False, "first_id": seen[0], "last_id": seen[-1]}
            )
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "kernos-sim"} for m in seen]
        return JSONResponse({"object": "list", "data": data})

    # -- control endpoint ---------------------------------------------------------------------

    async def _health(self, request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def _providers(self, request: Request) -> Response:
        return JSONResponse({"providers": self.simulator.providers()})

    async def _faults(self, request: Request) -> Response:
        provider: str = request.path_params["provider"]
        if request.method == "PUT":
            data = await _body(request)
            listed = data.get("faults") if isinstance(data, dict) else data
            self.simulator.set_faults(provider, _FAULTS.validate_python(listed))
        elif request.method == "POST":
            self.simulator.add_fault(provider, Fault.model_validate(await _body(request)))
        elif request.method == "DELETE":
            self.simulator.clear_faults(provider)
        faults = self.simulator.faults(provider)
        return JSONResponse(
            {
                "provider": provider,
                "faults": [f.model_dump(mode="json", exclude_none=True) for f in faults],
            }
        )

    async def _script(self, request: Request) -> Response:
        provider: str = request.path_params["provider"]
        if request.method == "POST":
            data = await _body(request)
            listed = data.get("replies") if isinstance(data, dict) else data
            self.simulator.script(provider, *_REPLIES.validate_python(listed))
        elif request.method == "DELETE":
            self.simulator.clear_script(provider)
        replies = self.simulator.scripted(provider)
        return JSONResponse(
            {
                "provider": provider,
                "replies": [r.model_dump(mode="json", exclude_none=True) for r in replies],
            }
        )

    async def _log(self, request: Request) -> Response:
        provider = request.query_params.get("provider") or None
        try:
            since = int(request.query_params.get("since", "0"))
        except ValueError:
            raise InvalidInput("since must be an integer (a log entry's seq)") from None
        entries = self.simulator.log(provider, since=since)
        return JSONResponse({"entries": [e.model_dump(mode="json") for e in entries]})

    async def _reset(self, request: Request) -> Response:
        data = await _body(request) if await request.body() else {}
        seed = data.get("seed") if isinstance(data, dict) else None
        if seed is not None and not isinstance(seed, int):
            raise InvalidInput("seed must be an integer")
        self.simulator.reset(seed=seed)
        return JSONResponse({"ok": True})


class _EventStream(Response):
    """Server-sent events, one frame per write; ends cleanly, or drops the connection (after
    stalling ``stall`` seconds) to simulate a stream cut in the network."""

    def __init__(
        self,
        app: SimApp,
        frames: list[bytes],
        headers: dict[str, str],
        *,
        ending: Literal["end", "drop"] = "end",
        stall: float = 0.0,
    ) -> None:
        self.app = app
        self.frames = frames
        self.ending = ending
        self.stall = stall
        self.status_code = 200
        self.background = None
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            *((k.encode(), v.encode()) for k, v in headers.items()),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        for frame in self.frames:
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        if self.stall:
            await self.app.pause(self.stall, receive)
        if self.ending == "drop":
            await _drop(scope)
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class _Drop(Response):
    """No response at all: the connection is closed under the client."""

    def __init__(self) -> None:
        self.status_code = 0
        self.background = None
        self.raw_headers = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _drop(scope)


async def _drop(scope: Scope) -> None:
    transport = scope.get(_TRANSPORT)
    if transport is None:
        raise RuntimeError("cannot drop the connection: the simulator must run under uvicorn")
    transport.abort()
    # abort() reports the lost connection on the next loop turn; after it the server knows the
    # client is gone and does not answer for us with a 500.
    await asyncio.sleep(0)


async def _client_gone(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _json(status: int, content: bytes, headers: dict[str, str]) -> Response:
    return Response(content, status_code=status, headers=headers, media_type="application/json")


def _request_id(seq: int) -> str:
    return f"req_sim{seq:06d}"


def _retry_headers(fault: Fault) -> dict[str, str]:
    headers = {}
    if fault.retry_after is not None:
        headers["retry-after"] = _number(fault.retry_after)
    if fault.retry_after_ms is not None:
        headers["retry-after-ms"] = _number(fault.retry_after_ms)
    return headers


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else str(value)


async def _body(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except ValueError as exc:
        raise InvalidInput(f"the request body is not JSON: {exc}") from None


def _control(
    handler: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """Bad control requests get 400 and one line saying what is wrong; nothing is changed."""

    async def guarded(request: Request) -> Response:
        try:
            return await handler(request)
        except InvalidInput as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except ValidationError as exc:
            return JSONResponse({"error": one_line(exc)}, status_code=400)

    return guarded
