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
from kernos.gateway._sdk import SdkProvider
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

    def _request(self, model: str, request: LLMRequest) -> dict[str, Any]:
        return _request(model, request)

    async def _plain(
        self, kwargs: dict[str, Any], timeout: float, headers: dict[str, str], model: str
    ) -> ProviderResult:
        response = await self._client.messages.create(
            **kwargs, timeout=timeout, extra_headers=headers
        )
        return _result(response, model)

    async def _stream(
        self,
        kwargs: dict[str, Any],
        timeout: float,
        headers: dict[str, str],
        on_delta: OnDelta | None,
        attempt: int,
    ) -> ProviderResult:
        stream = await self._client.messages.create(
            **kwargs, stream=True, timeout=timeout, extra_headers=headers
        )
        text: list[str] = []
        blocks: dict[int, dict[str, Any]] = {}
        stop: str | None = None
        stopped = False
        input_tokens = cached = output_tokens = 0
        model = kwargs["model"]
        try:
            async for event in stream:
                kind = event.type
                if kind == "message_start":
                    model = event.message.model or model
                    u = event.message.usage
                    cached = getattr(u, "cache_read_input_tokens", None) or 0
                    created = getattr(u, "cache_creation_input_tokens", None) or 0
                    input_tokens = (u.input_tokens or 0) + cached + created
                    output_tokens = u.output_tokens or 0
                elif kind == "content_block_start":
                    block = event.content_block
                    if block.type == "tool_use":
                        blocks[event.index] = {"id": block.id, "name": block.name, "args": []}
                        if on_delta is not None:
                            on_delta(
                                StreamDelta(
                                    attempt=attempt,
                                    tool_call_index=event.index,
                                    tool_call_id=block.id,
                                    tool_name=block.name,
                                )
                            )
                elif kind == "content_block_delta":
                    delta = event.delta
                    if delta.type == "text_delta":
                        text.append(delta.text)
                        if on_delta is not None:
                            on_delta(StreamDelta(attempt=attempt, text=delta.text))
                    elif delta.type == "input_json_delta" and event.index in blocks:
                        blocks[event.index]["args"].append(delta.partial_json)
                        if on_delta is not None:
                            on_delta(
                                StreamDelta(
                                    attempt=attempt,
                                    tool_call_index=event.index,
                                    arguments_fragment=delta.partial_json,
                                )
                            )
                elif kind == "message_delta":
                    stop = event.delta.stop_reason or stop
                    if event.usage is not None and event.usage.output_tokens is not None:
                        output_tokens = event.usage.output_tokens
                elif kind == "message_stop":
                    stopped = True
        finally:
            await stream.close()
        usage = Usage(
            input_tokens=input_tokens, output_tokens=output_tokens, cached_input_tokens=cached
        )
        if not stopped or stop is None:
            raise truncated("message_stop event", usage)
        tool_calls = tuple(
            _tool_call(b["id"], b["name"], "".join(b["args"])) for _, b in sorted(blocks.items())
        )
        return _finished("".join(text), tool_calls, stop, usage, model)


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


def _result(response: Any, model: str) -> ProviderResult:
    content = getattr(response, "content", None)
    if content is None:
        raise ProviderError(ErrorClass.MALFORMED_RESPONSE, "the answer holds no content")
    text: list[str] = []
    calls: list[ToolCall] = []
    for block in content:
        if block.type == "text":
            text.append(block.text)
        elif block.type == "tool_use":
            raw = block.input
            if isinstance(raw, dict):
                calls.append(ToolCall(id=block.id, name=block.name, arguments=raw))
            else:  # not an object: hand the model its own text back to fix
                calls.append(_tool_call(block.id, block.name, _as_text(raw)))
    u = response.usage
    cached = getattr(u, "cache_read_input_tokens", None) or 0
    created = getattr(u, "cache_creation_input_tokens", None) or 0
    usage = Usage(
        input_tokens=(u.input_tokens or 0) + cached + created,
        output_tokens=u.output_tokens or 0,
        cached_input_tokens=cached,
    )
    stop = response.stop_reason or ("tool_use" if calls else "end_turn")
    return _finished("".join(text), tuple(calls), stop, usage, response.model or model)


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
