"""OpenAI-compatible Chat Completions through the official ``openai`` SDK (its retries off).

A base URL makes it OpenAI, Azure OpenAI, vLLM, Ollama, llama.cpp's server, Groq, Together...
Retries, timeouts as policy, and fallback are the gateway's: the SDK makes exactly one HTTP
request per attempt (``max_retries=0``).
"""

from __future__ import annotations

import json
from typing import Any

import openai

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

    def _request(self, model: str, request: LLMRequest) -> dict[str, Any]:
        return _request(model, request)

    async def _plain(
        self, kwargs: dict[str, Any], timeout: float, headers: dict[str, str], model: str
    ) -> ProviderResult:
        response = await self._client.chat.completions.create(
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
        stream = await self._client.chat.completions.create(
            **kwargs,
            stream=True,
            stream_options={"include_usage": True},
            timeout=timeout,
            extra_headers=headers,
        )
        text: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        finish: str | None = None
        usage = Usage()
        model = kwargs["model"]
        try:
            async for chunk in stream:
                model = chunk.model or model
                if chunk.usage is not None:
                    usage = _usage(chunk.usage)
                if not chunk.choices:
                    continue
                choice = chunk.choices[0]
                delta = choice.delta
                if delta is not None and delta.content:
                    text.append(delta.content)
                    if on_delta is not None:
                        on_delta(StreamDelta(attempt=attempt, text=delta.content))
                for fragment in (delta.tool_calls or []) if delta is not None else []:
                    call = calls.setdefault(fragment.index, {"id": "", "name": "", "args": []})
                    fn = fragment.function
                    if fragment.id:
                        call["id"] = fragment.id
                    if fn is not None and fn.name:
                        call["name"] = fn.name
                    if fn is not None and fn.arguments:
                        call["args"].append(fn.arguments)
                    if on_delta is not None:
                        on_delta(
                            StreamDelta(
                                attempt=attempt,
                                tool_call_index=fragment.index,
                                tool_call_id=fragment.id,
                                tool_name=fn.name if fn is not None else None,
                                arguments_fragment=(fn.arguments or "") if fn is not None else "",
                            )
                        )
                if choice.finish_reason:
                    finish = choice.finish_reason
        finally:
            await stream.close()
        if finish is None:
            raise truncated("finish reason", usage)
        tool_calls = tuple(
            _tool_call(c["id"] or f"call_{i}", c["name"], "".join(c["args"]))
            for i, c in sorted(calls.items())
        )
        return _finished("".join(text), tool_calls, finish, usage, model)


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
    details = getattr(u, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None) or 0
    return Usage(
        input_tokens=u.prompt_tokens or 0,
        output_tokens=u.completion_tokens or 0,
        cached_input_tokens=cached,
    )


def _result(response: Any, model: str) -> ProviderResult:
    if not getattr(response, "choices", None):
        raise ProviderError(ErrorClass.MALFORMED_RESPONSE, "the answer holds no choices")
    choice = response.choices[0]
    message = choice.message
    tool_calls = tuple(
        _tool_call(c.id, c.function.name, c.function.arguments or "")
        for c in (message.tool_calls or [])
        if getattr(c, "function", None) is not None
    )
    usage = _usage(response.usage) if response.usage is not None else Usage()
    finish = choice.finish_reason or ("tool_calls" if tool_calls else "stop")
    return _finished(message.content or "", tool_calls, finish, usage, response.model or model)


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
