"""Exporting runs as OpenTelemetry traces, configured the standard way.

Off unless the environment asks for it (``OTEL_TRACES_EXPORTER=otlp``, or an
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), and off when
``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none``: a worker without it pays nothing.
The protocol is ``OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL``: ``http/protobuf`` (the default) or
``grpc``; the endpoint is ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, or ``OTEL_EXPORTER_OTLP_ENDPOINT``
(``/v1/traces`` appended over HTTP); headers, certificates, timeouts and compression are read
by the official exporters from their own ``OTEL_*`` variables. The resource is the SDK's
(``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``), ``service.name`` defaulting to
``kernos-worker``.

Spans are built from committed journal events (``kernos.telemetry._spans``) with ids derived
from the run, and handed to the batch processor already ended: there is no live span state in
the worker to lose or leak, and a resumed run continues the same trace. Message and tool
contents are exported only with ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``
(or ``KERNOS_OTEL_CAPTURE_CONTENT=true``), and they are the journal's, so already redacted.

What a worker killed by SIGKILL had batched but not yet sent is lost (at most one batch delay,
``OTEL_BSP_SCHEDULE_DELAY``, 1 s here by default); what it had committed and not batched is
not re-exported by its successor, which sees only what it commits itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import version as package_version
from typing import Any
from urllib.parse import unquote

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status, StatusCode

from kernos.errors import ConfigError
from kernos.store import Event, Run
from kernos.telemetry._ids import trace_id_of
from kernos.telemetry._spans import SpanData, spans_of

_TRUE = {"1", "true", "yes", "on"}
_KINDS = {"internal": SpanKind.INTERNAL, "client": SpanKind.CLIENT}
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)


class TraceExporter:
    """A kernel ``Observer`` that exports what a worker commits as spans."""

    def __init__(
        self,
        processor: SpanProcessor,
        *,
        resource: Resource | None = None,
        content: bool = False,
        providers: Mapping[str, str] | None = None,
    ) -> None:
        self.processor = processor
        #: configured provider name -> kind (``gen_ai.provider.name`` takes the kind)
        self.providers = dict(providers or {})
        self.resource = resource or Resource.create({"service.name": "kernos-worker"})
        self.content = content
        self._scope = InstrumentationScope("kernos", _kernos_version())

    def committed(self, run: Run, events: Sequence[Event]) -> None:
        for data in spans_of(run, events, content=self.content, providers=self.providers):
            self.processor.on_end(self._readable(run.id, data))

    def claimed(self, run: Run, waited: float) -> None:
        pass

    def leases(self, renewed: int, lost: int) -> None:
        pass

    def flush(self, timeout_millis: int = 10_000) -> bool:
        """Send what is batched now (a test; a worker about to stop)."""
        return self.processor.force_flush(timeout_millis)

    def shutdown(self) -> None:
        self.processor.shutdown()

    async def aclose(self) -> None:
        """A worker stopping: send what is batched, then stop the processor's thread."""
        self.processor.force_flush(5_000)
        self.processor.shutdown()

    def _readable(self, run_id: str, data: SpanData) -> ReadableSpan:
        trace_id = trace_id_of(run_id)
        context = SpanContext(trace_id, data.span_id, is_remote=False, trace_flags=_SAMPLED)
        parent = (
            SpanContext(trace_id, data.parent_id, is_remote=False, trace_flags=_SAMPLED)
            if data.parent_id is not None
            else None
        )
        attributes: dict[str, Any] = dict(data.attributes)
        status = Status(StatusCode.UNSET)
        if data.error is not None:
            attributes["error.type"] = data.error
            status = Status(StatusCode.ERROR, data.message or data.error)
        start = int(data.start * 1e9)
        return ReadableSpan(
            name=data.name,
            context=context,
            parent=parent,
            resource=self.resource,
            attributes=attributes,
            kind=_KINDS.get(data.kind, SpanKind.INTERNAL),
            status=status,
            start_time=start,
            end_time=max(start, int(data.end * 1e9)),
            instrumentation_scope=self._scope,
        )


