"""``Client``: start runs and act on them, from scripts, tests, the CLI and the API."""

from __future__ import annotations

import asyncio
import getpass
import json
import re
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import jsonschema
from pydantic import ValidationError

from kernos.errors import AgentNotFound, InvalidInput
from kernos.kernel._codec import encode
from kernos.kernel._cron import next_fire, validate_cron
from kernos.kernel._memory import Scrubber
from kernos.kernel._registry import REGISTRY, Registry
from kernos.kernel._settings import Settings, load_settings
from kernos.store import (
    Approval,
    Event,
    Message,
    NewRun,
    Run,
    RunState,
    Schedule,
    Store,
    VersionRetired,
    new_run_id,
    open_store,
)


class Client:
    """A handle on a kernos database. Every method is one short transaction.

    ``registry`` is used to check the agent and validate input before a run is created; agents
    it does not know are looked up among those workers have registered in the database.
    """

    def __init__(
        self,
        store: Store,
        registry: Registry | None = None,
        *,
        redactor: Scrubber | None = None,
    ) -> None:
        self.store = store
        self.registry = registry if registry is not None else REGISTRY
        #: inputs, messages, answers and reasons are redacted (per tenant) before they are
        #: stored
        self.redactor = redactor

    def _scrub(self, value: Any, tenant: str | None = None) -> Any:
        if self.redactor is None:
            return value
        return self.redactor.for_tenant(tenant).json(value)

    def _scrub_text(self, text: str | None, tenant: str | None = None) -> str | None:
        if self.redactor is None or text is None:
            return text
        return self.redactor.for_tenant(tenant).text(text)

    async def close(self) -> None:
        await self.store.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _version_of(self, agent: str, version: str | None) -> str:
        if agent in self.registry:
            spec = self.registry.get(agent, version)
            return spec.version
        known = [a for a in await self.store.list_agents() if a.name == agent]
        if version is not None and any(a.version == version for a in known):
            return version
        if known and version is None:
            return known[-1].version
        names = sorted(
            {a.name for a in await self.store.list_agents()} | {s.name for s in self.registry}
        )
        raise AgentNotFound(
            f"no agent named {agent!r}{f' at version {version!r}' if version else ''} is known "
            f"(known: {', '.join(names) or 'none'}); pass --app MODULE, or start a worker for "
            f"it first so that it registers its agents"
        )

    def _encode_input(self, agent: str, version: str, value: Any) -> str:
        if agent in self.registry:
            model = self.registry.get(agent, version).input_model
            if model is not None:
                try:
                    model.model_validate(value)
                except ValidationError as exc:
                    raise InvalidInput(
                        f"the input does not match {model.__name__}, the input type of agent "
                        f"{agent!r}: {exc}"
                    ) from exc
        try:
            return encode(value, "the run's input")
        except Exception as exc:
            raise InvalidInput(str(exc)) from exc

    async def start(
        self,
        agent: str,
        input: Any = None,
        *,
        version: str | None = None,
        priority: int = 0,
        delay: float | None = None,
        run_id: str | None = None,
        tenant: str | None = None,
        principal: str | None = None,
    ) -> Run:
        """Create a run (``queued``); a worker that has the agent's code will execute it.

        ``tenant`` names who the run's costs are charged to (``default`` if not given); the
        runs it spawns inherit it. ``principal`` is who starts it (default: the operating
        system's user), which policy rules can read and the runs it spawns inherit.

        Without ``version`` the run starts on the newest version that is not retired (newest:
        registered last in ``registry`` if it has the agent, else in the database).
        ``VersionRetired`` when the version named, or every version, is retired.
        """
        tenant = check_tenant(tenant)
        if delay is not None and delay < 0:
            raise InvalidInput(f"delay must be >= 0 seconds, not {delay}")
        resolved = await self._version_of(agent, version)
        new = NewRun(
            id=run_id or new_run_id(),
            agent=agent,
            agent_version=resolved,
            input=self._run_input(agent, resolved, input, tenant),
            priority=priority,
            run_at=time.time() + delay if delay else None,
            tenant=tenant,
            principal=principal or _person(),
        )
        try:
            return await self.store.create_run(new)
        except VersionRetired as exc:
            if version is not None:
                raise
            other = await self._newest_unretired(agent, exc.retired)
            if other is None:
                raise
        text = self._run_input(agent, other, input, tenant)
        return await self.store.create_run(replace(new, agent_version=other, input=text))

    def _run_input(self, agent: str, version: str, value: Any, tenant: str) -> str:
        text = self._encode_input(agent, version, value)
        if self.redactor is not None:
            text = self.redactor.for_tenant(tenant).json_text(text)
        return text

    async def _newest_unretired(self, agent: str, retired: frozenset[str]) -> str | None:
        """The newest version of ``agent`` not in ``retired``: a run started without naming a
        version goes there when the newest is retired (a rollback)."""
        if agent in self.registry:
            versions = [s.version for s in self.registry if s.name == agent]
        else:
            versions = [a.version for a in await self.store.list_agents() if a.name == agent]
        return next((v for v in reversed(versions) if v not in retired), None)

    async def get(self, run_id: str) -> Run:
        return await self.store.get_run(run_id)

    async def runs(
        self,
        *,
        state: RunState | None = None,
        agent: str | None = None,
        limit: int = 100,
        tenant: str | None = None,
    ) -> list[Run]:
        return await self.store.list_runs(state=state, agent=agent, limit=limit, tenant=tenant)

    async def journal(self, run_id: str, *, after_seq: int = 0) -> list[Event]:
        await self.store.get_run(run_id)  # RunNotFound for an unknown id, not an empty list
        return await self.store.load_journal(run_id, after_seq=after_seq)

    async def wait(self, run_id: str, *, timeout: float | None = None, poll: float = 0.05) -> Run:
        """Wait until the run is completed, failed or cancelled; ``TimeoutError`` otherwise."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            run = await self.store.get_run(run_id)
            if run.state.terminal:
                return run
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"run {run_id} is still {run.state.value} after {timeout} s"
                    + (f" (waiting for {run.waiting_for})" if run.waiting_for else "")
                )
            await asyncio.sleep(poll)

    async def send(
        self, run_id: str, topic: str, payload: Any, *, sender: str | None = None
    ) -> Message:
        if self.redactor is not None:
            run = await self.store.get_run(run_id)
            payload = self._scrub(payload, run.tenant)
        text = encode(payload, "the message")
        return await self.store.send_message(run_id, topic, text, sender=sender or _person())

    async def pause(self, run_id: str, *, reason: str | None = None, by: str | None = None) -> Run:
        return await self.store.pause(run_id, reason=self._scrub_text(reason), by=by or _person())

    async def resume(self, run_id: str, *, reason: str | None = None, by: str | None = None) -> Run:
        return await self.store.resume(run_id, reason=self._scrub_text(reason), by=by or _person())

    async def cancel(self, run_id: str, *, reason: str | None = None, by: str | None = None) -> Run:
        return await self.store.cancel(run_id, reason=self._scrub_text(reason), by=by or _person())

    async def decide(
        self,
        approval_id: str,
        *,
        approve: bool,
        by: str | None = None,
        reason: str | None = None,
        answer: Any = None,
        tenant: str | None = None,
    ) -> Approval:
        """Approve or reject what a run waits for, exactly once (a second decision raises
        ``InvalidState`` naming who decided). An approval's answer is checked first against
        what the run asked for (its schema, or a tool's arguments object), so a run never
        receives an answer it cannot use. ``tenant`` confines it to that tenant's approvals."""
        if approve and answer is not None:
            check_answer(await self.store.get_approval(approval_id, tenant=tenant), answer)
        return await self.store.decide_approval(
            approval_id,
            approve=approve,
            by=by or _person(),
            reason=self._scrub_text(reason, tenant),
            answer=self._scrub(answer, tenant),
            tenant=tenant,
        )

    async def add_schedule(
        self,
        name: str,
        agent: str,
        cron: str,
        input: Any = None,
        *,
        priority: int = 0,
        tenant: str | None = None,
    ) -> Schedule:
        tenant = check_tenant(tenant)
        validate_cron(cron)
        version = await self._version_of(agent, None)
        text = self._encode_input(agent, version, input)
        now = time.time()
        return await self.store.add_schedule(
            Schedule(name, agent, cron, text, priority, next_fire(cron, now), now, tenant)
        )

    async def schedules(self) -> list[Schedule]:
        return await self.store.list_schedules()

    async def remove_schedule(self, name: str) -> None:
        await self.store.remove_schedule(name)


def check_answer(approval: Approval, answer: Any) -> None:
    """``InvalidInput`` unless ``answer`` fits what the run asked for."""
    if approval.kind.startswith("tool:") and not isinstance(answer, dict):
        raise InvalidInput("edited tool arguments must be a JSON object")
    schema = approval.details.get("schema")
    if not isinstance(schema, dict):
        return
    try:
        jsonschema.validate(answer, schema)
    except jsonschema.ValidationError as exc:
        where = ".".join(str(p) for p in exc.absolute_path) or "the answer"
        raise InvalidInput(
            f"the answer does not fit what the run asked for: {where}: {exc.message}"
        ) from None
    except jsonschema.SchemaError as exc:
        raise InvalidInput(
            f"the run asked with a schema that is not valid: {exc.message}"
        ) from None


def _person() -> str:
    """Who acts, when the caller does not say: the operating-system user (the audit log
    records someone for every action; the API passes its key's name instead)."""
    try:
        return f"user:{getpass.getuser()}"
    except (KeyError, OSError):
        return "user:unknown"


def output_of(run: Run) -> Any:
    """The decoded output of a completed run."""
    if run.output is None:
        return None
    return json.loads(run.output)


def format_time(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


async def connect(
    url: str | None = None,
    *,
    settings: Settings | None = None,
    registry: Registry | None = None,
    migrate: bool = True,
    redactor: Scrubber | None = None,
) -> Client:
    """Open the database (``url``, else ``KERNOS_DATABASE_URL``, else ``.kernos/kernos.db``),
    apply pending migrations, and return a ``Client``."""
    settings = settings or load_settings()
    store = open_store(
        url or settings.database_url,
        max_payload=settings.max_payload_bytes,
        io_timeout=settings.db_io_timeout,
    )
    try:
        if migrate:
            await store.migrate()
        else:
            await store.schema_status()
    except BaseException:
        await store.close()
        raise
    return Client(store, registry, redactor=redactor)


_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")


def check_tenant(tenant: str | None) -> str:
    """A tenant name, or ``InvalidInput`` saying what one may look like."""
    if tenant is None:
        return "default"
    if not _TENANT.match(tenant):
        raise InvalidInput(
            f"tenant {tenant!r} is not a valid name: use 1-128 letters, digits and . _ : @ -, "
            f"starting with a letter or digit (e.g. acme-corp)"
        )
    return tenant
