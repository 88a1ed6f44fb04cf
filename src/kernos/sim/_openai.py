"""The OpenAI Chat Completions wire format (``POST /<provider>/v1/chat/completions``).

Bodies, chunks and errors are shaped as OpenAI sends them, so the official ``openai`` SDK parses
them as it would the real service: errors are ``{"error": {"message", "type", "param",
"code"}}``, streams are ``data: {chunk}`` frames ending in a chunk with the finish reason, an
optional usage chunk (``stream_options.include_usage``) and ``data: [DONE]``.

OpenAI has no distinct "overloaded" status: an overloaded model answers 503 with a
``server_error`` whose message says so, and that is what ``overloaded`` sends here.
"""

from __future__ import annotations

from typing import Any, Literal

from kernos.sim._wire import (
    Completion,
    ErrorKind,
    Frames,
    ParsedRequest,
    WireError,
    dumps,
    fragments,
    prompt_tokens,
    text_of,
    words,
)

__all__ = ["OpenAIWire"]

_CONTEXT_WINDOW = 128_000

# kind -> (status, type, code, param, message); {model} and {tokens} are filled in
_ERRORS: dict[ErrorKind, tuple[int, str, str | None, str | None, str]] = {
    "rate_limit": (
        429,
        "requests",
        "rate_limit_exceeded",
        None,
        "Rate limit reached for {model} in organization org-sim on requests per min (RPM): "
        "Limit 60, Used 60, Requested 1. Please try again later.",
    ),
    "server_error": (
        500,
        "server_error",
        None,
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    "unavailable": (503, "server_error", None, None, "Service Unavailable"),
    "overloaded": (
        503,
        "server_error",
        None,
        None,
        "That model is currently overloaded with other requests. You can retry your request, "
        "or contact us through our help center if the error persists.",
    ),
    "outage": (
        503,
        "server_error",
        None,
        None,
        "The service is temporarily unavailable (simulated outage). Please try again later.",
    ),
    "context_too_long": (
        400,
        "invalid_request_error",
        "context_length_exceeded",
        "messages",
        f"This model's maximum context length is {_CONTEXT_WINDOW} tokens. However, your "
        "messages resulted in {tokens} tokens. Please reduce the length of the messages.",
    ),
    "auth": (
        401,
        "invalid_request_error",
        "invalid_api_key",
        None,
        "Incorrect API key provided. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
    ),
    "bad_request": (
        400,
        "invalid_request_error",
        None,
        None,
        "Invalid request (simulated): the provider rejected the request body.",
    ),
    "not_found": (
        404,
        "invalid_request_error",
        "model_not_found",
        "model",
        "The model `{model}` does not exist or you do not have access to it.",
    ),
}


class OpenAIWire:
    family: Literal["openai"] = "openai"
    request_id_header = "x-request-id"

    def ids(self, seq: int) -> tuple[str, str]:
        return f"chatcmpl-sim{seq:06d}", f"call_sim{seq:06d}_"

    def parse(self, body: object) -> ParsedRequest:
        if not isinstance(body, dict):
            raise WireError("The request body must be a JSON object.")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise WireError("you must provide a model parameter", "model")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise WireError("Missing required parameter: 'messages'.", "messages")
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise WireError(f"Invalid 'max_tokens': {limit!r}; expected an integer >= 1.")
        options = body.get("stream_options")
        return ParsedRequest(
            model=model,
            stream=body.get("stream") is True,
            max_tokens=limit,
            prompt=_prompt(messages),
            input_tokens=prompt_tokens(sum(_chars(m) for m in messages if isinstance(m, dict))),
            include_usage=isinstance(options, dict) and options.get("include_usage") is True,
        )

    def tools(self, body: dict[str, Any]) -> list[tuple[str, Any]]:
        return [
            (t["function"]["name"], t["function"].get("parameters"))
            for t in body.get("tools") or ()
            if isinstance(t, dict)
            and isinstance(t.get("function"), dict)
            and isinstance(t["function"].get("name"), str)
        ]

    def tool_results(self, body: dict[str, Any]) -> int:
        return sum(1 for m in body["messages"] if isinstance(m, dict) and m.get("role") == "tool")

    def completion(self, c: Completion) -> bytes:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": c.text if c.text or not c.calls else None,
            "refusal": None,
        }
        if c.calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in c.calls
            ]
        return dumps(
            {
                "id": c.id,
                "object": "chat.completion",
                "created": c.created,
                "model": c.model,
                "choices": [
                    {"index": 0, "message": message, "logprobs": None, "finish_reason": c.finish}
                ],
                "usage": _usage(c),
                "system_fingerprint": None,
            }
        )

    def frames(self, c: Completion, request: ParsedRequest) -> Frames:
        base: dict[str, Any] = {
            "id": c.id,
            "object": "chat.completion.chunk",
            "created": c.created,
            "model": c.model,
            "system_fingerprint": None,
        }
        if request.include_usage:
            base["usage"] = None

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return _frame({**base, "choices": [choice]})

        body = [chunk({"content": piece}) for piece in words(c.text)]
        for i, call in enumerate(c.calls):
            opening = {"index": i, "id": call.id, "type": "function"}
            body.append(
                chunk(
                    {"tool_calls": [{**opening, "function": {"name": call.name, "arguments": ""}}]}
                )
            )
            body.extend(
                chunk({"tool_calls": [{"index": i, "function": {"arguments": part}}]})
                for part in fragments(call.arguments)
            )
        tail = [chunk({}, c.finish)]
        if request.include_usage:
            tail.append(_frame({**base, "choices": [], "usage": _usage(c)}))
        tail.append(b"data: [DONE]\n\n")
        return Frames(
            head=[chunk({"role": "assistant", "content": "", "refusal": None})],
            body=body,
            tail=tail,
        )

    def error(
        self, kind: ErrorKind, request: ParsedRequest, message: str | None, request_id: str
    ) -> tuple[int, bytes]:
        status, error = _error(kind, request, message)
        return status, dumps({"error": error})

    def stream_error(self, kind: ErrorKind, request: ParsedRequest, message: str | None) -> bytes:
        return _frame({"error": _error(kind, request, message)[1]})

    def malformed_frame(self) -> bytes:
        return b'data: {"id": "chatcmpl-sim", "object": "chat.completion.chunk", "choices": [{\n\n'


def _error(
    kind: ErrorKind, request: ParsedRequest, message: str | None
) -> tuple[int, dict[str, Any]]:
    status, type_, code, param, template = _ERRORS[kind]
    text = message or template.format(
        model=request.model, tokens=max(request.input_tokens, _CONTEXT_WINDOW + 1)
    )
    return status, {"message": text, "type": type_, "param": param, "code": code}


def _frame(value: object) -> bytes:
    return b"data: " + dumps(value) + b"\n\n"


def _usage(c: Completion) -> dict[str, int]:
    return {
        "prompt_tokens": c.input_tokens,
        "completion_tokens": c.output_tokens,
        "total_tokens": c.input_tokens + c.output_tokens,
    }


def _prompt(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") in ("user", "tool"):
            return text_of(message.get("content"))
    return ""


def _chars(message: dict[str, Any]) -> int:
    n = len(text_of(message.get("content")))
    for call in message.get("tool_calls") or ():
        if isinstance(call, dict) and isinstance(call.get("function"), dict):
            n += len(str(call["function"].get("arguments", "")))
    return n
