"""The kernel layer: durable runs by replay, workers, leases, timers, messages, schedules."""

from kernos.kernel._calls import (
    CallCheck,
    CallRecord,
    CallService,
    DurableCall,
    DurableTool,
    Gatekeeper,
    Verdict,
)
from kernos.kernel._client import Client, connect, format_time, output_of
from kernos.kernel._codec import parse_json
from kernos.kernel._context import ChildHandle, HumanDecision, RunContext
from kernos.kernel._execution import idempotency_key
from kernos.kernel._faults import Faults
from kernos.kernel._memory import Embedder, RunMemory, Scrubber
from kernos.kernel._notify import (
    ESCALATED,
    NEEDS_PERSON,
    Delivery,
    NotificationPump,
    Notifier,
    approval_notification,
)
from kernos.kernel._observe import Observer, Observers
from kernos.kernel._registry import REGISTRY, AgentSpec, Registry, agent, load_app
from kernos.kernel._replay import KIND_OF as STEP_KINDS
from kernos.kernel._retry import DEFAULT_RETRY, RetryPolicy, retry
from kernos.kernel._settings import Settings, load_settings
from kernos.kernel._worker import FleetMember, Worker, WorkerConfig, tune_gc
from kernos.store import TenantLimits

__all__ = [
    "DEFAULT_RETRY",
    "ESCALATED",
    "NEEDS_PERSON",
    "REGISTRY",
    "STEP_KINDS",
    "AgentSpec",
    "CallCheck",
    "CallRecord",
    "CallService",
    "ChildHandle",
    "Client",
    "Delivery",
    "DurableCall",
    "DurableTool",
    "Embedder",
    "Faults",
    "FleetMember",
    "Gatekeeper",
    "HumanDecision",
    "NotificationPump",
    "Notifier",
    "Observer",
    "Observers",
    "Registry",
    "RetryPolicy",
    "RunContext",
    "RunMemory",
    "Scrubber",
    "Settings",
    "TenantLimits",
    "Verdict",
    "Worker",
    "WorkerConfig",
    "agent",
    "approval_notification",
    "connect",
    "format_time",
    "idempotency_key",
    "load_app",
    "load_settings",
    "output_of",
    "parse_json",
    "retry",
    "tune_gc",
]
