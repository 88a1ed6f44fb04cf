"""Versioned migrations, one list shared by both backends.

A migration is a list of statements written once, with ``{float}``, ``{bigint}``, ``{blob}``
and ``{serial_pk}`` standing for the few types the two dialects spell differently; what one
database does its own way (full-text search) goes in ``by_dialect``, run after the shared
statements on that database only. Migrations only ever append to this list: a released
migration is never edited.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]
    #: statements for one dialect only (by ``Dialect.name``), run after ``statements``
    by_dialect: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def statements_for(self, dialect: str) -> tuple[str, ...]:
        return (*self.statements, *self.by_dialect.get(dialect, ()))


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "runs, journal, leases, timers, messages, schedules, agents",
        (
            """CREATE TABLE kernos_agents (
                name TEXT NOT NULL,
                version TEXT NOT NULL,
                registered_at {float} NOT NULL,
                PRIMARY KEY (name, version)
            )""",
            """CREATE TABLE kernos_runs (
                id TEXT PRIMARY KEY,
                agent TEXT NOT NULL,
                agent_version TEXT NOT NULL,
                state TEXT NOT NULL,
                waiting_for TEXT,
                control TEXT,
                input TEXT NOT NULL,
                output TEXT,
                error TEXT,
                priority INTEGER NOT NULL DEFAULT 0,
                parent_id TEXT,
                schedule TEXT,
                created_at {float} NOT NULL,
                updated_at {float} NOT NULL,
                run_at {float} NOT NULL,
                lease_owner TEXT,
                lease_token {bigint} NOT NULL DEFAULT 0,
                lease_expires_at {float},
                claims INTEGER NOT NULL DEFAULT 0
            )""",
            "CREATE INDEX kernos_runs_runnable ON kernos_runs (state, priority, run_at)",
            "CREATE INDEX kernos_runs_lease ON kernos_runs (state, lease_expires_at)",
            "CREATE INDEX kernos_runs_agent ON kernos_runs (agent, state)",
            "CREATE INDEX kernos_runs_parent ON kernos_runs (parent_id)",
            """CREATE TABLE kernos_journal (
                run_id TEXT NOT NULL,
                seq INTEGER NOT NULL,
                type TEXT NOT NULL,
                step INTEGER,
                name TEXT,
                attempt INTEGER NOT NULL DEFAULT 0,
                payload TEXT NOT NULL,
                created_at {float} NOT NULL,
                duration {float},
                PRIMARY KEY (run_id, seq)
            )""",
            """CREATE TABLE kernos_timers (
                run_id TEXT NOT NULL,
                step INTEGER NOT NULL,
                fire_at {float} NOT NULL,
                PRIMARY KEY (run_id, step)
            )""",
            "CREATE INDEX kernos_timers_due ON kernos_timers (fire_at)",
            """CREATE TABLE kernos_messages (
                id {serial_pk},
                run_id TEXT NOT NULL,
                topic TEXT NOT NULL,
                payload TEXT NOT NULL,
                sender TEXT,
                created_at {float} NOT NULL,
                consumed_step INTEGER
            )""",
            "CREATE INDEX kernos_messages_mailbox ON kernos_messages (run_id, topic, consumed_step)",
            """CREATE TABLE kernos_schedules (
                name TEXT PRIMARY KEY,
                agent TEXT NOT NULL,
                cron TEXT NOT NULL,
                input TEXT NOT NULL,
                priority INTEGER NOT NULL DEFAULT 0,
                next_fire_at {float} NOT NULL,
                created_at {float} NOT NULL
            )""",
        ),
    ),
    Migration(
        2,
        "the reason a person gave with a pause or cancel request",
        ("ALTER TABLE kernos_runs ADD COLUMN control_reason TEXT",),
    ),
    Migration(
        3,
        "the tenant a run (and the runs a schedule starts) is charged to",
        (
            "ALTER TABLE kernos_runs ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default'",
            "CREATE INDEX kernos_runs_tenant ON kernos_runs (tenant, id)",
            "ALTER TABLE kernos_schedules ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default'",
        ),
    ),
    Migration(
        4,
        "long-term memory: memories per namespace and tenant, with full-text search",
        (
            # seq: an integer key for SQLite's FTS5 index to point at (a table's implicit rowid
            # may change on VACUUM); id: the ULID callers see. tenant NULL is a tenant of its
            # own. embedding: little-endian float64s, dimensions their count and norm their
            # Euclidean length (NULL: no embedding), kept so that a search computes only dot
            # products.
            """CREATE TABLE kernos_memories (
                seq {serial_pk},
                id TEXT NOT NULL UNIQUE,
                namespace TEXT NOT NULL,
                tenant TEXT,
                text TEXT NOT NULL,
                metadata TEXT NOT NULL,
                run_id TEXT,
                embedding {blob},
                dimensions INTEGER,
                norm {float},
                created_at {float} NOT NULL
            )""",
            # Counting a namespace, and the vector scan: newest embedded memories first.
            "CREATE INDEX kernos_memories_scope "
            "ON kernos_memories (namespace, tenant, dimensions, seq)",
        ),
        by_dialect={
            # An external-content FTS5 index over text, kept in step by triggers; porter: words
            # match by stem; remove_diacritics 2: "cafe" finds "café".
            "sqlite": (
                "CREATE VIRTUAL TABLE kernos_memories_fts USING fts5(text, "
                "content='kernos_memories', content_rowid='seq', "
                "tokenize='porter unicode61 remove_diacritics 2')",
                "CREATE TRIGGER kernos_memories_fts_insert AFTER INSERT ON kernos_memories "
                "BEGIN INSERT INTO kernos_memories_fts (rowid, text) VALUES (new.seq, new.text); "
                "END",
                "CREATE TRIGGER kernos_memories_fts_delete AFTER DELETE ON kernos_memories "
                "BEGIN INSERT INTO kernos_memories_fts (kernos_memories_fts, rowid, text) "
                "VALUES ('delete', old.seq, old.text); END",
                "CREATE TRIGGER kernos_memories_fts_update AFTER UPDATE OF text "
                "ON kernos_memories BEGIN "
                "INSERT INTO kernos_memories_fts (kernos_memories_fts, rowid, text) "
                "VALUES ('delete', old.seq, old.text); "
                "INSERT INTO kernos_memories_fts (rowid, text) VALUES (new.seq, new.text); END",
            ),
            # A stored tsvector under a GIN index. The configuration ('english': stems, drops
            # stop words) is fixed here; queries must use the same (_postgres.TEXT_CONFIG).
            "postgresql": (
                "ALTER TABLE kernos_memories ADD COLUMN tsv tsvector "
                "GENERATED ALWAYS AS (to_tsvector('english'::regconfig, text)) STORED",
                "CREATE INDEX kernos_memories_tsv ON kernos_memories USING GIN (tsv) "
                "WITH (fastupdate = off)",
            ),
        },
    ),
    Migration(
        5,
        "oversight and governance: approvals, the hash-chained audit log, API keys",
        (
            # id is "<run_id>:<step>": asking again after a crash finds the same approval.
            # details: JSON (the schema of the answer, the tool and its arguments, the rule).
            # answer: JSON the person gave (an answer, or edited arguments), NULL if none.
            """CREATE TABLE kernos_approvals (
                id TEXT PRIMARY KEY,
                run_id TEXT NOT NULL,
                step INTEGER NOT NULL,
                tenant TEXT NOT NULL,
                kind TEXT NOT NULL,
                question TEXT NOT NULL,
                details TEXT NOT NULL,
                state TEXT NOT NULL,
                decided_by TEXT,
                reason TEXT,
                answer TEXT,
                created_at {float} NOT NULL,
                expires_at {float},
                decided_at {float}
            )""",
            "CREATE INDEX kernos_approvals_pending ON kernos_approvals (state, tenant, created_at)",
            "CREATE INDEX kernos_approvals_run ON kernos_approvals (run_id)",
            # Append-only; each entry's hash covers its content and the previous entry's hash,
            # so a modified, deleted, inserted or reordered entry breaks the chain there.
            """CREATE TABLE kernos_audit (
                seq {serial_pk},
                at {float} NOT NULL,
                actor TEXT NOT NULL,
                tenant TEXT,
                action TEXT NOT NULL,
                target TEXT,
                details TEXT NOT NULL,
                prev_hash TEXT NOT NULL,
                hash TEXT NOT NULL
            )""",
            "CREATE INDEX kernos_audit_at ON kernos_audit (at)",
            # Only a hash of each secret is kept; the secret is shown once, at creation.
            """CREATE TABLE kernos_api_keys (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                tenant TEXT,
                role TEXT NOT NULL,
                secret_hash TEXT NOT NULL,
                created_at {float} NOT NULL,
                revoked_at {float}
            )""",
        ),
    ),
    Migration(
        6,
        "budgets: spend and reservations per budget, key and period",
        (
            # One row per budget (its name), key (the run, agent or tenant it counts for) and
            # period (its start). A call reserves its estimate before it is made and settles
            # with its real cost after, so concurrent calls on many workers cannot overspend
            # by more than one call's estimation error each.
            """CREATE TABLE kernos_budget_usage (
                budget TEXT NOT NULL,
                key TEXT NOT NULL,
                period_start {float} NOT NULL,
                usd {float} NOT NULL DEFAULT 0,
                tokens {bigint} NOT NULL DEFAULT 0,
                reserved_usd {float} NOT NULL DEFAULT 0,
                reserved_tokens {bigint} NOT NULL DEFAULT 0,
                updated_at {float} NOT NULL,
                PRIMARY KEY (budget, key, period_start)
            )""",
        ),
    ),
    Migration(
        7,
        "MCP tool pins: each server's tool definitions as accepted, and changes pending review",
        (
            # One row per server (its name) and tool. hash: sha256 of the canonical JSON of
            # definition (name, description, inputSchema) as accepted; pending_*: the latest
            # different definition the server listed, withheld from models until an admin
            # accepts it (kernos tools accept), when it becomes the accepted one.
            """CREATE TABLE kernos_tool_pins (
                server TEXT NOT NULL,
                tool TEXT NOT NULL,
                hash TEXT NOT NULL,
                definition TEXT NOT NULL,
                pending_hash TEXT,
                pending_definition TEXT,
                first_seen_at {float} NOT NULL,
                accepted_at {float} NOT NULL,
                accepted_by TEXT NOT NULL,
                pending_seen_at {float},
                PRIMARY KEY (server, tool)
            )""",
        ),
    ),
    Migration(
        8,
        "who started a run (an API key's name, a person), for policy and the audit",
        ("ALTER TABLE kernos_runs ADD COLUMN principal TEXT",),
    ),
    Migration(
        9,
        "budget holds per call (released when a killed worker's call is made again or its run "
        "ends); approval escalation; the notification outbox",
        (
            # What one LLM call (id: <run_id>:<position>) has reserved, so that a successor
            # making the same call again replaces the reservation instead of adding a second,
            # and a run that ends releases what its calls still held.
            """CREATE TABLE kernos_budget_holds (
                id TEXT PRIMARY KEY,
                run_id TEXT NOT NULL,
                charges TEXT NOT NULL,
                created_at {float} NOT NULL
            )""",
            "CREATE INDEX kernos_budget_holds_run ON kernos_budget_holds (run_id)",
            # escalates: the deadline escalates rather than decides; escalated_at: when it did.
            "ALTER TABLE kernos_approvals ADD COLUMN escalates INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE kernos_approvals ADD COLUMN escalated_at {float}",
            # Notifications to deliver (a webhook), committed with what they announce and
            # delivered by whichever worker claims them: they survive the worker that asked.
            """CREATE TABLE kernos_outbox (
                id TEXT PRIMARY KEY,
                topic TEXT NOT NULL,
                tenant TEXT,
                body TEXT NOT NULL,
                created_at {float} NOT NULL,
                next_at {float} NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                claimed_until {float},
                delivered_at {float},
                failed_at {float},
                last_error TEXT
            )""",
            "CREATE INDEX kernos_outbox_due ON kernos_outbox (next_at) "
            "WHERE delivered_at IS NULL AND failed_at IS NULL",
        ),
    ),
    Migration(
        10,
        "the fleet: workers with their versions, load and heartbeat; retired agent versions",
        (
            # One row per worker process, written when it starts, with each heartbeat (in the
            # transaction that renews its leases) and when it stops cleanly. versions: JSON list
            # of "name@version" it executes; info: JSON (its gateway's breaker states). A row
            # whose heartbeat is older than a few of its lease_ttl is a dead worker.
            """CREATE TABLE kernos_workers (
                id TEXT PRIMARY KEY,
                host TEXT NOT NULL,
                pid INTEGER NOT NULL,
                versions TEXT NOT NULL,
                concurrency INTEGER NOT NULL,
                active INTEGER NOT NULL DEFAULT 0,
                lease_ttl {float} NOT NULL,
                started_at {float} NOT NULL,
                heartbeat_at {float} NOT NULL,
                stopped_at {float},
                info TEXT NOT NULL
            )""",
            "CREATE INDEX kernos_workers_heartbeat ON kernos_workers (heartbeat_at)",
            # A retired version takes no new runs; the runs it has finish on it.
            "ALTER TABLE kernos_agents ADD COLUMN retired_at {float}",
            "ALTER TABLE kernos_agents ADD COLUMN retired_by TEXT",
            "ALTER TABLE kernos_agents ADD COLUMN retired_reason TEXT",
        ),
    ),
    Migration(
        11,
        "find the newest audit entry of an action on a target without reading the log",
        ("CREATE INDEX kernos_audit_action_target ON kernos_audit (action, target, seq)",),
    ),
    Migration(
        12,
        "the gateway state a worker shares with the fleet: rate-limit shares, pauses, breakers",
        (
            # JSON: {"providers": [...], "paused": {provider: until}, "open": {endpoint:
            # [until, cooldown]}}, times on the database's clock; NULL until the worker's
            # gateway first publishes (a worker without one never does).
            "ALTER TABLE kernos_workers ADD COLUMN gateway TEXT",
        ),
    ),
    Migration(
        13,
        "who wrote each journal event: the lease token of its owner (NULL: no lease holder)",
        (
            # Fencing refuses a stale owner's write; this column lets anyone check afterwards
            # that it did (each event's token is the one its run's latest claim was given).
            "ALTER TABLE kernos_journal ADD COLUMN lease_token {bigint}",
        ),
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version
