"""The telemetry layer: what a worker commits, exported as OpenTelemetry traces (GenAI
conventions, one trace per run) and Prometheus metrics; JSON logs that name run, step and
trace. Everything here observes the journal through the kernel's ``Observer`` protocol; with
nothing configured, nothing runs."""

from kernos.telemetry._fleet import fleet_metrics
from kernos.telemetry._ids import span_id_of, trace_id_hex, trace_id_of
from kernos.telemetry._logs import JsonFormatter, configure_logging
from kernos.telemetry._metrics import MAX_TENANTS, WorkerMetrics
from kernos.telemetry._serve import serve_metrics
from kernos.telemetry._sidecar import SpanPipe
from kernos.telemetry._spans import SpanData, call_span_id, run_span_id, spans_of
from kernos.telemetry._tracing import (
    TraceExporter,
    TracingSettings,
    exporter_for,
    tracing_from_env,
    tracing_settings,
)

__all__ = [
    "MAX_TENANTS",
    "JsonFormatter",
    "SpanData",
    "SpanPipe",
    "TraceExporter",
    "TracingSettings",
    "WorkerMetrics",
    "call_span_id",
    "configure_logging",
    "exporter_for",
    "fleet_metrics",
    "run_span_id",
    "serve_metrics",
    "span_id_of",
    "spans_of",
    "trace_id_hex",
    "trace_id_of",
    "tracing_from_env",
    "tracing_settings",
]
