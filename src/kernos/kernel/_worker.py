"""The worker: claims runnable runs, executes them, renews their leases, drains on SIGTERM.

One asyncio process runs up to ``concurrency`` runs at once. It claims in batches, sleeps on
``LISTEN`` (PostgreSQL) or a short poll (SQLite) when there is nothing to do, fires due timers
and cron schedules (each exactly once fleet-wide: the store's updates are conditional), and
renews every lease it holds in one statement per heartbeat.

A service that shares state with its peers in the other workers (``FleetMember``: the
gateway's rate limits and circuit breakers) joins the fleet through the store before the
worker claims its first run, and follows it in a task of its own until the worker stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from kernos.errors import InfrastructureError, KernosError
from kernos.kernel._calls import CallService, Gatekeeper
from kernos.kernel._cron import next_fire
from kernos.kernel._execution import Execution, WorkerSignals
from kernos.kernel._faults import Faults
from kernos.kernel._memory import Embedder, Scrubber
from kernos.kernel._notify import NotificationPump, Notifier
from kernos.kernel._observe import Observer, safely
from kernos.kernel._registry import Registry
from kernos.store import Claim, Store, TenantLimits, WorkerRegistration, new_run_id

log = logging.getLogger("kernos.worker")


def tune_gc() -> None:
    """Set the process's garbage collector for a worker (what ``kernos worker`` does).

    A worker with many live conversations allocates fast; at CPython's default gen-0 threshold
    (700 allocations) it collected thousands of times a second, a fifth of each turn's time at
    1,000 conversations (benchmarks/agents.py, (j)). Everything alive once the app is loaded
    (modules, SDKs, the app's objects) is frozen out of collection, and collections run less
    often. Call it after loading the app, before the worker starts; a library embedding a
    Worker in its own process keeps its own settings.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


@runtime_checkable
class FleetMember(Protocol):
    """A service that shares state with the same service in the other live workers, through
    the store: the gateway's share of each provider's rate limits, a provider's pause, an open
    breaker (``kernos.gateway.LLMService``). The kernel only calls it; what is shared is the
    service's business."""

    async def join_fleet(self, store: Store, worker_id: str) -> None:
        """Exchange state with the fleet once; raises the store's ``InfrastructureError``."""
        ...

    async def follow_fleet(self) -> None:
        """Stay in step with the fleet until cancelled."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerConfig:
    """How a worker behaves; read once at start (see ``Settings``)."""

    concurrency: int = 100
    lease_ttl: float = 15.0
    poll_interval: float = 1.0
    grace: float = 30.0
    worker_id: str | None = None
    faults: Faults = field(default_factory=Faults)
    #: per-tenant concurrency limits over the whole fleet, and claims fair across tenants
    #: (``[tenants]`` of kernos.toml); None: claims in priority order, tenants unlimited
    tenant_limits: TenantLimits | None = None


class Worker:
    """Executes runs of the agents in ``registry`` from ``store``.

    ``await worker.run()`` returns after ``stop()`` (or SIGTERM in the CLI) once in-flight steps
    have finished and every lease was released, or the grace period ran out.
    """

    def __init__(
        self,
        store: Store,
        registry: Registry,
        config: WorkerConfig | None = None,
        *,
        services: Mapping[str, CallService] | None = None,
        embedder: Embedder | None = None,
        notifier: Notifier | None = None,
        gatekeeper: Gatekeeper | None = None,
        redactor: Scrubber | None = None,
        observer: Observer | None = None,
    ):
        """``services`` serve the durable calls of higher layers: ``{"llm": ...}`` for
        ``ctx.llm`` (``kernos.default_services()`` builds them from kernos.toml). The worker
        owns them: those with an ``aclose()`` are closed when it stops. ``embedder`` (optional)
        lets ``ctx.memory`` search by meaning as well as by words."""
        self.store = store
        self.embedder = embedder
        #: told when a run starts waiting for a person (closed with the worker, if it can be)
        self.notifier = notifier
        #: checks before effects: policy and budgets before each tool and LLM call
        self.gatekeeper = gatekeeper
        #: what runs write is redacted before it is stored (per tenant)
        self.redactor = redactor
        #: told of claims, lease renewals and every committed event (traces, metrics)
        self.observer = observer
        self.services: dict[str, CallService] = dict(services or {})
        self.registry = registry
        self.config = config or WorkerConfig()
        #: delivers the outbox's notifications through ``notifier`` (none without one)
        self.notifications = (
            NotificationPump(store, notifier, poll_interval=max(1.0, self.config.poll_interval))
            if notifier is not None
            else None
        )
        self.id = self.config.worker_id or (
            f"{socket.gethostname()}-{os.getpid()}-{new_run_id()[-6:].lower()}"
        )
        self._signals = WorkerSignals()
        self._active: dict[str, tuple[asyncio.Task[None], Execution]] = {}
        self._wake = asyncio.Event()
        self._stopped = asyncio.Event()
        self._listen: asyncio.Future[None] | None = None
        self._last_housekeeping = 0.0
        self.started = asyncio.Event()

    @property
    def active_runs(self) -> int:
        return len(self._active)

    def stop(self) -> None:
        """Stop claiming; in-flight runs yield at their next step boundary."""
        self._signals.draining = True
        self._wake.set()

    def wake(self) -> None:
        """Look for work now (used in-process when a run is created or woken)."""
        self._wake.set()

    async def run(self) -> None:
        await self.store.register_agents(self.registry.keys())
        await self.store.register_worker(self._registration())
        members = [s for s in self.services.values() if isinstance(s, FleetMember)]
        for member in members:
            await self._join_fleet(member)
        heartbeat = asyncio.create_task(self._heartbeat_loop(), name="kernos-heartbeat")
        pump = (
            asyncio.create_task(self.notifications.run(), name="kernos-notifications")
            if self.notifications is not None
            else None
        )
        following = [
            asyncio.create_task(self._follow_fleet(m), name="kernos-fleet") for m in members
        ]
        self.started.set()
        log.info("worker %s started (concurrency %d)", self.id, self.config.concurrency)
        if self.config.tenant_limits is not None:
            log.info(
                "worker %s: claims are fair across tenants; tenant limits: %s",
                self.id,
                self.config.tenant_limits.describe(),
            )
        try:
            await self._claim_loop()
            await self._drain()
        finally:
            for task in (heartbeat, pump, *following):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            await self._sign_off()
            await self._close_services()
            self._stopped.set()
            log.info("worker %s stopped", self.id)

    async def _close_services(self) -> None:
        """The worker owns its services: their connections close when it stops."""
        owned: dict[str, Any] = {**self.services, "notifier": self.notifier}
        for name, service in owned.items():
            aclose = getattr(service, "aclose", None)
            if aclose is None:
                continue
            try:
                await aclose()
            except Exception as exc:  # closing is best effort; the process may be exiting
                log.warning("worker %s: closing its %s service failed: %s", self.id, name, exc)

    # -- claiming -----------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        backoff = self.config.poll_interval
        while not self._signals.draining:
            try:
                await self._housekeeping()
                claimed = await self._claim_some()
                backoff = self.config.poll_interval
            except InfrastructureError as exc:
                log.warning(
                    "worker %s: store unavailable, retrying in %.1fs: %s", self.id, backoff, exc
                )
                await self._sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            free = self.config.concurrency - len(self._active)
            if claimed and free > 0:
                continue  # there may be more ready right now
            await self._idle()

    async def _claim_some(self) -> int:
        free = self.config.concurrency - len(self._active)
        if free <= 0:
            return 0
        claims = await self.store.claim(
            worker_id=self.id,
            agents=self.registry.keys(),
            limit=min(free, 100),
            lease_ttl=self.config.lease_ttl,
            agent_limits=self.registry.limits(),
            tenant_limits=self.config.tenant_limits,
        )
        for claim in claims:
            self._start(claim)
        return len(claims)

    def _start(self, claim: Claim) -> None:
        stale = self._active.get(claim.run.id)
        if stale is not None:
            # This worker re-claimed its own run (its lease had expired, e.g. the database was
            # unreachable): the older execution is fenced off; stop it.
            stale[1].lost = True
            stale[0].cancel()
        execution = Execution(
            self.store,
            self.registry,
            claim,
            self._signals,
            self.config.faults,
            self.services,
            self.embedder,
            self.notifications,
            self.gatekeeper,
            self.redactor,
            self.observer,
        )
        if self.observer is not None:
            safely(self.observer.claimed, claim.run, max(0.0, time.time() - claim.run.run_at))
        task = asyncio.create_task(self._execute(execution), name=f"kernos-run-{claim.run.id}")
        self._active[claim.run.id] = (task, execution)

    async def _execute(self, execution: Execution) -> None:
        try:
            await execution.execute()
        except asyncio.CancelledError:
            raise
        except KernosError as exc:
            log.error("run %s: could not be executed: %s", execution.run_id, exc)
        except Exception:
            log.exception("run %s: unexpected error in the worker", execution.run_id)
        finally:
            entry = self._active.get(execution.run_id)
            if entry is not None and entry[1] is execution:
                del self._active[execution.run_id]
            self._wake.set()

    async def _housekeeping(self) -> None:
        now = time.monotonic()
        if now - self._last_housekeeping < self.config.poll_interval:
            return
        self._last_housekeeping = now
        await self.store.fire_timers()
        await self.store.fire_schedules(
            versions=self.registry.latest_versions(), next_fire=next_fire
        )

    async def _idle(self) -> None:
        """Wait for a wake-up: a notification, a finished run, or the poll interval."""
        if self._wake.is_set():
            self._wake.clear()
            return
        if self._listen is None or self._listen.done():
            self._listen = asyncio.ensure_future(
                self.store.wait_for_work(self.config.poll_interval)
            )
        waker: asyncio.Future[Any] = asyncio.ensure_future(self._wake.wait())
        listen: asyncio.Future[Any] = self._listen
        try:
            await asyncio.wait(
                [listen, waker],
                timeout=self.config.poll_interval,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            waker.cancel()
        self._wake.clear()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        self._wake.clear()

    # -- leases -------------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        """Renew every held lease each TTL/3; fence ourselves off when renewals stop working.

        Past a full TTL without a successful renewal another worker may own our runs, so their
        executions stop here rather than at their next (fenced) write: that bounds how long two
        workers can both be running the same step.
        """
        ttl = self.config.lease_ttl
        last_ok = time.monotonic()
        while True:
            await asyncio.sleep(ttl / 3)
            leases = {rid: ex.token for rid, (_, ex) in self._active.items()}
            if not leases:
                last_ok = time.monotonic()
                await self._beat_alone()
                continue
            try:
                beat = await asyncio.wait_for(
                    self.store.worker_heartbeat(
                        worker_id=self.id,
                        leases=leases,
                        lease_ttl=ttl,
                        active=len(self._active),
                        info=self._health(),
                    ),
                    timeout=ttl,
                )
            except (InfrastructureError, TimeoutError) as exc:
                log.warning("worker %s: heartbeat failed: %s", self.id, exc or "timed out")
                if time.monotonic() - last_ok > ttl:
                    self._lose(set(leases), "no lease renewal for a whole TTL")
                    if self.observer is not None:
                        safely(self.observer.leases, 0, len(leases))
                continue
            last_ok = time.monotonic()
            self._lose(beat.lost, "lease lost to another worker")
            if self.observer is not None:
                safely(self.observer.leases, len(leases) - len(beat.lost), len(beat.lost))
            for run_id, control in beat.control.items():
                entry = self._active.get(run_id)
                if entry is not None:
                    entry[1].control = control

    def _lose(self, run_ids: set[str] | frozenset[str], why: str) -> None:
        for run_id in run_ids:
            entry = self._active.get(run_id)
            if entry is None:
                continue
            task, execution = entry
            execution.lost = True
            task.cancel()
            log.warning("run %s: stopped: %s", run_id, why)

    # -- presence: the worker's row in the fleet (kernos status, kernos agents) ----------------

    async def _join_fleet(self, member: FleetMember) -> None:
        try:
            await asyncio.wait_for(
                member.join_fleet(self.store, self.id), timeout=self.config.lease_ttl
            )
        except (InfrastructureError, TimeoutError) as exc:
            log.warning(
                "worker %s: could not join the fleet's shared limits yet: %s",
                self.id,
                exc or "timed out",
            )

    async def _follow_fleet(self, member: FleetMember) -> None:
        try:
            await member.follow_fleet()
        except Exception:  # a bug there must not stop the worker; it says so loudly
            log.exception(
                "worker %s: a service stopped following the fleet; its limits and breakers "
                "are this worker's own until it restarts",
                self.id,
            )

    def _registration(self) -> WorkerRegistration:
        return WorkerRegistration(
            id=self.id,
            host=socket.gethostname(),
            pid=os.getpid(),
            versions=tuple(f"{name}@{version}" for name, version in self.registry.keys()),
            concurrency=self.config.concurrency,
            lease_ttl=self.config.lease_ttl,
            info=self._health(),
        )

    def _health(self) -> dict[str, Any]:
        """What the worker's services say of their health, carried by each heartbeat: the
        gateway's breaker per endpoint (``{"breakers": {"openai:gpt-4o": "open"}}``)."""
        breakers: dict[str, str] = {}
        for name, service in self.services.items():
            health = getattr(service, "health", None)
            if not callable(health):
                continue
            try:
                breakers.update(health())
            except Exception as exc:  # a report, not a reason to stop renewing leases
                log.warning("worker %s: the %s service's health failed: %s", self.id, name, exc)
        return {"breakers": breakers} if breakers else {}

    async def _beat_alone(self) -> None:
        """An idle worker's heartbeat: only its row (alive, no load)."""
        ttl = self.config.lease_ttl
        try:
            await asyncio.wait_for(
                self.store.worker_heartbeat(
                    worker_id=self.id, leases={}, lease_ttl=ttl, active=0, info=self._health()
                ),
                timeout=ttl,
            )
        except (InfrastructureError, TimeoutError) as exc:
            log.warning("worker %s: heartbeat failed: %s", self.id, exc or "timed out")

    async def _sign_off(self) -> None:
        """Mark the row stopped (drained, leases released): a clean exit, not a dead worker."""
        try:
            await asyncio.wait_for(self.store.stop_worker(self.id), timeout=self.config.lease_ttl)
        except (InfrastructureError, TimeoutError) as exc:
            log.warning(
                "worker %s: could not mark itself stopped (it will show as dead): %s",
                self.id,
                exc or "timed out",
            )

    # -- shutdown -----------------------------------------------------------------------------

    async def _drain(self) -> None:
        tasks = [task for task, _ in self._active.values()]
        if not tasks:
            return
        log.info(
            "worker %s draining %d run(s), grace %.0fs", self.id, len(tasks), self.config.grace
        )
        _, pending = await asyncio.wait(tasks, timeout=self.config.grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=10)
        if self._listen is not None:
            self._listen.cancel()
