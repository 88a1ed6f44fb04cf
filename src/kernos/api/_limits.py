"""A cap on request bodies: over the limit is 413 and nothing is parsed or written."""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._problems import problem_response


class BodyLimit:
    """ASGI middleware refusing request bodies over ``max_bytes`` with a 413 problem.

    A declared ``Content-Length`` over the limit is refused before a byte is read. A body sent
    without one (chunked) is read up to the limit and refused as soon as it passes it, so a
    client cannot make the server buffer more than ``max_bytes``. Bodies under the limit are
    buffered (they are small JSON documents) and handed on whole.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is None and b"transfer-encoding" not in headers:
            await self.app(scope, receive, send)
            return
        if length is not None:
            if not length.isdigit():
                await self._refuse(scope, receive, send, 400, "Content-Length is not a number")
                return
            if int(length) > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._refuse(
            scope,
            receive,
            send,
            413,
            f"the request body is over the limit of {self.max_bytes} bytes; nothing was done. "
            f"Store large data elsewhere and pass a reference",
        )

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, status: int, detail: str
    ) -> None:
        kind = "body-too-large" if status == 413 else "bad-request"
        response = problem_response(
            Request(scope), status, detail, kind=kind, headers={"Connection": "close"}
        )
        await response(scope, receive, send)
