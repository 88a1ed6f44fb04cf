"""``kernos policy``: check a rule set, and see what it would have decided on recorded history.

``check`` reads nothing but the file; ``replay`` also reads runs and journals, and changes
nothing. As everywhere in the CLI, a problem prints one line per problem and exits 2 (fix the
file or the command), 3 when the database is unavailable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from kernos.errors import ConfigError
from kernos.gateway import CONFIG_ENV, DEFAULT_CONFIG_FILE
from kernos.governance import Policy, ReplayedCall, ReplayReport, load_policy, replay_policy
from kernos.kernel import format_time

from ._common import DbOpt, JsonOpt, _client, command, err, out
from ._render import dumps, parse_since

__all__ = ["policy_app"]

policy_app = typer.Typer(
    help="Access policy: allow, deny or require approval for each tool and LLM call.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

FileArg = Annotated[
    Path,
    typer.Argument(
        help="A kernos.toml with [policy], or a policy file (default and [[rules]]).",
        show_default=False,
    ),
]


def _load(file: Path | None) -> Policy:
    """The policy in ``file`` (or in the config kernos would read), or ``ConfigError``."""
    policy = load_policy(file)
    if policy is not None:
        return policy
    if file is None:
        raise ConfigError(
            f"no policy to check: there is no ./{DEFAULT_CONFIG_FILE} with a [policy] table and "
            f"{CONFIG_ENV} names none; pass the file: kernos policy check FILE"
        )
    raise ConfigError(
        f"{file}: no policy in this file: a kernos.toml has a [policy] table (with "
        f'[[policy.rules]], or file = "policy.toml"), a policy file has default and [[rules]] '
        f"at its top level"
    )


@policy_app.command("check")
@command
async def check(
    file: Annotated[
        Path | None,
        typer.Argument(
            help="A kernos.toml with [policy], or a policy file (default: the config kernos "
            "reads: KERNOS_CONFIG, else ./kernos.toml).",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate a rule set and print its rules in the order they decide."""
    policy = _load(file)
    if as_json:
        out.print(dumps(_policy_dict(policy)))
    else:
        count = f"{len(policy.rules)} rule{'' if len(policy.rules) == 1 else 's'}"
        out.print(
            f"{policy.source}: ok: {count} in decision order, default {policy.default} "
            f"(policy {policy.digest})"
        )
        if policy.rules:
            out.print(_rules_table(policy))
    for warning in policy.warnings:
        err.print(f"[bold yellow]warning:[/] {escape(warning)}")


def _policy_dict(policy: Policy) -> dict[str, Any]:
    return {
        "file": policy.source,
        "ok": True,
        "policy": policy.digest,
        "default": policy.default,
        "rules": [
            {
                "order": order,
                "name": rule.name,
                "priority": rule.priority,
                "effect": rule.effect,
                "when": rule.when,
                "reason": rule.reason,
            }
            for order, rule in enumerate(policy.rules, 1)
        ],
        "warnings": list(policy.warnings),
    }


def _rules_table(policy: Policy) -> Table:
    table = Table(box=None, header_style="bold")
    table.add_column("#", justify="right")
    table.add_column("PRIORITY", justify="right")
    for column in ("RULE", "EFFECT", "WHEN"):
        table.add_column(column)
    for order, rule in enumerate(policy.rules, 1):
        when = " ".join(rule.when.split())
        table.add_row(str(order), str(rule.priority), rule.name, rule.effect, when)
    return table


@policy_app.command("replay")
@command
async def replay(
    file: FileArg,
    since: Annotated[
        str,
        typer.Option(
            help="Runs created since: a duration back from now (30m, 24h, 7d) or a date.",
            show_default=False,
        ),
    ],
    limit: Annotated[
        int, typer.Option(help="List at most this many denied or held calls (oldest first).")
    ] = 50,
    as_json: JsonOpt = False,
    database: DbOpt = None,
) -> None:
    """What FILE's rules would have decided for each tool and LLM call on recorded runs."""
    policy = _load(file)
    start = parse_since(since)
    async with await _client(database) as client:
        report = await replay_policy(client, policy, since=start)
    if as_json:
        out.print(dumps(_report_dict(report)))
        return
    _print_report(report, limit)


def _report_dict(report: ReplayReport) -> dict[str, Any]:
    return {
        "file": report.policy.source,
        "policy": report.policy.digest,
        "since": report.since,
        "runs": report.runs,
        "calls": {"tool": report.tool_calls, "llm": report.llm_calls},
        "rules": [
            {
                "rule": t.rule,
                "effect": t.effect,
                "calls": t.calls,
                "failed_closed": t.failed_closed,
            }
            for t in report.tally
        ],
        "flagged": [
            {
                "run": f.call.run_id,
                "seq": f.call.seq,
                "at": f.call.at,
                "kind": f.call.subject.kind,
                "tool": f.call.subject.tool,
                "model": f.call.subject.model,
                "args": dict(f.call.subject.args),
                **f.decision.payload(),
            }
            for f in report.flagged
        ],
    }


def _print_report(report: ReplayReport, limit: int) -> None:
    policy = report.policy
    out.print(
        f"{policy.source} (policy {policy.digest}) on {report.runs} run(s) created since "
        f"{format_time(report.since)}: {report.tool_calls} tool call(s), {report.llm_calls} "
        f"LLM call(s)"
    )
    tally = Table(box=None, header_style="bold")
    tally.add_column("RULE")
    tally.add_column("EFFECT")
    tally.add_column("CALLS", justify="right")
    tally.add_column("FAILED CLOSED", justify="right")
    for line in report.tally:
        closed = "-" if line.rule is None else str(line.failed_closed)
        tally.add_row(line.rule or "(default)", line.effect, str(line.calls), closed)
    out.print(tally)
    if not report.flagged:
        out.print("\nno call would be denied or need approval")
        return
    out.print(f"\n{len(report.flagged)} call(s) would be denied or need approval:")
    out.print(_flagged_table(report.flagged[: max(limit, 0)]))
    hidden = len(report.flagged) - max(limit, 0)
    if hidden > 0:
        out.print(f"... and {hidden} more (--limit, or --json for all)")


def _flagged_table(flagged: tuple[ReplayedCall, ...]) -> Table:
    table = Table(box=None, header_style="bold")
    for column in ("RUN", "AT", "CALL", "EFFECT", "RULE", "ARGS"):
        table.add_column(column, overflow="fold")
    for item in flagged:
        subject, decision = item.call.subject, item.decision
        call = f"tool {subject.tool}" if subject.kind == "tool" else f"llm {subject.model}"
        rule = decision.rule or "(default)"
        if decision.failed_closed:
            rule += " (failed closed)"
        table.add_row(
            item.call.run_id,
            format_time(item.call.at),
            call,
            decision.effect,
            rule,
            _short(json.dumps(dict(subject.args), default=str, ensure_ascii=False), 80),
        )
    return table


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
