"""``kernos sim``: run the LLM provider simulator, and steer a running one.

``kernos sim`` serves in the foreground until Ctrl-C or SIGTERM. The other commands talk to a
running simulator through its ``/_sim/`` control endpoint (``--url``, or ``KERNOS_SIM_URL``).
As everywhere in the CLI, an error is one line saying what to do, with exit code 2 for a usage
error (fix the command) and 3 when the simulator cannot be reached (start it, or fix --url).
"""

from __future__ import annotations

import json
import secrets
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kernos.errors import InvalidInput
from kernos.sim import FAULT_KINDS, Fault, LogEntry, Simulator, parse_provider_fault, serve

__all__ = ["sim_app"]

DEFAULT_PORT = 8900

sim_app = typer.Typer(
    help=(
        "The LLM provider simulator: OpenAI and Anthropic endpoints for any provider name, "
        "with faults to inject. Without a command, run it."
    ),
    invoke_without_command=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
faults_app = typer.Typer(help="Fault rules of a running simulator.", no_args_is_help=True)
sim_app.add_typer(faults_app, name="faults")

out = Console(highlight=False, soft_wrap=True, markup=False, emoji=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)

UrlOpt = Annotated[
    str,
    typer.Option("--url", envvar="KERNOS_SIM_URL", help="The running simulator's URL."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
ProviderArg = Annotated[str, typer.Argument(help="Provider name ('*' for every provider).")]
SpecsArg = Annotated[
    list[str],
    typer.Argument(
        help=f"Rules as KIND[:key=value,...]; kinds: {', '.join(FAULT_KINDS)}.",
        show_default=False,
    ),
]
DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"


def _fail(message: str, code: int) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(message)}")
    return typer.Exit(code)


# -- serving ------------------------------------------------------------------------------------


@sim_app.callback()
def sim(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = DEFAULT_PORT,
    seed: Annotated[
        int | None, typer.Option(help="Seed for fault rates (same seed, same faults).")
    ] = None,
    fault: Annotated[
        list[str] | None,
        typer.Option(
            "--fault",
            help="PROVIDER:KIND[:key=value,...], repeatable; e.g. openai:rate_limit:rate=0.2",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the simulator in the foreground; Ctrl-C or SIGTERM stops it."""
    if ctx.invoked_subcommand is not None:
        return
    if seed is None:  # drawn, and printed, so that an interesting run can be replayed
        seed = secrets.randbelow(1 << 31)
    simulator = Simulator(seed=seed)
    try:
        for spec in fault or []:
            simulator.add_fault(*parse_provider_fault(spec))
    except InvalidInput as exc:
        raise _fail(str(exc), 2) from None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        with serve(host=host, port=port, simulator=simulator) as server:
            _banner(server.url, simulator, seed)
            stop.wait()
    except OSError as exc:
        raise _fail(
            f"cannot listen on {host}:{port}: {exc.strerror or exc} (is another simulator "
            f"running there? pick another --port)",
            2,
        ) from None
    err.print("[dim]kernos sim stopped[/]")


def _banner(url: str, simulator: Simulator, seed: int | None) -> None:
    out.print(f"kernos sim listening on {url}" + (f" (seed {seed})" if seed is not None else ""))
    out.print(f"  OpenAI     base_url {url}/PROVIDER/v1   e.g. {url}/openai/v1")
    out.print(f"  Anthropic  base_url {url}/PROVIDER      e.g. {url}/anthropic")
    out.print(f"  control    {url}/_sim/   (kernos sim faults --url {url} ...)")
    for provider in simulator.providers():
        for f in simulator.faults(provider):
            out.print(f"  fault      {provider}: {f.describe()}")


# -- the control endpoint -----------------------------------------------------------------------


@contextmanager
def _control(url: str) -> Iterator[httpx.Client]:
    base = url.rstrip("/") + "/_sim"
    try:
        with httpx.Client(base_url=base, timeout=10) as client:
            yield client
    except httpx.TransportError as exc:
        raise _fail(
            f"no simulator answers at {url} ({type(exc).__name__}); start one with "
            f"`kernos sim --port {DEFAULT_PORT}`, or pass --url / set KERNOS_SIM_URL",
            3,
        ) from None


def _call(client: httpx.Client, method: str, path: str, body: object = None) -> Any:
    response = client.request(method, path, json=body)
    try:
        data = response.json()
    except ValueError:
        data = None
    if response.status_code == 400 and isinstance(data, dict):
        raise _fail(str(data.get("error")), 2)
    if response.status_code != 200 or data is None:
        raise _fail(
            f"{method} {response.request.url} answered {response.status_code}: is --url a "
            f"kernos simulator?",
            1,
        )
    return data


def _parse_specs(specs: list[str]) -> list[Fault]:
    try:
        return [Fault.parse(spec) for spec in specs]
    except InvalidInput as exc:
        raise _fail(str(exc), 2) from None


def _print_faults(listing: list[tuple[str, list[dict[str, Any]]]], as_json: bool) -> None:
    if as_json:
        out.print(json.dumps({p: faults for p, faults in listing}, indent=2))
        return
    table = Table(box=None, pad_edge=False)
    for column in ("PROVIDER", "#", "RULE"):
        table.add_column(column)
    for provider, faults in listing:
        for i, f in enumerate(faults, 1):
            table.add_row(provider, str(i), Fault.model_validate(f).describe())
    if table.row_count:
        out.print(table)
    else:
        out.print("no fault rules")


@faults_app.command("list")
def faults_list(
    provider: Annotated[str | None, typer.Argument(help="Only this provider.")] = None,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Rules per provider, in evaluation order; count is what remains."""
    with _control(url) as client:
        names = [provider] if provider else _call(client, "GET", "/providers")["providers"]
        listing = [(p, _call(client, "GET", f"/providers/{p}/faults")["faults"]) for p in names]
    _print_faults([(p, f) for p, f in listing if f or provider], as_json)


@faults_app.command("add")
def faults_add(
    provider: ProviderArg, specs: SpecsArg, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False
) -> None:
    """Append rules to PROVIDER's list."""
    rules = _parse_specs(specs)
    with _control(url) as client:
        data: dict[str, Any] = {}
        for rule in rules:
            body = rule.model_dump(mode="json", exclude_none=True)
            data = _call(client, "POST", f"/providers/{provider}/faults", body)
    _print_faults([(provider, data["faults"])], as_json)


@faults_app.command("set")
def faults_set(
    provider: ProviderArg, specs: SpecsArg, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False
) -> None:
    """Replace PROVIDER's rules (their windows restart now)."""
    rules = [r.model_dump(mode="json", exclude_none=True) for r in _parse_specs(specs)]
    with _control(url) as client:
        data = _call(client, "PUT", f"/providers/{provider}/faults", {"faults": rules})
    _print_faults([(provider, data["faults"])], as_json)


@faults_app.command("clear")
def faults_clear(provider: ProviderArg, url: UrlOpt = DEFAULT_URL) -> None:
    """Remove PROVIDER's rules."""
    with _control(url) as client:
        _call(client, "DELETE", f"/providers/{provider}/faults")
    out.print(f"{provider}: no fault rules")


@sim_app.command("script")
def script(
    provider: ProviderArg,
    replies: Annotated[
        list[str],
        typer.Argument(
            help="Replies to queue: plain text, or a JSON object such as "
            '\'{"tool_calls": [{"name": "lookup", "arguments": {"id": 7}}]}\'.',
            show_default=False,
        ),
    ],
    url: UrlOpt = DEFAULT_URL,
) -> None:
    """Queue scripted replies for PROVIDER (taken in order by requests it answers in full)."""
    bodies: list[object] = []
    for reply in replies:
        if not reply.lstrip().startswith("{"):
            bodies.append({"text": reply})
            continue
        try:
            bodies.append(json.loads(reply))
        except ValueError as exc:
            raise _fail(f"reply {reply!r} is not JSON ({exc}); quote plain text", 2) from None
    with _control(url) as client:
        data = _call(client, "POST", f"/providers/{provider}/script", {"replies": bodies})
    out.print(f"{provider}: {len(data['replies'])} scripted reply(ies) waiting")


@sim_app.command("log")
def log(
    provider: Annotated[str | None, typer.Option(help="Only this provider.")] = None,
    since: Annotated[int, typer.Option(help="Only entries after this seq.")] = 0,
    limit: Annotated[int, typer.Option(help="At most this many (the latest).")] = 50,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Requests the simulator received: when, for which model, and what it did to them."""
    params = f"?since={since}" + (f"&provider={provider}" if provider else "")
    with _control(url) as client:
        entries = [
            LogEntry.model_validate(e) for e in _call(client, "GET", "/log" + params)["entries"]
        ]
    entries = entries[-limit:] if limit > 0 else entries
    if as_json:
        out.print(json.dumps([e.model_dump(mode="json") for e in entries], indent=2))
        return
    table = Table(box=None, pad_edge=False)
    for column in ("SEQ", "ARRIVED", "PROVIDER", "FAMILY", "MODEL", "STREAM", "FAULT", "STATUS"):
        table.add_column(column)
    for e in entries:
        table.add_row(
            str(e.seq),
            datetime.fromtimestamp(e.arrived_wall).strftime("%H:%M:%S.%f")[:-3],
            e.provider,
            e.family,
            e.model or "-",
            "yes" if e.stream else "no",
            e.fault or "-",
            "dropped" if e.status is None else str(e.status),
        )
    out.print(table if entries else "no requests logged")


@sim_app.command("reset")
def reset(
    seed: Annotated[int | None, typer.Option(help="Reseed (default: the start seed).")] = None,
    url: UrlOpt = DEFAULT_URL,
) -> None:
    """Forget every provider's rules, scripts and log."""
    with _control(url) as client:
        _call(client, "POST", "/reset", {"seed": seed} if seed is not None else None)
    out.print("simulator reset")
