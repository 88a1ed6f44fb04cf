"""The ``kernos`` command: thin wrappers over ``kernos.kernel`` that format results.

Every command that reads has ``--json``. Errors print one line saying what happened and what to
do, and exit non-zero: 2 for a usage error (fix the command), 1 for a failed run, 3 when the
database is unavailable (retry later). A rejected command changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from kernos.errors import KernosError, StoreUnavailable, UsageError
from kernos.gateway import GROUPS, cost_report, default_services
from kernos.governance import (
    BudgetLine,
    audit_config,
    budget_report,
    governor_from_config,
    load_budgets,
    notifier_from_config,
    redactor_from_config,
    tenant_limits_from_config,
)
from kernos.kernel import (
    REGISTRY,
    CallService,
    Client,
    Faults,
    Notifier,
    Observer,
    Observers,
    Settings,
    Worker,
    WorkerConfig,
    connect,
    load_app,
    load_settings,
    output_of,
    parse_json,
    tune_gc,
)
from kernos.store import RunState, open_store
from kernos.telemetry import (
    SpanPipe,
    TracingSettings,
    WorkerMetrics,
    configure_logging,
    serve_metrics,
    tracing_settings,
)

from ._chaos import chaos_app
from ._common import (
    AppOpt,
    DbOpt,
    JsonOpt,
    LogFormatOpt,
    TenantOpt,
    _client,
    _exit_code,
    _require_existing,
    command,
    err,
    out,
)
from ._fleet import agents_app, status
from ._oversight import approvals_app, audit_app, keys_app
from ._policy import policy_app
from ._render import (
    costs_table,
    dumps,
    event_dict,
    inspect_view,
    log_line,
    parse_since,
    run_dict,
    runs_table,
    schedule_dict,
    schedules_table,
    steps_of,
    trace_tree,
)
from ._serve import serve
from ._sim import sim_app
from ._tools import tools_app

app = typer.Typer(
    name="kernos",
    help="kernos: run LLM agents durably. Runs survive crashes, wait for free, and are traced.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="The database: schema status and migrations.", no_args_is_help=True)
schedule_app = typer.Typer(help="Cron schedules that start runs.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(schedule_app, name="schedule")
app.add_typer(sim_app, name="sim")
app.add_typer(approvals_app, name="approvals")
app.add_typer(audit_app, name="audit")
app.add_typer(keys_app, name="keys")
app.add_typer(policy_app, name="policy")
app.add_typer(tools_app, name="tools")
app.add_typer(agents_app, name="agents")
app.add_typer(chaos_app, name="chaos")
app.command()(serve)
app.command()(status)


def _parse(text: str, what: str) -> Any:
    return parse_json(text, what)


def _parse_or_text(text: str) -> Any:
    """JSON if it is JSON; otherwise the text itself (people type sentences, not JSON).

    What starts like a JSON object, array or string must be valid JSON: broken JSON is a
    mistake to report, not a sentence to send.
    """
    if text.lstrip()[:1] in ("{", "[", '"'):
        return _parse(text, "the message")
    try:
        return json.loads(text)
    except ValueError:
        return text


# -- runs -------------------------------------------------------------------------------------


@app.command()
@command
async def run(
    agent: Annotated[str, typer.Argument(help="Agent name.")],
    input: Annotated[str, typer.Option("--input", "-i", help="The run's input as JSON.")] = "null",
    app_module: AppOpt = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the run to end.")] = False,
    timeout: Annotated[
        float | None, typer.Option(help="With --wait: give up after seconds.")
    ] = None,
    priority: Annotated[int, typer.Option(help="Higher runs first.")] = 0,
    delay: Annotated[float | None, typer.Option(help="Start no sooner than in SECONDS.")] = None,
    version: Annotated[str | None, typer.Option(help="Agent version (default: latest).")] = None,
    tenant: TenantOpt = None,
    as_json: JsonOpt = False,
    database: DbOpt = None,
) -> None:
    """Start a run of AGENT; prints its id (with --wait, its output)."""
    value = _parse(input, "--input")
    async with await _client(database, app_module, create=True) as client:
        started = await client.start(
            agent, value, version=version, priority=priority, delay=delay, tenant=tenant
        )
        if not wait:
            out.print(dumps(run_dict(started)) if as_json else started.id)
            return
        err.print(f"[dim]run {started.id} started; waiting for it to end[/]")
        ended = await client.wait(started.id, timeout=timeout, poll=0.1)
        if as_json:
            out.print(dumps(run_dict(ended)))
        elif ended.state == RunState.COMPLETED:
            out.print(json.dumps(output_of(ended), indent=2))
        else:
            error = json.loads(ended.error) if ended.error else {}
            err.print(
                f"[bold red]run {ended.id} {ended.state.value}:[/] "
                f"{escape(str(error.get('message', '')))}"
            )
        if ended.state != RunState.COMPLETED:
            raise typer.Exit(1)


@app.command()
@command
async def runs(
    state: Annotated[str | None, typer.Option(help="Only runs in this state.")] = None,
    agent: Annotated[str | None, typer.Option(help="Only runs of this agent.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (newest first).")] = 50,
    tenant: Annotated[str | None, typer.Option(help="Only runs of this tenant.")] = None,
    as_json: JsonOpt = False,
    database: DbOpt = None,
) -> None:
    """List runs, newest first."""
    try:
        wanted = RunState(state) if state else None
    except ValueError:
        raise UsageError(
            f"--state {state!r} is not a run state; use one of "
            f"{', '.join(s.value for s in RunState)}"
        ) from None
    async with await _client(database) as client:
        found = await client.runs(state=wanted, agent=agent, limit=limit, tenant=tenant)
    if as_json:
        out.print(dumps([run_dict(r) for r in found]))
    else:
        out.print(runs_table(found))


@app.command()
@command
async def inspect(
    run_id: Annotated[str, typer.Argument(metavar="RUN")],
    as_json: JsonOpt = False,
    database: DbOpt = None,
) -> None:
    """A run's state, what it waits for, its lease owner, and its steps."""
    async with await _client(database) as client:
        r = await client.get(run_id)
        events = await client.journal(run_id)
    if as_json:
        data = run_dict(r)
        data["steps"] = [s.__dict__ for s in steps_of(events)]
        out.print(dumps(data))
    else:
        out.print(inspect_view(r, events))


