"""OpenAI-compatible Chat Completions through the official ``openai`` SDK (its retries off).

A base URL makes it OpenAI, Azure OpenAI, vLLM, Ollama, llama.cpp's server, Groq, Together...
Retries, timeouts as policy, and fallback are the gateway's: the SDK makes exactly one HTTP
request per attempt (``max_retries=0``).
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import openai

from kernos.gateway._provider import (
    LLMRequest,
    OnDelta,
    ProviderError,
    ProviderResult,
    truncated,
)
from kernos.gateway._sdk import SdkProvider, StreamReader
from kernos.gateway._types import (
    ErrorClass,
    FinishReason,
    Message,
    StreamDelta,
    ToolCall,
    ToolSpec,
    Usage,
    parse_arguments,
)

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


class OpenAIProvider(SdkProvider):
    """One OpenAI-compatible endpoint (a base URL and its key)."""

    sdk = openai
    client_class = openai.AsyncOpenAI
    path = "/chat/completions"

    stream_body: ClassVar[dict[str, Any]] = {
        "stream": True,
        "stream_options": {"include_usage": True},
    }

    def _request(self, model: str, request: LLMRequest) -> dict[str, Any]:
        return _request(model, request)

    def _answer(self, data: Any, model: str) -> ProviderResult:
        return _result(data, model)

    def _reader(self, model: str) -> StreamReader:
        return _StreamState(model)


class _StreamState:
    """A Chat Completions stream read chunk by chunk into one answer (or a truncation)."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.text: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.finish: str | None = None
        self.usage = Usage()

    def take(self, chunk: dict[str, Any], on_delta: OnDelta | None, attempt: int) -> None:
        self.model = chunk.get("model") or self.model
        if chunk.get("usage"):
            self.usage = _usage(chunk["usage"])
        choices = chunk.get("choices")
        if not choices:
            return
        choice = choices[0]
        delta = choice.get("delta") or {}
        content = delta.get("content")
        if content:
            self.text.append(content)
            if on_delta is not None:
                on_delta(StreamDelta(attempt=attempt, text=content))
        for fragment in delta.get("tool_calls") or ():
            _add_fragment(self.calls, fragment, on_delta, attempt)
        if choice.get("finish_reason"):
            self.finish = choice["finish_reason"]

    def result(self) -> ProviderResult:
        if self.finish is None:
            raise truncated("finish reason", self.usage)
        tool_calls = tuple(
            _tool_call(c["id"] or f"call_{i}", c["name"], "".join(c["args"]))
            for i, c in sorted(self.calls.items())
        )
        return _finished("".join(self.text), tool_calls, self.finish, self.usage, self.model)


def _add_fragment(
    calls: dict[int, dict[str, Any]],
    fragment: dict[str, Any],
    on_delta: OnDelta | None,
    attempt: int,
) -> None:
    """One streamed piece of a tool call: its id and name come first, arguments in parts."""
    index = int(fragment.get("index") or 0)
    call = calls.setdefault(index, {"id": "", "name": "", "args": []})
    fn = fragment.get("function") or {}
    if fragment.get("id"):
        call["id"] = fragment["id"]
    if fn.get("name"):
        call["name"] = fn["name"]
    if fn.get("arguments"):
        call["args"].append(fn["arguments"])
    if on_delta is not None:
        on_delta(
            StreamDelta(
                attempt=attempt,
                tool_call_index=index,
                tool_call_id=fragment.get("id"),
                tool_name=fn.get("name"),
                arguments_fragment=fn.get("arguments") or "",
            )
        )


def _request(model: str, request: LLMRequest) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "model": model,
        "messages": [_message(m) for m in request.messages],
        **request.params,
    }
    if request.tools:
        kwargs["tools"] = [_tool(t) for t in request.tools]
    return kwargs


def _message(m: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.name:
        out["name"] = m.name
    if m.role == "tool":
        out["tool_call_id"] = m.tool_call_id
        out["content"] = m.content or ""
    if m.tool_calls:
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {
                    "name": c.name,
                    "arguments": c.raw_arguments
                    if c.raw_arguments is not None
                    else json.dumps(c.arguments),
                },
            }
            for c in m.tool_calls
        ]
    return out


def _tool(t: ToolSpec) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
    }


def _tool_call(call_id: str, name: str, raw: str) -> ToolCall:
    arguments, problem = parse_arguments(raw)
    return ToolCall(
        id=call_id, name=name, arguments=arguments, raw_arguments=raw if problem else None
    )


def _usage(u: Any) -> Usage:
    details = u.get("prompt_tokens_details") or {}
    return Usage(
        input_tokens=u.get("prompt_tokens") or 0,
        output_tokens=u.get("completion_tokens") or 0,
        cached_input_tokens=details.get("cached_tokens") or 0,
    )


def _result(data: Any, model: str) -> ProviderResult:
    choices = data.get("choices")
    if not choices:
        raise ProviderError(ErrorClass.MALFORMED_RESPONSE, "the answer holds no choices")
    choice = choices[0]
    message = choice.get("message") or {}
    tool_calls = tuple(
        _tool_call(
            c.get("id") or "", c["function"].get("name") or "", c["function"].get("arguments") or ""
        )
        for c in message.get("tool_calls") or ()
        if c.get("function")
    )
    usage = _usage(data["usage"]) if data.get("usage") else Usage()
    finish = choice.get("finish_reason") or ("tool_calls" if tool_calls else "stop")
    return _finished(
        message.get("content") or "", tool_calls, finish, usage, data.get("model") or model
    )


def _finished(
    text: str, tool_calls: tuple[ToolCall, ...], finish: str, usage: Usage, model: str
) -> ProviderResult:
    reason = _FINISH.get(finish, "stop")
    if reason == "content_filter":
        raise ProviderError(
            ErrorClass.CONTENT_FILTERED,
            "the provider's content filter stopped the answer (finish_reason content_filter)",
            usage=usage,
        )
    return ProviderResult(text, tool_calls, reason, usage, model)
