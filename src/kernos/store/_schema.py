"""Versioned migrations, one list shared by both backends.

A migration is a list of statements written once, with ``{float}``, ``{bigint}`` and
``{serial_pk}`` standing for the few types the two dialects spell differently. Migrations only
ever append to this list: a released migration is never edited.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


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
)

LATEST_VERSION = MIGRATIONS[-1].version
