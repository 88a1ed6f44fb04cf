"""``kernos serve``: the HTTP API on uvicorn."""

from __future__ import annotations

import asyncio
import os
from typing import Annotated, Any

import typer
import uvicorn
from rich.console import Console
from rich.markup import escape

from kernos.api import create_app
from kernos.errors import InfrastructureError, KernosError, UsageError
from kernos.governance import audit_config
from kernos.kernel import REGISTRY, connect, load_app, load_settings

from ._common import LogFormatOpt

err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)

#: seconds open event streams get to finish when the server stops, before they are cut
GRACEFUL_SHUTDOWN = 5


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=0, max=65535)] = 8000,
    workers: Annotated[
        int, typer.Option(help="Server processes (each with its own connections).", min=1)
    ] = 1,
    database: Annotated[
        str | None,
        typer.Option(
            "--database", envvar="KERNOS_DATABASE_URL", help="Database URL.", show_default=False
        ),
    ] = None,
    app_module: Annotated[
        str | None,
        typer.Option(
            "--app",
            envvar="KERNOS_APP",
            help="Module defining the agents, to validate run inputs up front (optional).",
            show_default=False,
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning.")] = "info",
    log_format: LogFormatOpt = None,
) -> None:
    """Serve the HTTP API: runs, events (SSE), approvals, costs, budgets, audit, MCP tool
    pins; /openapi.json.

    Every /v1 route needs an API key (kernos keys create); /healthz, /readyz and /metrics
    (Prometheus) do not. The database is migrated once before
    the server starts, and kernos.toml is audited (config.changed) if it changed since last
    recorded; with --workers N, N processes share the port.
    """
    fmt = (log_format or os.environ.get("KERNOS_LOG_FORMAT") or "console").lower()
    if fmt not in ("console", "json"):
        err.print(f"[bold red]error:[/] log format {fmt!r}: use 'console' or 'json'")
        raise typer.Exit(2)
    logs = _log_config(log_level, fmt)
    try:
        settings = load_settings()
        url = database or settings.database_url
        registry = load_app(app_module) if app_module else REGISTRY
        asyncio.run(_prepare(url))
    except KernosError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(_exit_code(exc)) from None
    if workers == 1:
        uvicorn.run(
            create_app(url, settings=settings, registry=registry),
            host=host,
            port=port,
            log_level=log_level.lower(),
            log_config=logs,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
        )
        return
    # Each process builds its app from the environment (uvicorn wants an import string).
    os.environ["KERNOS_DATABASE_URL"] = url
    if app_module:
        os.environ["KERNOS_APP"] = app_module
    uvicorn.run(
        "kernos.api:create_app",
        factory=True,
        workers=workers,
        host=host,
        port=port,
        log_level=log_level.lower(),
        log_config=logs,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
    )


def _log_config(level: str, fmt: str) -> dict[str, Any]:
    """uvicorn's loggers and ours, readable or as JSON lines (``kernos.telemetry``)."""
    formatter: dict[str, Any] = (
        {"()": "kernos.telemetry.JsonFormatter"}
        if fmt == "json"
        else {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    )
    handler = {"class": "logging.StreamHandler", "formatter": "main", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"main": formatter},
        "handlers": {"main": handler},
        "loggers": {
            name: {"handlers": ["main"], "level": level.upper(), "propagate": False}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
        "root": {"handlers": ["main"], "level": level.upper()},
    }


def _exit_code(exc: KernosError) -> int:
    """As every kernos command: 2 for a usage error, 3 when the database is unavailable."""
    if isinstance(exc, UsageError):
        return 2
    return 3 if isinstance(exc, InfrastructureError) else 1


async def _prepare(url: str) -> None:
    """Open and migrate the database once, so that a wrong URL or a database that is down is
    one clear line here rather than a traceback from each server process; and audit the
    config file if it changed since last recorded (``config.changed``), once per start
    however many server processes follow."""
    client = await connect(url)
    try:
        await audit_config(client.store, process="kernos serve")
    finally:
        await client.close()
