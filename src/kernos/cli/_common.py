"""What every ``kernos`` command shares: the consoles, common options, running an async
command with its errors turned into one line and an exit code, and connecting."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from kernos.errors import ConfigError, InfrastructureError, KernosError, UsageError
from kernos.governance import redactor_from_config
from kernos.kernel import REGISTRY, Client, connect, load_app, load_settings

from ._render import output_width

# Data (inputs, outputs, errors, journal payloads) is printed as it is: never read as rich
# markup, where a "[/x]" in a run's input would crash the command or vanish from its output.
out = Console(highlight=False, soft_wrap=True, markup=False, emoji=False, width=output_width())
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False, width=output_width())

T = TypeVar("T")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
TenantOpt = Annotated[
    str | None, typer.Option(help="Charge the run's costs to this tenant (default: default).")
]
DbOpt = Annotated[
    str | None,
    typer.Option(
        "--database", envvar="KERNOS_DATABASE_URL", help="Database URL.", show_default=False
    ),
]
LogFormatOpt = Annotated[
    str | None,
    typer.Option(
        help="console (readable lines) or json (one object per line, with run, step and trace "
        "ids). Default: KERNOS_LOG_FORMAT, else console.",
        show_default=False,
    ),
]
AppOpt = Annotated[
    str | None,
    typer.Option(
        "--app", envvar="KERNOS_APP", help="Module that defines the agents.", show_default=False
    ),
]


def _exit_code(exc: KernosError) -> int:
    if isinstance(exc, UsageError):
        return 2
    if isinstance(exc, InfrastructureError):
        return 3
    return 1


def command(fn: Callable[..., Awaitable[T]]) -> Callable[..., T]:
    """Run an async command; turn kernos errors into one clear line and an exit code."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            coro = fn(*args, **kwargs)
            assert isinstance(coro, Coroutine)
            result: T = asyncio.run(coro)
            return result
        except KernosError as exc:
            err.print(f"[bold red]error:[/] {escape(str(exc))}")
            raise typer.Exit(_exit_code(exc)) from None
        except TimeoutError as exc:
            err.print(f"[bold red]timeout:[/] {escape(str(exc))}")
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None

    return wrapper


async def _client(
    database: str | None, app_module: str | None = None, *, create: bool = False
) -> Client:
    """Connect for a command. Only commands that create runs may create a SQLite file: a
    mistyped path must not silently yield an empty, new database."""
    if app_module:
        load_app(app_module)
    settings = load_settings()
    url = database or settings.database_url
    if not create:
        _require_existing(url)
    return await connect(url, settings=settings, registry=REGISTRY, redactor=redactor_from_config())


def _require_existing(url: str) -> None:
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.exists():
            raise ConfigError(
                f"no kernos database at {path} (from KERNOS_DATABASE_URL or --database); check "
                f"the path, or create it with `kernos db migrate` or `kernos run`"
            )
