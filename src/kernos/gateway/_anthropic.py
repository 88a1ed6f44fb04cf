"""Anthropic Messages through the official ``anthropic`` SDK (its retries off).

The family-neutral conversation maps onto Messages' shape: system messages become the
``system`` parameter, tool results become ``tool_result`` blocks of a user turn (consecutive
ones merged, as the API requires), and ``max_tokens``, required here, defaults to 4096.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic

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

DEFAULT_MAX_TOKENS = 4096
_FINISH: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


class AnthropicProvider(SdkProvider):
    """One Anthropic Messages endpoint (a base URL and its key)."""

    sdk = anthropic
    client_class = anthropic.AsyncAnthropic
    path = "/v1/messages"

    def _request(self, model: str, request: LLMRequest) -> dict[str, Any]:
        return _request(model, request)

    def _answer(self, data: Any, model: str) -> ProviderResult:
        return _result(data, model)

    def _reader(self, model: str) -> StreamReader:
        return _StreamState(model)


class _StreamState:
    """A Messages stream read event by event into one answer (or a truncation)."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.text: list[str] = []
        self.blocks: dict[int, dict[str, Any]] = {}
        self.stop: str | None = None
        self.stopped = False
        self.input_tokens = self.cached = self.output_tokens = 0

    def take(self, event: dict[str, Any], on_delta: OnDelta | None, attempt: int) -> None:
        kind = event.get("type")
        if kind == "message_start":
            message = event["message"]
            self.model = message.get("model") or self.model
            usage = message.get("usage") or {}
            self.cached = usage.get("cache_read_input_tokens") or 0
            created = usage.get("cache_creation_input_tokens") or 0
            self.input_tokens = (usage.get("input_tokens") or 0) + self.cached + created
            self.output_tokens = usage.get("output_tokens") or 0
        elif kind == "content_block_start":
            block = event["content_block"]
            if block.get("type") == "tool_use":
                index = event["index"]
                self.blocks[index] = {"id": block["id"], "name": block["name"], "args": []}
                if on_delta is not None:
                    on_delta(
                        StreamDelta(
                            attempt=attempt,
                            tool_call_index=index,
                            tool_call_id=block["id"],
                            tool_name=block["name"],
                        )
                    )
        elif kind == "content_block_delta":
            delta = event["delta"]
            if delta.get("type") == "text_delta":
                self.text.append(delta["text"])
                if on_delta is not None:
                    on_delta(StreamDelta(attempt=attempt, text=delta["text"]))
            elif delta.get("type") == "input_json_delta" and event.get("index") in self.blocks:
                self.blocks[event["index"]]["args"].append(delta["partial_json"])
                if on_delta is not None:
                    on_delta(
                        StreamDelta(
                            attempt=attempt,
                            tool_call_index=event["index"],
                            arguments_fragment=delta["partial_json"],
                        )
                    )
        elif kind == "message_delta":
            self.stop = (event.get("delta") or {}).get("stop_reason") or self.stop
            usage = event.get("usage") or {}
            if usage.get("output_tokens") is not None:
                self.output_tokens = usage["output_tokens"]
        elif kind == "message_stop":
            self.stopped = True

    def result(self) -> ProviderResult:
        usage = Usage(
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cached_input_tokens=self.cached,
        )
        if not self.stopped or self.stop is None:
            raise truncated("message_stop event", usage)
        tool_calls = tuple(
            _tool_call(b["id"], b["name"], "".join(b["args"]))
            for _, b in sorted(self.blocks.items())
        )
        return _finished("".join(self.text), tool_calls, self.stop, usage, self.model)


def _request(model: str, request: LLMRequest) -> dict[str, Any]:
    params = dict(request.params)
    if "stop" in params:
        stop = params.pop("stop")
        params["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    params.setdefault("max_tokens", DEFAULT_MAX_TOKENS)
    system = "\n\n".join(m.content or "" for m in request.messages if m.role == "system")
    kwargs: dict[str, Any] = {
        "model": model,
        "messages": _messages(request.messages),
        **params,
    }
    if system:
        kwargs["system"] = system
    if request.tools:
        kwargs["tools"] = [_tool(t) for t in request.tools]
    return kwargs


def _messages(messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "system":
            continue
        if m.role == "tool":
            result = {
                "type": "tool_result",
                "tool_use_id": m.tool_call_id or "",
                "content": m.content or "",
            }
            previous = out[-1] if out else None
            if (
                previous is not None
                and previous["role"] == "user"
                and isinstance(previous["content"], list)
                and all(b.get("type") == "tool_result" for b in previous["content"])
            ):
                previous["content"].append(result)  # results of one turn go together
            else:
                out.append({"role": "user", "content": [result]})
            continue
        if m.role == "assistant" and m.tool_calls:
            content: list[dict[str, Any]] = []
            if m.content:
                content.append({"type": "text", "text": m.content})
            for call in m.tool_calls:
                content.append(
                    {"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments}
                )
            out.append({"role": "assistant", "content": content})
            continue
        out.append({"role": m.role, "content": m.content or ""})
    return out


def _tool(t: ToolSpec) -> dict[str, Any]:
    return {"name": t.name, "description": t.description, "input_schema": t.parameters}


def _tool_call(call_id: str, name: str, raw: str) -> ToolCall:
    arguments, problem = parse_arguments(raw)
    return ToolCall(
        id=call_id, name=name, arguments=arguments, raw_arguments=raw if problem else None
    )


def _result(data: Any, model: str) -> ProviderResult:
    content = data.get("content")
    if content is None:
        raise ProviderError(ErrorClass.MALFORMED_RESPONSE, "the answer holds no content")
    text: list[str] = []
    calls: list[ToolCall] = []
    for block in content:
        if block.get("type") == "text":
            text.append(block["text"])
        elif block.get("type") == "tool_use":
            raw = block.get("input")
            if isinstance(raw, dict):
                calls.append(ToolCall(id=block["id"], name=block["name"], arguments=raw))
            else:  # not an object: hand the model its own text back to fix
                calls.append(_tool_call(block["id"], block["name"], _as_text(raw)))
    u = data.get("usage") or {}
    cached = u.get("cache_read_input_tokens") or 0
    created = u.get("cache_creation_input_tokens") or 0
    usage = Usage(
        input_tokens=(u.get("input_tokens") or 0) + cached + created,
        output_tokens=u.get("output_tokens") or 0,
        cached_input_tokens=cached,
    )
    stop = data.get("stop_reason") or ("tool_use" if calls else "end_turn")
    return _finished("".join(text), tuple(calls), stop, usage, data.get("model") or model)


def _as_text(raw: object) -> str:
    return raw if isinstance(raw, str) else json.dumps(raw)


def _finished(
    text: str, tool_calls: tuple[ToolCall, ...], stop: str, usage: Usage, model: str
) -> ProviderResult:
    reason = _FINISH.get(stop, "stop")
    if reason == "content_filter":
        raise ProviderError(
            ErrorClass.CONTENT_FILTERED,
            f"the model refused to answer (stop_reason {stop})",
            usage=usage,
        )
    return ProviderResult(text, tool_calls, reason, usage, model)
