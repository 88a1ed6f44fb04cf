"""The gateway layer: every LLM call goes through it (see DESIGN.md, "Gateway").

One request/response model for OpenAI-compatible and Anthropic providers; classified errors,
retries with backoff that honours ``retry-after``, a circuit breaker per endpoint, fallback
along a route, client-side rate limits, and cost from real usage.
"""

from kernos.gateway._types import (
    ErrorClass,
    FinishReason,
    LLMResponse,
    Message,
    StreamDelta,
    ToolCall,
    ToolSpec,
    Usage,
)

__all__ = [
    "ErrorClass",
    "FinishReason",
    "LLMResponse",
    "Message",
    "StreamDelta",
    "ToolCall",
    "ToolSpec",
    "Usage",
]