@app.command()
@command
async def trace(
    run_id: Annotated[str, typer.Argument(metavar="RUN")],
    as_json: JsonOpt = False,
    database: DbOpt = None,
) -> None:
    """The run's journal as a tree: each claim by a worker, and the events under it."""
    async with await _client(database) as client:
        r = await client.get(run_id)
        events = await client.journal(run_id)
    if as_json:
        out.print(dumps({"run": run_dict(r), "events": [event_dict(e) for e in events]}))
    else:
        out.print(trace_tree(r, events))


@app.command()
@command
async def logs(
    run_id: Annotated[str, typer.Argument(metavar="RUN")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events.")
    ] = False,
    as_json: JsonOpt = False,
    database: DbOpt = None,
) -> None:
    """Print the run's journal events; with --follow, until the run ends."""
    async with await _client(database) as client:
        seq = 0
        while True:
            events = await client.journal(run_id, after_seq=seq)
            for ev in events:
                out.print(json.dumps(event_dict(ev)) if as_json else log_line(ev))
                seq = ev.seq
            if not follow:
                return
            if (await client.get(run_id)).state.terminal and not events:
                return
            await asyncio.sleep(0.5)


async def _control(database: str | None, action: str, run_id: str, reason: str | None) -> None:
    async with await _client(database) as client:
        fn = {"pause": client.pause, "resume": client.resume, "cancel": client.cancel}[action]
        r = await fn(run_id, reason=reason)
    note = f" (requested: {r.control.value} at the next step boundary)" if r.control else ""
    out.print(f"run {r.id} is {r.state.value}{note}")


ReasonOpt = Annotated[str | None, typer.Option(help="Why (kept in the run's journal).")]


@app.command()
@command
async def pause(
    run_id: Annotated[str, typer.Argument(metavar="RUN")],
    reason: ReasonOpt = None,
    database: DbOpt = None,
) -> None:
    """Pause a run (at its next step boundary if a worker is running it)."""
    await _control(database, "pause", run_id, reason)


@app.command()
@command
async def resume(
    run_id: Annotated[str, typer.Argument(metavar="RUN")],
    reason: ReasonOpt = None,
    database: DbOpt = None,
) -> None:
    """Resume a paused run."""
    await _control(database, "resume", run_id, reason)


