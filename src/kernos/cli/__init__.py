"""The ``kernos`` command line (typer + rich)."""

from kernos.cli._app import app, main

__all__ = ["app", "main"]
