"""What the two SDK-backed providers share: one attempt's dispatch and the SDK's exceptions.

The official ``openai`` and ``anthropic`` SDKs come from the same generator and raise the same
exception tree (``APIStatusError``, ``APITimeoutError``, ``APIConnectionError``,
``APIResponseValidationError``, ``APIError``), so one translation into ``ProviderError`` serves
both; a subclass only builds requests and reads answers.

Requests go through the SDK client's documented low-level ``post`` (its client, auth, headers,
timeouts, SSE decoding and exceptions), with a body that is already plain JSON and the answer
read as JSON: ``create()`` would first run the body through the SDK's type-driven transform and
then build its response models, about 0.3 ms of CPU per call that the gateway, which reads
every answer into its own model anyway, does not need (benchmark (f)).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any, ClassVar, Protocol

from kernos.gateway._provider import (
    LLMRequest,
    OnDelta,
    ProviderError,
    ProviderResult,
    classify_body,
    classify_status,
    classify_transport,
    malformed,
)
from kernos.gateway._types import ErrorClass

#: what the SDK hands back for a JSON answer or stream event
JsonObject = dict[str, Any]
_SHAPE_ERRORS = (KeyError, TypeError, AttributeError, IndexError)


class StreamReader(Protocol):
    """One stream's events read into one answer (or a truncation, if it ends early)."""

    def take(self, event: JsonObject, on_delta: OnDelta | None, attempt: int) -> None: ...

    def result(self) -> ProviderResult: ...


def parse_shape(
    parse: Callable[[Any, str], ProviderResult], data: Any, model: str
) -> ProviderResult:
    """``parse(data, model)``, where an answer of the wrong shape is a malformed response."""
    try:
        return parse(data, model)
    except _SHAPE_ERRORS as exc:
        raise malformed(exc) from exc


class SdkProvider:
    """A provider over an official SDK whose client has its own retries switched off."""

    #: the SDK module whose exceptions this provider translates, and its async client class
    sdk: ModuleType
    client_class: Any
    #: the endpoint, under the base URL; what a streamed request adds to the body
    path: str
    stream_body: ClassVar[dict[str, Any]] = {"stream": True}

    def __init__(
        self,
        name: str,
        *,
        base_url: str,
        api_key: str,
        timeout: float = 60.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self._client = self.client_class(
            base_url=base_url,
            api_key=api_key or "none",  # a local server needs none; the SDK insists on one
            max_retries=0,  # retries are the gateway's: one HTTP request per attempt
            timeout=timeout,
            default_headers=dict(headers or {}),
        )

    async def aclose(self) -> None:
        await self._client.close()

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
        kwargs = self._request(model, request)
        try:
            if stream:
                return await self._stream(kwargs, timeout, dict(headers), on_delta, attempt)
            return await self._plain(kwargs, timeout, dict(headers), model)
        except ProviderError:
            raise
        except Exception as exc:
            error = self._classify(exc, timeout)
            if error is None:
                raise
            raise error from exc

    def _request(self, model: str, request: LLMRequest) -> dict[str, Any]:
        raise NotImplementedError

    def _answer(self, data: Any, model: str) -> ProviderResult:
        """A plain answer's JSON read into a result."""
        raise NotImplementedError

    def _reader(self, model: str) -> StreamReader:
        raise NotImplementedError

    async def _plain(
        self, kwargs: dict[str, Any], timeout: float, headers: dict[str, str], model: str
    ) -> ProviderResult:
        data = await self._client.post(
            self.path,
            cast_to=JsonObject,
            body=kwargs,
            options={"timeout": timeout, "headers": headers},
        )
        return parse_shape(self._answer, data, model)

    async def _stream(
        self,
        kwargs: dict[str, Any],
        timeout: float,
        headers: dict[str, str],
        on_delta: OnDelta | None,
        attempt: int,
    ) -> ProviderResult:
        stream = await self._client.post(
            self.path,
            cast_to=JsonObject,
            body={**kwargs, **self.stream_body},
            options={"timeout": timeout, "headers": headers},
            stream=True,
            stream_cls=self.sdk.AsyncStream[JsonObject],
        )
        reader = self._reader(kwargs["model"])
        try:
            async for event in stream:
                try:
                    reader.take(event, on_delta, attempt)
                except _SHAPE_ERRORS as exc:
                    raise malformed(exc) from exc
        finally:
            await stream.close()
        return reader.result()

    def _classify(self, exc: Exception, timeout: float) -> ProviderError | None:
        sdk = self.sdk
        if isinstance(exc, sdk.APIStatusError):
            if exc.status_code < 400:  # an error event inside a 200 stream
                return classify_body(exc.body, exc.message)
            return classify_status(exc.status_code, exc.body, exc.response.headers, exc.message)
        if isinstance(exc, sdk.APITimeoutError):
            return ProviderError(ErrorClass.TIMEOUT, f"no answer within {timeout:g}s")
        if isinstance(exc, sdk.APIConnectionError):
            return ProviderError(ErrorClass.CONNECTION, str(exc))
        if isinstance(exc, sdk.APIResponseValidationError):
            return malformed(exc)
        if isinstance(exc, sdk.APIError):
            return classify_body(exc.body, exc.message)
        if isinstance(exc, ValueError):  # a body or an SSE frame that is not JSON
            return malformed(exc)
        # some SDKs let raw HTTP errors escape while a stream is read
        return classify_transport(exc)
