"""What both wire formats share: the parsed request, the completion to send, and its frames.

A provider family (``_openai``, ``_anthropic``) is a ``Wire``: it parses its request body, and
renders a ``Completion``, an error, or a stream of server-sent-event frames in its own format.
The replies are deterministic: the default text echoes the last user text, and token counts
are the text's length over four, so cost figures in tests are stable.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from kernos.sim._faults import FaultKind
from kernos.sim._script import FinishReason, Reply

__all__ = [
    "Call",
    "Completion",
    "ErrorKind",
    "Finish",
    "Frames",
    "ParsedRequest",
    "Wire",
    "WireError",
    "compose",
    "dumps",
    "fragments",
    "prompt_tokens",
    "text_of",
    "tokens",
    "words",
]

#: the finish reasons in one vocabulary (OpenAI's); each wire maps them to its own
Finish = Literal["stop", "length", "tool_calls", "content_filter"]

ErrorKind = Literal[
    "rate_limit",
    "server_error",
    "unavailable",
    "overloaded",
    "outage",
    "context_too_long",
    "auth",
    "bad_request",
    "not_found",
]

_NEUTRAL: dict[FinishReason, Finish] = {
    "stop": "stop",
    "end_turn": "stop",
    "length": "length",
    "max_tokens": "length",
    "tool_calls": "tool_calls",
    "tool_use": "tool_calls",
    "content_filter": "content_filter",
    "refusal": "content_filter",
}

_CLIP = 60


class WireError(Exception):
    """The request body is not one the provider would accept (400 invalid_request_error)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """What the simulator needs from a request body, whichever the family."""

    model: str
    stream: bool
    max_tokens: int | None
    prompt: str
    input_tokens: int
    include_usage: bool = False


@dataclass(frozen=True, slots=True)
class Call:
    """A tool call ready to render: ``arguments`` is JSON text (possibly invalid on purpose);
    ``input`` is the parsed object, or the raw text when it does not parse to one."""

    id: str
    name: str
    arguments: str
    input: Any


@dataclass(frozen=True, slots=True)
class Completion:
    """One answer in neutral form."""

    id: str
    model: str
    text: str
    finish: Finish
    input_tokens: int
    output_tokens: int
    calls: tuple[Call, ...] = ()
    created: int = field(default_factory=lambda: int(time.time()))


@dataclass(frozen=True, slots=True)
class Frames:
    """A stream as three runs of SSE frames.

    ``head`` opens the message, ``body`` carries the content, ``tail`` finishes it (the finish
    reason, usage, and the end marker). Truncating a stream sends ``head`` and part of ``body``
    and never ``tail``, so only a client that checks for the finish notices.
    """

    head: list[bytes]
    body: list[bytes]
    tail: list[bytes]


class Wire(Protocol):
    """One provider family's wire format."""

    @property
    def family(self) -> Literal["openai", "anthropic"]: ...

    @property
    def request_id_header(self) -> str: ...

    def ids(self, seq: int) -> tuple[str, str]:
        """The message id and the tool-call id prefix of request number ``seq``."""
        ...

    def parse(self, body: object) -> ParsedRequest: ...

    def tools(self, body: dict[str, Any]) -> list[tuple[str, Any]]:
        """The (name, JSON schema) of each tool a parsed request offers, in order."""
        ...

    def tool_results(self, body: dict[str, Any]) -> int:
        """How many tool results the conversation of a parsed request holds."""
        ...

    def completion(self, c: Completion) -> bytes: ...

    def frames(self, c: Completion, request: ParsedRequest) -> Frames: ...

    def error(
        self, kind: ErrorKind, request: ParsedRequest, message: str | None, request_id: str
    ) -> tuple[int, bytes]: ...

    def stream_error(self, kind: ErrorKind, request: ParsedRequest, message: str | None) -> bytes:
        """An error event inside a stream that began with 200 (the provider failed mid-way)."""
        ...

    def malformed_frame(self) -> bytes: ...


def dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def tokens(text: str) -> int:
    """About four characters a token, as for English text; at least 1 for any text."""
    return math.ceil(len(text) / 4) if text else 0


def prompt_tokens(chars: int) -> int:
    """A prompt of ``chars`` characters in tokens: at least 1, as no real prompt is free."""
    return max(1, math.ceil(chars / 4))


def words(text: str) -> list[str]:
    """The text as stream deltas: one word each, with its trailing white space."""
    return re.findall(r"\s*\S+\s*", text) or ([text] if text else [])


def text_of(content: object) -> str:
    """The text in a message's ``content``: a string, or the text of a list of parts (text
    parts, tool results, OpenAI refusal parts); other parts (images) carry none."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts = []
    for part in content:
        if isinstance(part, dict):
            if isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif "content" in part:
                texts.append(text_of(part["content"]))
    return " ".join(texts)


def fragments(text: str, size: int = 16) -> list[str]:
    """Tool-call arguments as stream deltas, cut anywhere (as providers do)."""
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def compose(
    reply: Reply | None,
    request: ParsedRequest,
    *,
    ids: tuple[str, str],
    kind: FaultKind | None = None,
) -> Completion:
    """The completion for a request: the scripted ``reply`` or the default one.

    ``ids`` is the message id and the prefix of tool-call ids. ``max_tokens`` is honoured: a
    reply longer than it is clipped, loses its tool calls, and finishes with ``length``.
    ``kind="content_filter"`` replaces the reply with an empty, filtered one.
    """
    message_id, call_prefix = ids
    if kind == "content_filter":
        reply = Reply(text="", finish_reason="content_filter")
    elif reply is None:
        prompt = request.prompt if len(request.prompt) <= _CLIP else request.prompt[:_CLIP] + "…"
        reply = Reply(text=f"sim reply to: {prompt}")
    calls = tuple(
        _call(tc.id or f"{call_prefix}{i}", tc.name, tc.arguments)
        for i, tc in enumerate(reply.tool_calls)
    )
    text = reply.text
    output = tokens(text) + sum(tokens(c.arguments) for c in calls)
    finish: Finish
    if reply.finish_reason is not None:
        finish = _NEUTRAL[reply.finish_reason]
    else:
        finish = "tool_calls" if calls else "stop"
    limit = request.max_tokens
    if limit is not None and output > limit:
        text, calls, output, finish = text[: limit * 4], (), limit, "length"
    if reply.usage is not None:
        input_tokens, output = reply.usage.input_tokens, reply.usage.output_tokens
    else:
        input_tokens = request.input_tokens
    return Completion(
        id=message_id,
        model=request.model,
        text=text,
        finish=finish,
        input_tokens=input_tokens,
        output_tokens=output,
        calls=calls,
    )


def _call(call_id: str, name: str, arguments: dict[str, Any] | str) -> Call:
    if isinstance(arguments, dict):
        return Call(call_id, name, json.dumps(arguments, ensure_ascii=False), arguments)
    try:
        parsed = json.loads(arguments)
    except ValueError:
        parsed = None
    return Call(call_id, name, arguments, parsed if isinstance(parsed, dict) else arguments)
