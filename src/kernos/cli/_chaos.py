"""``kernos chaos``: run a published fault scenario on this machine and read the report.

One command per scenario (``kernos chaos tuesday``, ``kernos chaos crash-storm``, ...) with the
same options, and ``kernos chaos list``. The exit code is 0 when the report's invariants hold
and 1 when one is broken, so the scenario can gate a deploy pipeline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from kernos.chaos import SCENARIOS, ChaosOptions, Report, Scenario, run_scenario
from kernos.errors import InvalidInput

from ._common import command, out

chaos_app = typer.Typer(
    help="Fault scenarios run on this machine (simulated providers, real workers, a proxied "
    "database) with a report of what kernos did: run one before production.",
    no_args_is_help=True,
)


@chaos_app.command("list")
def chaos_list() -> None:
    """The scenarios and what each does."""
    table = Table(show_header=True, header_style="bold", box=None)
    table.add_column("scenario")
    table.add_column("what goes wrong")
    for s in SCENARIOS.values():
        table.add_row(s.name, s.summary)
    out.print(table)


def _inputs(path: Path | None) -> tuple[Any, ...] | None:
    if path is None:
        return None
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidInput(f"--inputs {path}: {exc.strerror or exc}") from None
    values = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            values.append(json.loads(line))
        except ValueError as exc:
            raise InvalidInput(
                f"{path}:{n}: not JSON ({exc}); --inputs takes one run input per line"
            ) from None
    if not values:
        raise InvalidInput(f"{path} holds no input; --inputs takes one JSON run input per line")
    return tuple(values)


def _register(scenario: Scenario) -> None:
    @chaos_app.command(scenario.name, help=scenario.summary)
    @command
    async def play(
        runs: Annotated[int, typer.Option(help="Conversations to start.")] = 100,
        workers: Annotated[int, typer.Option(help="Worker processes.")] = 4,
        minutes: Annotated[float, typer.Option(help="How long faults are injected.")] = 5.0,
        database: Annotated[
            str | None,
            typer.Option(
                help="A PostgreSQL URL (it is put behind a proxy that can slow and stall it); "
                "default: a new SQLite file in the scenario's directory.",
                show_default=False,
            ),
        ] = None,
        report: Annotated[
            Path | None, typer.Option(help="Also write the report as JSON to this file.")
        ] = None,
        app: Annotated[
            str, typer.Option(help="The workers' app module (yours, to test your agents).")
        ] = "kernos.chaos.shop",
        agent: Annotated[str, typer.Option(help="The agent the conversations run.")] = "support",
        inputs: Annotated[
            Path | None,
            typer.Option(help="Run inputs for --app, one JSON value per line, used in turn."),
        ] = None,
        route: Annotated[
            list[str] | None,
            typer.Option(help="A gateway route your agents name (repeatable; default support)."),
        ] = None,
        lease_ttl: Annotated[float, typer.Option(help="The workers' lease TTL, seconds.")] = 5.0,
        concurrency: Annotated[int, typer.Option(help="Runs per worker at once.")] = 16,
        approval_delay: Annotated[
            float, typer.Option(help="Seconds the simulated approver takes.")
        ] = 5.0,
        drain: Annotated[
            float, typer.Option(help="Seconds to wait for the last runs after the faults.")
        ] = 120.0,
        seed: Annotated[int, typer.Option(help="Seed of the faults and the conversations.")] = 7,
        directory: Annotated[
            Path | None,
            typer.Option("--dir", help="Where logs and state go (default .kernos/chaos/...)."),
        ] = None,
    ) -> None:
        if app != "kernos.chaos.shop" and inputs is None:
            raise InvalidInput("--app needs --inputs: the run inputs of your agent")
        if report is not None and not report.resolve().parent.is_dir():
            raise InvalidInput(f"--report {report}: its directory does not exist")
        options = ChaosOptions(
            runs=runs,
            workers=workers,
            minutes=minutes,
            database=database,
            app=app,
            agent=agent,
            inputs=_inputs(inputs),
            routes=tuple(route or ("support",)),
            lease_ttl=lease_ttl,
            concurrency=concurrency,
            approval_delay=approval_delay,
            drain=drain,
            seed=seed,
            directory=directory,
        )
        result = await run_scenario(scenario, options, say=lambda line: out.print(line))
        render(result)
        if report is not None:
            report.write_text(json.dumps(result.as_json(), indent=2))
            out.print(f"report written to {report}")
        if not result.ok:
            raise typer.Exit(1)


for _scenario in SCENARIOS.values():
    _register(_scenario)


def render(report: Report) -> None:
    """The report as terminal tables: the outcome, the faults beside kernos, the invariants."""
    c, llm, fx, a = report.conversations, report.llm, report.effects, report.approvals
    t = report.answer_seconds
    table = Table(title=f"kernos chaos {report.scenario}", show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    waiting = ", ".join(f"{n} {why}" for why, n in c["waiting"].items()) or "none"
    rows = [
        ("conversations", f"{c['started']} started: {c['completed']} completed, "
         f"{c['failed']} failed, waiting: {waiting}, lost {c['lost']}"),
        ("time to answer", f"p50 {t['p50']} s, p95 {t['p95']} s, p99 {t['p99']} s, "
         f"max {t['max']} s"),
        ("LLM attempts", f"{llm['attempts_per_answer']} per answer, {llm['attempts_per_call']} "
         f"per model call; {llm['fallbacks']} fallbacks; answered by "
         + ", ".join(f"{p} {n}" for p, n in llm["answered_by"].items())),
        ("claims per run", str(c["claims_per_run"])),
        ("duplicate effects", "not measured (the app keeps no ledger)" if not fx["measured"]
         else f"{fx['duplicate_effects']} ({fx['refunds']} refunds; repeated executions: "
         + ", ".join(f"{k} {v}" for k, v in fx["repeated_executions"].items()) + ")"),
        ("stale-owner writes", str(report.stale_owner_writes)),
        ("cost", f"${report.cost_usd:.4f}"),
        ("approvals", f"{a['requested']} asked, {a['approved']} approved, {a['pending']} "
         f"pending; wait p50 {a['wait_seconds']['p50']} s"),
    ]  # fmt: skip
    if c["failures"]:
        rows.append(("failures", "; ".join(f"{n}x {e}" for e, n in c["failures"].items())))
    for label, value in rows:
        table.add_row(label, value)
    out.print(table)

    faults = Table(title="faults and what kernos did", header_style="bold", show_lines=False)
    for name in ("when", "target", "fault", "kernos"):
        faults.add_column(name, overflow="fold")
    for f in report.faults:
        faults.add_row(f["when"], f["target"], f["fault"], f["kernos"])
    out.print(faults)

    checks = Table(title="invariants", header_style="bold", box=None)
    for name in ("invariant", "value", "must be", ""):
        checks.add_column(name)
    for name, inv in report.invariants.items():
        checks.add_row(name.replace("_", " "), str(inv["value"]), inv["must"],
                       "ok" if inv["ok"] else "BROKEN")  # fmt: skip
    out.print(checks)
