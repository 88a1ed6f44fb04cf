"""The fleet: which workers are alive, which agent versions they serve, and retired versions.

A worker writes its row when it starts, refreshes it in the transaction that renews its leases
(no extra commit per heartbeat), and marks it stopped when it drains. Nothing else is trusted:
a worker killed with SIGKILL never says goodbye, so a row whose heartbeat is older than
``DEAD_AFTER_TTLS`` of the worker's own lease TTL is shown as dead, judged on the database's
clock (the clock leases live on), never on the reader's. Rows of workers stopped or dead for
more than ``PRUNE_AFTER`` are deleted when a worker starts.

A run is pinned to the version it started on and is claimed only by workers that have that
version's code (guarantee 8). Retiring a version refuses new runs of it (``create_run``, cron
schedules) while the runs it has keep going on it; it is drained when none is left. Runs whose
version no live worker executes are not lost and never moved to another version: they wait,
and ``VersionStatus.stranded`` says so.

Each worker's gateway also publishes on its row what the others should know (``gateway``,
migration 12): the providers whose rate limits it shares, a provider's ``retry-after`` pause and
the breakers that failures opened. Those times are stored on the database's clock, and a reader
gets them back as seconds from its read, so workers whose clocks disagree still pause together.

Every function here works inside a transaction the store opened.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from kernos.errors import AgentNotFound, InvalidState
from kernos.store._dialect import Tx, placeholders
from kernos.store._oversight import append_audit
from kernos.store._records import (
    BreakerHold,
    FleetGateway,
    GatewayReport,
    RunState,
    VersionStatus,
    WorkerRecord,
    WorkerRegistration,
    WorkerState,
)

#: a worker silent for this many of its lease TTLs is dead (it beats every third of one)
DEAD_AFTER_TTLS = 3.0
#: rows of workers stopped or dead for longer than this (seconds) are pruned
PRUNE_AFTER = 86_400.0
#: the states of a run that has not ended
LIVE_STATES = (RunState.QUEUED, RunState.RUNNING, RunState.WAITING, RunState.PAUSED)

_WORKER_COLUMNS = (
    "id, host, pid, versions, concurrency, active, lease_ttl, started_at, heartbeat_at, "
    "stopped_at, info"
)


class VersionRetired(InvalidState):
    """A new run was asked of an agent version that is retired.

    ``retired`` holds every retired version of the agent, so that a caller that did not name a
    version can pick one that takes runs.
    """

    def __init__(
        self,
        agent: str,
        version: str,
        *,
        retired_at: float,
        retired_by: str | None,
        reason: str | None,
        retired: frozenset[str],
    ) -> None:
        self.agent = agent
        self.version = version
        self.retired = retired
        when = datetime.fromtimestamp(retired_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        why = f" ({reason})" if reason else ""
        super().__init__(
            f"agent {agent!r} version {version!r} was retired at {when} by "
            f"{retired_by or 'someone'}{why}, so it takes no new runs (those it has finish on "
            f"it); start the run on another version (`kernos agents` lists them), or put this "
            f"one back with `kernos agents unretire {agent} {version}`"
        )


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


# -- workers ---------------------------------------------------------------------------------


def register_worker(tx: Tx, reg: WorkerRegistration, now: float) -> None:
    """Write the worker's row (again, if it restarts under the same id); prune old rows."""
    cutoff = now - PRUNE_AFTER
    tx.execute(
        "DELETE FROM kernos_workers WHERE (stopped_at IS NOT NULL AND stopped_at < ?) "
        "OR heartbeat_at < ?",
        (cutoff, cutoff),
    )
    tx.execute(
        f"INSERT INTO kernos_workers ({_WORKER_COLUMNS}) "
        "VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?, NULL, ?) "
        "ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid, "
        "versions = excluded.versions, concurrency = excluded.concurrency, active = 0, "
        "lease_ttl = excluded.lease_ttl, started_at = excluded.started_at, "
        "heartbeat_at = excluded.heartbeat_at, stopped_at = NULL, info = excluded.info, "
        "gateway = NULL",
        (
            reg.id,
            reg.host,
            reg.pid,
            _dumps(list(reg.versions)),
            reg.concurrency,
            reg.lease_ttl,
            now,
            now,
            _dumps(reg.info),
        ),
    )


def beat_worker(tx: Tx, worker_id: str, now: float, active: int, info: dict[str, Any]) -> None:
    """Refresh a running worker's heartbeat, load and info (a stopped row stays stopped)."""
    tx.execute(
        "UPDATE kernos_workers SET heartbeat_at = ?, active = ?, info = ? "
        "WHERE id = ? AND stopped_at IS NULL",
        (now, active, _dumps(info), worker_id),
    )


def stop_worker(tx: Tx, worker_id: str, now: float) -> None:
    tx.execute(
        "UPDATE kernos_workers SET stopped_at = ?, heartbeat_at = ?, active = 0 "
        "WHERE id = ? AND stopped_at IS NULL",
        (now, now, worker_id),
    )


