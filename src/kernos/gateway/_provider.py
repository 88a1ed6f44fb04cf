"""What a provider family implements, and how its failures are classified.

A provider turns one normalized request into one complete answer or one ``ProviderError``
carrying an ``ErrorClass``: the engine (retries, breaker, fallback) never looks at an SDK's
exception types, status codes or bodies. Classification reads status codes and error codes
first and message text last, because that is what stays stable across SDK versions and the
many OpenAI-compatible servers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from kernos.gateway._backoff import parse_retry_after
from kernos.gateway._types import (
    ErrorClass,
    FinishReason,
    Message,
    StreamDelta,
    ToolCall,
    ToolSpec,
    Usage,
)

OnDelta = Callable[[StreamDelta], None]


@dataclass(frozen=True, slots=True)
class LLMRequest:
    """One call as the agent asked for it, before any family's translation."""

    messages: tuple[Message, ...]
    tools: tuple[ToolSpec, ...] = ()
    #: passed through: max_tokens, temperature, top_p, stop, ... (family-specific ones too)
    params: Mapping[str, Any] = field(default_factory=dict)

    def estimated_tokens(self) -> int:
        """A cheap guess of the tokens a call will use (for the client-side token limit)."""
        chars = sum(len(m.content or "") for m in self.messages)
        chars += sum(len(json.dumps(t.parameters)) + len(t.description) for t in self.tools)
        return chars // 4 + int(self.params.get("max_tokens") or 1024)


@dataclass(frozen=True, slots=True)
class ProviderResult:
    """A complete answer from one attempt (the engine adds cost, timing and attempt count)."""

    text: str
    tool_calls: tuple[ToolCall, ...]
    finish_reason: FinishReason
    usage: Usage
    model: str


class ProviderError(Exception):
    """One attempt failed, classified. ``usage`` is what the provider billed anyway (a
    stream cut after some output still costs its tokens)."""

    def __init__(
        self,
        error_class: ErrorClass,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        usage: Usage | None = None,
    ) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.status = status
        self.retry_after = retry_after
        self.usage = usage or Usage()


class ModelProvider(Protocol):
    """One configured provider (an endpoint of one family) that can answer requests."""

    name: str

    async def complete(
        self,
        model: str,
        request: LLMRequest,
        *,
        timeout: float,
        headers: Mapping[str, str],
        stream: bool,
        on_delta: OnDelta | None,
        attempt: int,
    ) -> ProviderResult:
        """Answer in full or raise ``ProviderError``; a stream is consumed to its end here."""
        ...

    async def aclose(self) -> None: ...


_CONTEXT_MARKERS = (
    "context_length_exceeded",
    "maximum context length",
    "context window",
    "prompt is too long",
    "too many tokens",
    "reduce the length",
)
_FILTER_MARKERS = ("content_policy", "content_filter", "content management policy", "safety")
_OVERLOADED_MARKERS = ("overloaded",)
_QUOTA_MARKERS = ("insufficient_quota", "quota", "billing")


def classify_status(
    status: int, body: object, headers: Mapping[str, str], message: str
) -> ProviderError:
    """An HTTP error response as a ``ProviderError``, from its status, code and text."""
    text = f"{_error_text(body)} {message}".lower()
    retry_after = parse_retry_after(headers)
    if status == 429:
        if any(m in text for m in _QUOTA_MARKERS) and "rate" not in text:
            # out of credit: waiting does not help, and the operator must act
            return ProviderError(ErrorClass.AUTH, message, status=status)
        return ProviderError(
            ErrorClass.RATE_LIMITED, message, status=status, retry_after=retry_after
        )
    if status == 529 or (status >= 500 and any(m in text for m in _OVERLOADED_MARKERS)):
        return ProviderError(ErrorClass.OVERLOADED, message, status=status, retry_after=retry_after)
    if status in (408, 504):
        return ProviderError(ErrorClass.TIMEOUT, message, status=status, retry_after=retry_after)
    if status >= 500:
        return ProviderError(
            ErrorClass.SERVER_ERROR, message, status=status, retry_after=retry_after
        )
    if status in (401, 402, 403):
        return ProviderError(ErrorClass.AUTH, message, status=status)
    if status == 404:
        return ProviderError(ErrorClass.NOT_FOUND, message, status=status)
    if status == 413 or any(m in text for m in _CONTEXT_MARKERS):
        return ProviderError(ErrorClass.CONTEXT_TOO_LONG, message, status=status)
    if any(m in text for m in _FILTER_MARKERS):
        return ProviderError(ErrorClass.CONTENT_FILTERED, message, status=status)
    return ProviderError(ErrorClass.BAD_REQUEST, message, status=status)


def _error_text(body: object) -> str:
    """The code, type and message of a provider's JSON error body, whatever its shape."""
    if not isinstance(body, dict):
        return str(body or "")
    error = body.get("error", body)
    if not isinstance(error, dict):
        return str(error)
    return " ".join(str(error.get(k) or "") for k in ("type", "code", "message"))


_BODY_CLASSES = (
    ("rate_limit", ErrorClass.RATE_LIMITED),
    ("overloaded", ErrorClass.OVERLOADED),
    ("authentication", ErrorClass.AUTH),
    ("permission", ErrorClass.AUTH),
    ("not_found", ErrorClass.NOT_FOUND),
    ("context_length", ErrorClass.CONTEXT_TOO_LONG),
    ("timeout", ErrorClass.TIMEOUT),
)


def classify_body(body: object, message: str) -> ProviderError:
    """An error that arrived inside a 200 stream: only its body's type or code tells."""
    text = f"{_error_text(body)} {message}".lower()
    for marker, error_class in _BODY_CLASSES:
        if marker in text:
            return ProviderError(error_class, message)
    if any(m in text for m in _CONTEXT_MARKERS):
        return ProviderError(ErrorClass.CONTEXT_TOO_LONG, message)
    if "invalid_request" in text:
        return ProviderError(ErrorClass.BAD_REQUEST, message)
    # a stream that died with an error of no known kind: the server's fault, retryable
    return ProviderError(ErrorClass.SERVER_ERROR, message)


def classify_transport(exc: BaseException) -> ProviderError | None:
    """A raw HTTP-library error (some SDKs let them escape while a stream is read)."""
    module = type(exc).__module__
    if not module.startswith(("httpx", "httpcore", "h11", "h2")):
        return None
    name = type(exc).__name__
    message = f"{name}: {exc}" if str(exc) else name
    if "Timeout" in name:
        return ProviderError(ErrorClass.TIMEOUT, message)
    return ProviderError(ErrorClass.CONNECTION, message)


def malformed(exc: BaseException) -> ProviderError:
    return ProviderError(
        ErrorClass.MALFORMED_RESPONSE,
        f"the provider's answer could not be read: {type(exc).__name__}: {exc}",
    )


def truncated(what: str, usage: Usage) -> ProviderError:
    return ProviderError(
        ErrorClass.TRUNCATED_RESPONSE,
        f"the stream ended before its {what}: the answer is incomplete and was discarded",
        usage=usage,
    )