@dataclass(frozen=True, slots=True)
class TracingSettings:
    """What the ``OTEL_*`` variables ask for, checked (a bad value fails at start)."""

    protocol: str
    endpoint: str | None
    traces_endpoint: str | None
    insecure: bool
    delay_ms: float
    resource: dict[str, str]
    content: bool


def tracing_settings(
    env: Mapping[str, str] = os.environ, *, service_name: str = "kernos-worker"
) -> TracingSettings | None:
    """The tracing the environment asks for, or None (tracing off)."""
    if env.get("OTEL_SDK_DISABLED", "").lower() in _TRUE:
        return None
    exporters = {e.strip() for e in env.get("OTEL_TRACES_EXPORTER", "").lower().split(",") if e}
    if "none" in exporters:
        return None
    traces_endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    endpoint = traces_endpoint or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if "otlp" not in exporters and not endpoint:
        return None
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).lower()
    if protocol not in ("grpc", "http/protobuf"):
        raise ConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported by kernos; use "
            f"'http/protobuf' (the default) or 'grpc'"
        )
    insecure = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_INSECURE")
        or env.get("OTEL_EXPORTER_OTLP_INSECURE")
        or ""
    ).lower() in _TRUE or (endpoint or "").startswith("http://")
    try:
        delay = float(env.get("OTEL_BSP_SCHEDULE_DELAY", "1000"))
    except ValueError:
        raise ConfigError(
            f"OTEL_BSP_SCHEDULE_DELAY={env.get('OTEL_BSP_SCHEDULE_DELAY')!r} is not a number of "
            f"milliseconds"
        ) from None
    resource: dict[str, str] = {}
    for item in env.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            resource[unquote(key.strip())] = unquote(value.strip())
    resource["service.name"] = (
        env.get("OTEL_SERVICE_NAME") or resource.get("service.name") or service_name
    )
    content = any(
        env.get(name, "").lower() in _TRUE
        for name in (
            "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT",
            "KERNOS_OTEL_CAPTURE_CONTENT",
        )
    )
    return TracingSettings(
        protocol=protocol,
        endpoint=env.get("OTEL_EXPORTER_OTLP_ENDPOINT"),
        traces_endpoint=traces_endpoint,
        insecure=insecure,
        delay_ms=delay,
        resource=resource,
        content=content,
    )


def tracing_from_env(
    env: Mapping[str, str] = os.environ, *, service_name: str = "kernos-worker"
) -> TraceExporter | None:
    """An in-process exporter as the ``OTEL_*`` variables ask, or None (tracing off)."""
    settings = tracing_settings(env, service_name=service_name)
    return None if settings is None else exporter_for(settings)


def exporter_for(settings: TracingSettings) -> TraceExporter:
    exporter: SpanExporter
    if settings.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        exporter = GrpcExporter(
            endpoint=settings.traces_endpoint or settings.endpoint,
            insecure=settings.insecure or None,
        )
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )

        base = settings.endpoint
        url = settings.traces_endpoint or (f"{base.rstrip('/')}/v1/traces" if base else None)
        exporter = HttpExporter(endpoint=url)
    return TraceExporter(
        BatchSpanProcessor(exporter, schedule_delay_millis=settings.delay_ms),
        resource=Resource.create(settings.resource),
        content=settings.content,
        providers=_provider_kinds(),
    )


def _provider_kinds() -> dict[str, str]:
    """Provider name -> kind from kernos.toml (the worker's own config); {} without one."""
    from kernos.gateway import load_config

    try:
        return {name: p.kind for name, p in load_config().providers.items()}
    except Exception:  # a trace without well-known provider names beats no trace
        return {}


def _kernos_version() -> str:
    try:
        return package_version("kernos")
    except Exception:  # running from a source tree without metadata
        return "0"