@app.command()
@command
async def cancel(
    run_id: Annotated[str, typer.Argument(metavar="RUN")],
    reason: ReasonOpt = None,
    database: DbOpt = None,
) -> None:
    """Cancel a run; its agent gets Cancelled at the next step boundary and may clean up."""
    await _control(database, "cancel", run_id, reason)


@app.command()
@command
async def send(
    run_id: Annotated[str, typer.Argument(metavar="RUN")],
    topic: Annotated[str, typer.Argument()],
    payload: Annotated[str, typer.Argument(metavar="MESSAGE")],
    sender: Annotated[str | None, typer.Option(help="Who sends it.")] = None,
    text: Annotated[
        bool, typer.Option("--text", help="Send MESSAGE as a string, even if it parses as JSON.")
    ] = False,
    database: DbOpt = None,
) -> None:
    """Send a message to a run on TOPIC; wakes it if it waits for one.

    MESSAGE is JSON, or else plain text (sent as a string): an agent's conversation takes
    `kernos send RUN user "Please also refund the shipping."` at its next turn. What starts
    with { [ or " must be valid JSON.
    """
    value: Any = payload if text else _parse_or_text(payload)
    async with await _client(database) as client:
        msg = await client.send(run_id, topic, value, sender=sender)
    out.print(f"message {msg.id} sent to run {run_id} on {topic!r}")


@app.command()
@command
async def takeover(
    run_id: Annotated[str, typer.Argument(metavar="RUN")],
    reply: Annotated[str, typer.Argument(help="Your reply, in the model's place.")],
    sender: Annotated[str | None, typer.Option(help="Who you are (audited).")] = None,
    database: DbOpt = None,
) -> None:
    """Answer a conversation in the model's place: an Agent run takes your reply as its
    model's next answer, and ends with it (it is in the trace and the audit log)."""
    async with await _client(database) as client:
        msg = await client.send(run_id, "takeover", reply, sender=sender)
    out.print(f"reply {msg.id} sent to run {run_id}; it stands in for the model's next answer")


# -- workers ----------------------------------------------------------------------------------


@app.command()
def worker(
    app_module: AppOpt = None,
    concurrency: Annotated[int | None, typer.Option(help="Runs executed at once.")] = None,
    grace: Annotated[float | None, typer.Option(help="Seconds to finish steps on SIGTERM.")] = None,
    lease_ttl: Annotated[float | None, typer.Option(help="Lease time-to-live, seconds.")] = None,
    poll_interval: Annotated[
        float | None, typer.Option(help="Idle poll interval, seconds.")
    ] = None,
    database: DbOpt = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING.")] = "INFO",
    log_format: LogFormatOpt = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Serve Prometheus metrics at http://HOST:PORT/metrics (0: any port)."),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option(help="Address the metrics server binds.")
    ] = "0.0.0.0",
) -> None:
    """Run agents: claim runs, execute them, renew leases. SIGTERM drains and exits 0.

    Traces are exported when the standard OTEL_EXPORTER_OTLP_* variables say where to."""
    try:
        configure_logging(log_level, _log_format(log_format))
    except KernosError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(_exit_code(exc)) from None
    for chatty in ("httpx", "httpx2", "httpcore"):  # a line per provider request at INFO
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.root.level))
    try:
        settings = load_settings()
        module = app_module or settings.app
        if not module:
            raise UsageError(
                "no app module: pass --app MODULE (or set KERNOS_APP) naming the module that "
                "defines your agents, e.g. --app examples.refund"
            )
        registry = load_app(module)
        if not list(registry):
            raise UsageError(f"the module {module!r} registers no agents (use @kernos.agent)")
        config = WorkerConfig(
            concurrency=concurrency or settings.concurrency,
            lease_ttl=lease_ttl or settings.lease_ttl,
            poll_interval=poll_interval or settings.poll_interval,
            grace=settings.grace if grace is None else grace,
            faults=Faults.parse(settings.fault),
            tenant_limits=tenant_limits_from_config(),  # [tenants]: limits held fleet-wide
        )
        services = default_services()  # kernos.toml: a bad file stops the worker here
        notifier = notifier_from_config()
        tune_gc()
        tracing = tracing_settings()  # OTEL_*: off unless configured
        asyncio.run(
            _run_worker(
                database or settings.database_url,
                settings,
                config,
                services,
                notifier,
                _Telemetry(tracing, metrics_port, metrics_host),
            )
        )
    except KernosError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(_exit_code(exc)) from None


