"""docs/configuration.md cannot rot: every ``KERNOS_*`` environment variable the code reads and
every top-level ``kernos`` command must be in it.

The variables are found two ways: the literal names in ``src/`` (``os.environ.get(...)``,
typer's ``envvar=``, error messages), and the fields of ``kernos.Settings``, which
pydantic-settings reads as ``KERNOS_<FIELD>`` without the name ever being written out.
"""

from __future__ import annotations

import re
from pathlib import Path

import typer
import typer.core

import kernos
from kernos.cli import app

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "configuration.md"
SRC = ROOT / "src" / "kernos"

#: a variable's name: the prefix alone (``env_prefix="KERNOS_"``) is not one
_VARIABLE = re.compile(r"\bKERNOS_[A-Z][A-Z0-9_]*\b")


def variables_in_source() -> set[str]:
    found: set[str] = set()
    for path in SRC.rglob("*.py"):
        found.update(_VARIABLE.findall(path.read_text(encoding="utf-8")))
    return found


def settings_variables() -> set[str]:
    return {f"KERNOS_{name.upper()}" for name in kernos.Settings.model_fields}


def top_level_commands() -> set[str]:
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    return set(group.commands)


def test_the_variables_are_found() -> None:
    # the finders themselves work: these are read in very different ways
    assert "KERNOS_CONFIG" in variables_in_source()  # a constant in gateway/_config.py
    assert "KERNOS_LEASE_TTL" in settings_variables()  # only a Settings field
    assert {"worker", "run", "db", "agents"} <= top_level_commands()


def test_every_environment_variable_is_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    missing = sorted(
        v for v in variables_in_source() | settings_variables() if f"`{v}`" not in text
    )
    assert not missing, (
        f"{DOC.relative_to(ROOT)} does not document {', '.join(missing)}: add each to the "
        f"table under 'Environment variables' (type, default, what it is for)"
    )


def test_every_top_level_command_is_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    missing = sorted(c for c in top_level_commands() if f"`kernos {c}`" not in text)
    assert not missing, (
        f"{DOC.relative_to(ROOT)} does not document the command(s) "
        f"{', '.join('kernos ' + c for c in missing)}: add each to the table of commands and a "
        f"section under 'CLI' with its arguments and options"
    )
