"""The gateway's one request/response model, whichever provider family answers.

Agents write messages and tools once; the providers translate them to and from OpenAI Chat
Completions or Anthropic Messages. Everything here is plain JSON when dumped, because a
response is journaled and replay must return an equal one.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


class ErrorClass(StrEnum):
    """What went wrong with a call, as the retry, fallback and breaker logic sees it."""

    RATE_LIMITED = "rate_limited"
    OVERLOADED = "overloaded"
    SERVER_ERROR = "server_error"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    MALFORMED_RESPONSE = "malformed_response"
    TRUNCATED_RESPONSE = "truncated_response"
    CONTEXT_TOO_LONG = "context_too_long"
    CONTENT_FILTERED = "content_filtered"
    AUTH = "auth"
    BAD_REQUEST = "bad_request"
    NOT_FOUND = "not_found"

    @property
    def retryable(self) -> bool:
        """The same request may succeed later at the same endpoint."""
        return self in _RETRYABLE

    @property
    def falls_back(self) -> bool:
        """Another model of the route may answer it (a bad request would fail there too)."""
        return self in _RETRYABLE or self in (ErrorClass.CONTEXT_TOO_LONG, ErrorClass.NOT_FOUND)


_RETRYABLE = frozenset(
    {
        ErrorClass.RATE_LIMITED,
        ErrorClass.OVERLOADED,
        ErrorClass.SERVER_ERROR,
        ErrorClass.TIMEOUT,
        ErrorClass.CONNECTION,
        ErrorClass.MALFORMED_RESPONSE,
        ErrorClass.TRUNCATED_RESPONSE,
    }
)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ToolCall(_Model):
    """A tool the model asks to call. ``arguments`` is parsed JSON; ``raw_arguments`` is what
    the model sent, kept when it did not parse (the gateway asks the model to fix it)."""

    id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    raw_arguments: str | None = None


class Message(_Model):
    """One message of a conversation, in the family-neutral form."""

    role: Role
    content: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    #: for ``role="tool"``: the call this message answers
    tool_call_id: str | None = None
    name: str | None = None


class ToolSpec(_Model):
    """A tool offered to the model: its name, what it does, and its JSON-schema parameters."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class Usage(_Model):
    """Tokens of one call, as the provider billed them. ``cached_input_tokens`` is the part of
    ``input_tokens`` read from the provider's prompt cache (priced lower)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cached_input_tokens=self.cached_input_tokens + other.cached_input_tokens,
        )


class LLMResponse(_Model):
    """A model's complete answer: what ``ctx.llm`` returns (and replay returns again)."""

    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: FinishReason = "stop"
    usage: Usage = Field(default_factory=Usage)
    #: US dollars, from ``usage`` and the model's price
    cost: float = 0.0
    model: str = ""
    provider: str = ""
    #: seconds, of the attempt that answered
    latency: float = 0.0
    #: attempts this call took, across every model of its route
    attempts: int = 1

    def message(self) -> Message:
        """The answer as an assistant message, to append to the conversation."""
        return Message(role="assistant", content=self.text or None, tool_calls=self.tool_calls)


class StreamDelta(_Model):
    """A piece of a streamed answer. ``attempt`` changes when a retry starts over, so that a
    consumer showing text live can discard what a failed attempt had sent."""

    attempt: int
    text: str = ""
    tool_call_index: int | None = None
    tool_call_id: str | None = None
    tool_name: str | None = None
    arguments_fragment: str = ""


def parse_arguments(raw: str) -> tuple[dict[str, Any], str | None]:
    """A tool call's arguments and, when they are not a JSON object, why not."""
    if not raw.strip():
        return {}, None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        return {}, f"not valid JSON ({exc.msg} at column {exc.colno})"
    if not isinstance(value, dict):
        return {}, f"a JSON {type(value).__name__}, not an object"
    return value, None