async def _run_worker(
    url: str,
    settings: Settings,
    config: WorkerConfig,
    services: dict[str, CallService],
    notifier: Notifier | None,
    telemetry: _Telemetry,
) -> None:
    client = await _connect_waiting(url, settings)
    try:
        redactor = redactor_from_config()  # [redaction]: secrets always, PII per tenant
        gatekeeper = governor_from_config(client.store, redactor=redactor)  # [policy], [[budgets]]
        w = Worker(
            client.store,
            REGISTRY,
            config,
            services=services,
            notifier=notifier,
            gatekeeper=gatekeeper,
            redactor=redactor,
            observer=telemetry.observer(services, lambda: w.active_runs),
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, w.stop)
        agents = ", ".join(f"{n}@{v}" for n, v in REGISTRY.keys())
        err.print(f"[bold]kernos worker[/] {escape(f'{w.id} on {client.store.url}: {agents}')}")
        await w.run()
    finally:
        await telemetry.close()
        await client.close()


async def _connect_waiting(url: str, settings: Settings) -> Client:
    """Connect (and record the configuration in the audit log), waiting for a database that
    cannot be reached yet: a worker restarted during a failover or a stall joins when the
    database is back, instead of exiting and being restarted in a loop by its supervisor."""
    deadline = time.monotonic() + settings.startup_wait
    delay = 0.5
    while True:
        client: Client | None = None
        try:
            client = await connect(url, settings=settings, registry=REGISTRY)
            await audit_config(client.store, process="kernos worker")  # config.changed, if so
            return client
        except StoreUnavailable as exc:
            if client is not None:
                await client.close()
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            wait = min(delay, left)
            err.print(
                f"[yellow]the database is unavailable ({escape(str(exc))}); trying again in "
                f"{wait:.1f} s (KERNOS_STARTUP_WAIT leaves {left:.0f} s)[/]"
            )
            await asyncio.sleep(wait)
            delay = min(delay * 2, 5.0)
        except BaseException:
            if client is not None:
                await client.close()
            raise


@dataclass
class _Telemetry:
    """A worker's traces and metrics, as its options and environment ask."""

    tracing: TracingSettings | None
    metrics_port: int | None
    metrics_host: str
    pipe: SpanPipe | None = None

    def observer(self, services: dict[str, CallService], active: Callable[[], int]) -> Any:
        observers: list[Observer] = []
        if self.tracing is not None:  # spans are built and sent by a process of their own
            self.pipe = SpanPipe(self.tracing)
            observers.append(self.pipe)
        if self.metrics_port is not None:
            llm = services.get("llm")
            breakers = getattr(llm, "health", None)  # {endpoint: breaker state}
            metrics = WorkerMetrics(breakers=breakers, active=active)
            port = serve_metrics(metrics.registry, self.metrics_port, self.metrics_host)
            err.print(f"metrics at http://{self.metrics_host}:{port}/metrics")
            observers.append(metrics)
        return Observers(observers) if observers else None

    async def close(self) -> None:
        if self.pipe is not None:
            await self.pipe.aclose()


def _log_format(option: str | None) -> str:
    return (option or os.environ.get("KERNOS_LOG_FORMAT") or "console").lower()


# -- costs ------------------------------------------------------------------------------------