def worker_state(
    *, stopped_at: float | None, heartbeat_at: float, lease_ttl: float, now: float
) -> WorkerState:
    if stopped_at is not None:
        return WorkerState.STOPPED
    if now - heartbeat_at > DEAD_AFTER_TTLS * lease_ttl:
        return WorkerState.DEAD
    return WorkerState.ALIVE


def list_workers(tx: Tx, now: float) -> list[WorkerRecord]:
    """Every worker row not yet pruned, alive first, then by when they started."""
    rows = tx.fetchall(f"SELECT {_WORKER_COLUMNS} FROM kernos_workers ORDER BY started_at, id")
    workers = [
        WorkerRecord(
            id=r[0],
            host=r[1],
            pid=int(r[2]),
            versions=tuple(json.loads(r[3])),
            concurrency=int(r[4]),
            active=int(r[5]),
            lease_ttl=float(r[6]),
            started_at=float(r[7]),
            heartbeat_at=float(r[8]),
            stopped_at=r[9],
            info=json.loads(r[10]),
            state=worker_state(
                stopped_at=r[9], heartbeat_at=float(r[8]), lease_ttl=float(r[6]), now=now
            ),
            heartbeat_age=max(0.0, now - float(r[8])),
        )
        for r in rows
    ]
    order = {WorkerState.ALIVE: 0, WorkerState.DEAD: 1, WorkerState.STOPPED: 2}
    return sorted(workers, key=lambda w: order[w.state])


# -- the gateway's state, shared across the fleet -------------------------------------------


def publish_gateway(tx: Tx, worker_id: str, report: GatewayReport, now: float) -> None:
    """Replace what a running worker's gateway tells the fleet (a stopped row stays silent)."""
    shared = {
        "providers": sorted(set(report.providers)),
        "paused": {p: now + left for p, left in report.paused.items() if left > 0},
        "open": {
            e: [now + hold.remaining, hold.cooldown]
            for e, hold in report.open.items()
            if hold.remaining > 0
        },
    }
    tx.execute(
        "UPDATE kernos_workers SET gateway = ? WHERE id = ? AND stopped_at IS NULL",
        (_dumps(shared), worker_id),
    )


def read_gateway(tx: Tx, worker_id: str, now: float) -> FleetGateway:
    """The live workers' gateways as ``worker_id`` sees them: how many share each provider
    (the reader counts itself once it has published, even if its heartbeat is late), and the longest pause and open breaker among the
    others, as seconds from ``now``."""
    rows = tx.fetchall(
        "SELECT id, gateway, heartbeat_at, lease_ttl FROM kernos_workers "
        "WHERE stopped_at IS NULL AND gateway IS NOT NULL"
    )
    sharing: dict[str, int] = defaultdict(int)
    paused: dict[str, float] = {}
    opened: dict[str, BreakerHold] = {}
    for wid, raw, heartbeat_at, lease_ttl in rows:
        mine = wid == worker_id
        if not mine and now - float(heartbeat_at) > DEAD_AFTER_TTLS * float(lease_ttl):
            continue  # dead: what it said is no longer news
        shared = json.loads(raw)
        for provider in shared.get("providers", ()):
            sharing[provider] += 1
        if mine:
            continue
        for provider, until in shared.get("paused", {}).items():
            left = float(until) - now
            if left > paused.get(provider, 0.0):
                paused[provider] = left
        for endpoint, (until, cooldown) in shared.get("open", {}).items():
            left = float(until) - now
            held = opened.get(endpoint)
            if left > 0 and (held is None or left > held.remaining):
                opened[endpoint] = BreakerHold(remaining=left, cooldown=float(cooldown))
    return FleetGateway(sharing=dict(sharing), paused=paused, open=opened)


# -- retired versions ------------------------------------------------------------------------


def refuse_retired(tx: Tx, agent: str, version: str) -> None:
    """Raise ``VersionRetired`` if ``agent@version`` is retired (one primary-key lookup).

    A version no worker has registered is not retired: it may be the code of a client that
    starts runs before its first worker does.
    """
    row = tx.fetchone(
        "SELECT retired_at, retired_by, retired_reason FROM kernos_agents "
        "WHERE name = ? AND version = ?",
        (agent, version),
    )
    if row is None or row[0] is None:
        return
    retired = tx.fetchall(
        "SELECT version FROM kernos_agents WHERE name = ? AND retired_at IS NOT NULL", (agent,)
    )
    raise VersionRetired(
        agent,
        version,
        retired_at=float(row[0]),
        retired_by=row[1],
        reason=row[2],
        retired=frozenset(r[0] for r in retired),
    )


def schedule_version(tx: Tx, agent: str, preferred: str) -> str | None:
    """The version a cron schedule's run of ``agent`` starts on: ``preferred`` (the newest the
    firing worker has) unless it is retired, else the newest registered version that is not,
    else None (every version is retired: the tick waits until one is not)."""
    rows = tx.fetchall(
        "SELECT version, retired_at FROM kernos_agents WHERE name = ? ORDER BY registered_at",
        (agent,),
    )
    retired = {r[0] for r in rows if r[1] is not None}
    if preferred not in retired:
        return preferred
    open_ = [r[0] for r in rows if r[1] is None]
    return open_[-1] if open_ else None


