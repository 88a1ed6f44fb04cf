"""The store layer: one schema on SQLite or PostgreSQL, behind the ``Store`` protocol."""

from kernos.store._commit import CommitStats
from kernos.store._ids import new_run_id
from kernos.store._open import DEFAULT_URL, open_store
from kernos.store._protocol import Heartbeat, Store, Timer
from kernos.store._records import (
    AgentVersion,
    ChildWait,
    Claim,
    Control,
    Event,
    EventTotals,
    JsonPath,
    Memory,
    MemoryHit,
    Message,
    MessageWait,
    NewMemory,
    NewRun,
    Run,
    RunState,
    Schedule,
    SchemaStatus,
    SuspendResult,
    WakeCheck,
)
from kernos.store._schema import LATEST_VERSION
from kernos.store._sql import DEFAULT_MAX_PAYLOAD, SqlStore

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "DEFAULT_URL",
    "LATEST_VERSION",
    "AgentVersion",
    "ChildWait",
    "Claim",
    "CommitStats",
    "Control",
    "Event",
    "EventTotals",
    "Heartbeat",
    "JsonPath",
    "Memory",
    "MemoryHit",
    "Message",
    "MessageWait",
    "NewMemory",
    "NewRun",
    "Run",
    "RunState",
    "Schedule",
    "SchemaStatus",
    "SqlStore",
    "Store",
    "SuspendResult",
    "Timer",
    "WakeCheck",
    "new_run_id",
    "open_store",
]
