"""Scripted replies: what the simulated model says, so an agent can be tested without a provider.

A provider's script is a queue. A request takes the first reply whose ``model`` pattern matches
its model (a reply without one matches any); with nothing queued it gets the default reply,
``sim reply to: <the last user text>``. A reply is taken only by a request that is answered in
full: a request that meets a fault (a 429, a cut stream) leaves the script as it was, so the
retry a gateway makes gets the reply the test scripted.

Finish reasons may be given in either family's words (``tool_calls`` or ``tool_use``,
``length`` or ``max_tokens``, ``content_filter`` or ``refusal``); each family gets its own.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["FinishReason", "Reply", "ToolCall", "Usage"]

FinishReason = Literal[
    "stop",
    "length",
    "tool_calls",
    "content_filter",
    "end_turn",
    "max_tokens",
    "tool_use",
    "refusal",
]


class ToolCall(BaseModel):
    """A tool call the model makes.

    ``arguments`` as a dict is sent as JSON (an OpenAI JSON string, an Anthropic ``input``
    object). As a string it is sent verbatim, which is how a test gives the model *invalid* JSON
    arguments: OpenAI carries the string as is; Anthropic streams it as ``partial_json`` and, in
    a plain response, puts the string where the ``input`` object belongs.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    # JSON arguments are arbitrary JSON values, hence Any.
    arguments: dict[str, Any] | str = Field(default_factory=dict)
    id: str | None = None


class Usage(BaseModel):
    """Token counts to report instead of the ones the simulator derives from text length."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)


class Reply(BaseModel):
    """One scripted reply: text, tool calls, or both."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    model: str | None = None