def set_retired(
    tx: Tx,
    *,
    agent: str,
    version: str,
    retire: bool,
    by: str,
    reason: str | None,
    now: float,
    postgres: bool,
    lock_rows: str,
) -> None:
    """Retire (or un-retire) a registered version, with its audit entry in the same
    transaction. Asking for what is already so changes nothing and audits nothing."""
    row = tx.fetchone(
        f"SELECT retired_at FROM kernos_agents WHERE name = ? AND version = ?{lock_rows}",
        (agent, version),
    )
    if row is None:
        known = [r[0] for r in tx.fetchall(
            "SELECT version FROM kernos_agents WHERE name = ? ORDER BY registered_at", (agent,)
        )]  # fmt: skip
        if not known:
            raise AgentNotFound(
                f"no agent named {agent!r} is registered (a worker registers its agents when "
                f"it starts); `kernos agents` lists them"
            )
        raise AgentNotFound(
            f"agent {agent!r} has no version {version!r} (registered: {', '.join(known)}); "
            f"`kernos agents` lists them"
        )
    if (row[0] is not None) == retire:
        return
    stamp = (now, by, reason) if retire else (None, None, None)
    tx.execute(
        "UPDATE kernos_agents SET retired_at = ?, retired_by = ?, retired_reason = ? "
        "WHERE name = ? AND version = ?",
        (*stamp, agent, version),
    )
    append_audit(
        tx,
        postgres=postgres,
        actor=by,
        action="agent.retire" if retire else "agent.unretire",
        target=f"{agent}@{version}",
        details={"reason": reason} if reason else {},
        now=now,
    )


# -- versions and their runs -----------------------------------------------------------------


def list_versions(
    tx: Tx, now: float, workers: Sequence[WorkerRecord], agent: str | None = None
) -> list[VersionStatus]:
    """Every registered version (and any version that has live runs), with its live runs by
    state, how many a worker could claim now, and the live workers that execute it.

    Two aggregate queries: the run table is grouped, never loaded.
    """
    only = " AND agent = ?" if agent is not None else ""
    live = [s.value for s in LIVE_STATES]
    counts = tx.fetchall(
        "SELECT agent, agent_version, state, COUNT(*), SUM(CASE WHEN (state = 'queued' AND "
        "run_at <= ?) OR (state = 'running' AND lease_expires_at < ?) THEN 1 ELSE 0 END) "
        f"FROM kernos_runs WHERE state IN ({placeholders(len(live))}){only} "
        "GROUP BY agent, agent_version, state",
        (now, now, *live, *([agent] if agent is not None else [])),
    )
    registered = tx.fetchall(
        "SELECT name, version, registered_at, retired_at, retired_by, retired_reason "
        f"FROM kernos_agents{' WHERE name = ?' if agent is not None else ''} "
        "ORDER BY name, registered_at",
        (agent,) if agent is not None else (),
    )
    serving: dict[str, list[str]] = defaultdict(list)
    for w in workers:
        if w.state is WorkerState.ALIVE:
            for key in w.versions:
                serving[key].append(w.id)
    runs: dict[tuple[str, str], dict[RunState, int]] = defaultdict(dict)
    ready: dict[tuple[str, str], int] = defaultdict(int)
    for name, version, state, count, due in counts:
        runs[(name, version)][RunState(state)] = int(count)
        ready[(name, version)] += int(due or 0)
    rows = {(r[0], r[1]): r for r in registered}
    defaults = {}
    for r in registered:  # oldest first: the last one not retired is each agent's default
        if r[3] is None:
            defaults[r[0]] = r[1]
    keys = list(rows) + sorted(k for k in runs if k not in rows)
    statuses = []
    for name, version in keys:
        row = rows.get((name, version))
        statuses.append(
            VersionStatus(
                agent=name,
                version=version,
                registered_at=row[2] if row else None,
                retired_at=row[3] if row else None,
                retired_by=row[4] if row else None,
                retired_reason=row[5] if row else None,
                runs=runs.get((name, version), {}),
                ready=ready.get((name, version), 0),
                workers=tuple(serving.get(f"{name}@{version}", ())),
                default=defaults.get(name) == version,
            )
        )
    return sorted(statuses, key=lambda v: v.agent)  # stable: versions oldest first


def waiting_reasons(tx: Tx, dialect: str) -> dict[str, int]:
    """Waiting runs by the kind of thing they wait for: the part of ``waiting_for`` before its
    first colon (``approval:<id>`` → ``approval``), counted in the database."""
    find = "instr" if dialect == "sqlite" else "strpos"
    kind = (
        f"CASE WHEN {find}(waiting_for, ':') > 0 "
        f"THEN substr(waiting_for, 1, {find}(waiting_for, ':') - 1) "
        "ELSE COALESCE(waiting_for, '-') END"
    )
    rows = tx.fetchall(
        f"SELECT {kind}, COUNT(*) FROM kernos_runs WHERE state = 'waiting' GROUP BY {kind}"
    )
    return {str(r[0]): int(r[1]) for r in sorted(rows, key=lambda r: (-int(r[1]), str(r[0])))}