@app.command()
@command
async def costs(
    by: Annotated[str, typer.Option(help="Total per run, agent, tenant or model.")] = "agent",
    since: Annotated[
        str | None,
        typer.Option(help="Only calls since: a duration back from now (30m, 24h, 7d) or a date."),
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many lines (dearest first).")] = 50,
    as_json: JsonOpt = False,
    database: DbOpt = None,
) -> None:
    """What LLM calls cost (from the journal): dollars and tokens per run, agent, tenant, model."""
    group = next((g for g in GROUPS if g == by), None)
    if group is None:
        raise UsageError(f"--by {by!r} is not a grouping; use one of {', '.join(GROUPS)}")
    start = parse_since(since) if since else None
    async with await _client(database) as client:
        lines = await cost_report(client.store, by=group, since=start, limit=limit)
    if as_json:
        out.print(dumps([asdict(line) for line in lines]))
    else:
        out.print(costs_table(lines, by))


@app.command()
@command
async def budgets(as_json: JsonOpt = False, database: DbOpt = None) -> None:
    """Spend against each budget of kernos.toml ([[budgets]]), this period: what is spent,
    what calls in flight have reserved, and what is left."""
    configured = load_budgets()
    async with await _client(database) as client:
        lines = await budget_report(client.store, configured)
    if as_json:
        out.print(dumps([asdict(line) for line in lines]))
    elif not configured:
        out.print("no budgets: add [[budgets]] to kernos.toml")
    else:
        out.print(_budgets_table(lines) if lines else "no spend against any budget this period")


def _budgets_table(lines: list[BudgetLine]) -> Table:
    table = Table(box=None, header_style="bold")
    for column in ("BUDGET", "FOR", "PERIOD", "SPENT", "RESERVED", "LIMIT", "LEFT", "THEN"):
        table.add_column(column)
    for line in lines:
        limit = (
            f"${line.limit_usd:g}" if line.limit_usd is not None else f"{line.limit_tokens:,} tok"
        )
        left = f"${line.left_usd:.4f}" if line.left_usd is not None else f"{line.left_tokens:,} tok"
        table.add_row(
            line.budget,
            f"{line.per} {line.key}",
            line.period,
            f"${line.spent_usd:.4f} / {line.spent_tokens:,} tok",
            f"${line.reserved_usd:.4f}",
            limit,
            left,
            line.on_exceed,
        )
    return table


# -- schedules --------------------------------------------------------------------------------


@schedule_app.command("add")
@command
async def schedule_add(
    name: Annotated[str, typer.Argument()],
    agent: Annotated[str, typer.Argument()],
    cron: Annotated[str, typer.Argument(help="Five-field cron expression, UTC.")],
    input: Annotated[str, typer.Option("--input", "-i", help="Input of each run, JSON.")] = "null",
    priority: Annotated[int, typer.Option()] = 0,
    tenant: TenantOpt = None,
    app_module: AppOpt = None,
    database: DbOpt = None,
) -> None:
    """Start a run of AGENT at every tick of CRON (once per tick, however many workers)."""
    value = _parse(input, "--input")
    async with await _client(database, app_module, create=True) as client:
        s = await client.add_schedule(name, agent, cron, value, priority=priority, tenant=tenant)
    out.print(f"schedule {s.name} added: {s.agent} at {s.cron!r}")


@schedule_app.command("list")
@command
async def schedule_list(as_json: JsonOpt = False, database: DbOpt = None) -> None:
    """List schedules."""
    async with await _client(database) as client:
        found = await client.schedules()
    out.print(dumps([schedule_dict(s) for s in found]) if as_json else schedules_table(found))


@schedule_app.command("remove")
@command
async def schedule_remove(name: Annotated[str, typer.Argument()], database: DbOpt = None) -> None:
    """Remove a schedule (runs it started are not touched)."""
    async with await _client(database) as client:
        await client.remove_schedule(name)
    out.print(f"schedule {name} removed")


# -- database ---------------------------------------------------------------------------------


@db_app.command("status")
@command
async def db_status(as_json: JsonOpt = False, database: DbOpt = None) -> None:
    """The schema version of the database against this kernos' migrations."""
    url = database or load_settings().database_url
    _require_existing(url)
    store = open_store(url)
    try:
        status = await store.schema_status()
        counts = await store.count_runs() if status.current else {}
    finally:
        await store.close()
    if as_json:
        out.print(
            dumps(
                {
                    "database": store.url,
                    "current": status.current,
                    "latest": status.latest,
                    "pending": status.pending,
                    "runs": {k.value: v for k, v in counts.items()},
                }
            )
        )
        return
    out.print(f"database  {store.url}")
    out.print(f"schema    version {status.current} of {status.latest}")
    if status.pending:
        out.print("pending   " + "; ".join(status.pending) + "  (kernos db migrate)")
    if counts:
        out.print("runs      " + ", ".join(f"{k.value} {v}" for k, v in sorted(counts.items())))


@db_app.command("migrate")
@command
async def db_migrate(database: DbOpt = None) -> None:
    """Apply pending migrations (kernos also does this at start)."""
    store = open_store(database or load_settings().database_url)
    try:
        before = await store.schema_status()
        after = await store.migrate()
    finally:
        await store.close()
    applied = after.current - before.current
    out.print(f"{store.url}: schema at version {after.current} ({applied} migration(s) applied)")


def main() -> None:
    app()
