"""The Anthropic Messages wire format (``POST /<provider>/v1/messages``).

Bodies, events and errors are shaped as Anthropic sends them, so the official ``anthropic`` SDK
parses them as it would the real service: errors are ``{"type": "error", "error": {"type",
"message"}}`` (``overloaded_error`` is status 529), streams are named events from
``message_start`` through ``content_block_start``/``_delta``/``_stop`` to ``message_delta``
(the stop reason and output usage) and ``message_stop``.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from kernos.sim._wire import (
    Completion,
    ErrorKind,
    Finish,
    Frames,
    ParsedRequest,
    WireError,
    dumps,
    fragments,
    prompt_tokens,
    text_of,
    words,
)

__all__ = ["AnthropicWire"]

_CONTEXT_WINDOW = 200_000

_STOP: dict[Finish, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}

# kind -> (status, error type, message); {model} and {tokens} are filled in
_ERRORS: dict[ErrorKind, tuple[int, str, str]] = {
    "rate_limit": (
        429,
        "rate_limit_error",
        "This request would exceed the rate limit for your organization of 50 requests per "
        "minute (simulated). Please try again later.",
    ),
    "server_error": (500, "api_error", "Internal server error"),
    "unavailable": (503, "api_error", "Service unavailable"),
    "overloaded": (529, "overloaded_error", "Overloaded"),
    "outage": (503, "api_error", "Service unavailable (simulated outage)"),
    "context_too_long": (
        400,
        "invalid_request_error",
        f"prompt is too long: {{tokens}} tokens > {_CONTEXT_WINDOW} maximum",
    ),
    "auth": (401, "authentication_error", "invalid x-api-key"),
    "bad_request": (
        400,
        "invalid_request_error",
        "Invalid request (simulated): the provider rejected the request body.",
    ),
    "not_found": (404, "not_found_error", "model: {model}"),
}


class AnthropicWire:
    family: Literal["anthropic"] = "anthropic"
    request_id_header = "request-id"

    def ids(self, seq: int) -> tuple[str, str]:
        return f"msg_sim{seq:06d}", f"toolu_sim{seq:06d}_"

    def parse(self, body: object) -> ParsedRequest:
        if not isinstance(body, dict):
            raise WireError("The request body must be a JSON object.")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise WireError("model: Field required")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise WireError("messages: Field required")
        limit = body.get("max_tokens")
        if not isinstance(limit, int) or limit < 1:
            raise WireError("max_tokens: Field required (an integer >= 1)")
        chars = len(text_of(body.get("system")))
        chars += sum(_chars(m) for m in messages if isinstance(m, dict))
        return ParsedRequest(
            model=model,
            stream=body.get("stream") is True,
            max_tokens=limit,
            prompt=_prompt(messages),
            input_tokens=prompt_tokens(chars),
        )

    def tools(self, body: dict[str, Any]) -> list[tuple[str, Any]]:
        return [
            (t["name"], t.get("input_schema"))
            for t in body.get("tools") or ()
            if isinstance(t, dict) and isinstance(t.get("name"), str)
        ]

    def tool_results(self, body: dict[str, Any]) -> int:
        return sum(
            1
            for m in body["messages"]
            if isinstance(m, dict) and isinstance(m.get("content"), list)
            for block in m["content"]
            if isinstance(block, dict) and block.get("type") == "tool_result"
        )

    def completion(self, c: Completion) -> bytes:
        content: list[dict[str, Any]] = [{"type": "text", "text": c.text}] if c.text else []
        content.extend(
            {"type": "tool_use", "id": call.id, "name": call.name, "input": call.input}
            for call in c.calls
        )
        return dumps(
            {
                "id": c.id,
                "type": "message",
                "role": "assistant",
                "model": c.model,
                "content": content,
                "stop_reason": _STOP[c.finish],
                "stop_sequence": None,
                "usage": {"input_tokens": c.input_tokens, "output_tokens": c.output_tokens},
            }
        )

    def frames(self, c: Completion, request: ParsedRequest) -> Frames:
        start: dict[str, Any] = {
            "id": c.id,
            "type": "message",
            "role": "assistant",
            "model": c.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": c.input_tokens, "output_tokens": 1},
        }
        body: list[bytes] = []
        index = 0
        if c.text:
            body.append(_block_start(index, {"type": "text", "text": ""}))
            body.extend(_delta(index, {"type": "text_delta", "text": w}) for w in words(c.text))
            body.append(_event("content_block_stop", {"index": index}))
            index += 1
        for call in c.calls:
            block = {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}
            body.append(_block_start(index, block))
            body.extend(
                _delta(index, {"type": "input_json_delta", "partial_json": part})
                for part in fragments(call.arguments)
            )
            body.append(_event("content_block_stop", {"index": index}))
            index += 1
        return Frames(
            head=[_event("message_start", {"message": start}), _event("ping", {})],
            body=body,
            tail=[
                _event(
                    "message_delta",
                    {
                        "delta": {"stop_reason": _STOP[c.finish], "stop_sequence": None},
                        "usage": {"output_tokens": c.output_tokens},
                    },
                ),
                _event("message_stop", {}),
            ],
        )

    def error(
        self, kind: ErrorKind, request: ParsedRequest, message: str | None, request_id: str
    ) -> tuple[int, bytes]:
        status, error = _error(kind, request, message)
        return status, dumps({"type": "error", "error": error, "request_id": request_id})

    def stream_error(self, kind: ErrorKind, request: ParsedRequest, message: str | None) -> bytes:
        return _event("error", {"error": _error(kind, request, message)[1]})

    def malformed_frame(self) -> bytes:
        return b'event: content_block_delta\ndata: {"type": "content_block_delta", "delta": {\n\n'


def _error(
    kind: ErrorKind, request: ParsedRequest, message: str | None
) -> tuple[int, dict[str, str]]:
    status, type_, template = _ERRORS[kind]
    text = message or template.format(
        model=request.model, tokens=max(request.input_tokens, _CONTEXT_WINDOW + 1)
    )
    return status, {"type": type_, "message": text}


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + dumps({"type": name, **data}) + b"\n\n"


def _block_start(index: int, block: dict[str, Any]) -> bytes:
    return _event("content_block_start", {"index": index, "content_block": block})


def _delta(index: int, delta: dict[str, Any]) -> bytes:
    return _event("content_block_delta", {"index": index, "delta": delta})


def _prompt(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return text_of(message.get("content"))
    return ""


def _chars(message: dict[str, Any]) -> int:
    content = message.get("content")
    n = len(text_of(content))
    if isinstance(content, list):
        for block in content:
            if isinstance(block, dict) and block.get("type") == "tool_use":
                n += len(json.dumps(block.get("input")))
    return n
