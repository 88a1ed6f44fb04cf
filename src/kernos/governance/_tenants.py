"""The ``[tenants]`` table of kernos.toml: per-tenant concurrency limits, held fleet-wide.

::

    [tenants]
    max_concurrent_runs = 50     # every tenant's limit (optional; none: unlimited)

    [tenants.limits]             # tenants whose limit differs (optional)
    acme = 200

A limit is the most runs of a tenant that may be running at once over every worker of the
database; the workers enforce it when they claim (``kernos.store.TenantLimits``). The table's
presence, even empty, also makes claims fair across tenants. Read once by ``kernos worker`` at
start; a mistake stops the worker there with the file, the key and what to write instead.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

from kernos.errors import ConfigError
from kernos.gateway import find_config_file, problem_reason, read_config_file
from kernos.store import TenantLimits

_Limit = Annotated[int, Field(ge=1)]


class TenantsConfig(BaseModel):
    """The ``[tenants]`` table as written."""

    # strict: TOML has real types, so a limit of "50" or 2.5 is a mistake, not a coercion
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    #: every tenant's limit, unless ``limits`` names it (None: unlimited)
    max_concurrent_runs: _Limit | None = None
    #: tenant -> its own limit
    limits: dict[str, _Limit] = Field(default_factory=dict)

    def tenant_limits(self) -> TenantLimits:
        return TenantLimits(default=self.max_concurrent_runs, limits=self.limits)

    @classmethod
    def from_table(cls, table: object, *, source: str = "kernos.toml") -> TenantsConfig:
        """The configuration in a parsed ``[tenants]`` table, or ``ConfigError`` with one line
        per problem, each naming ``source``, the dotted key, what is wrong and how to fix it."""
        if not isinstance(table, Mapping):
            raise ConfigError(
                f"{source}: tenants: must be a table, got {type(table).__name__} (write "
                f"[tenants] on a line of its own, then max_concurrent_runs = N under it)"
            )
        try:
            return cls.model_validate(table)
        except ValidationError as exc:
            problems = "\n".join(f"{source}: {_describe(error)}" for error in exc.errors())
            raise ConfigError(problems) from None


def _describe(error: ErrorDetails) -> str:
    loc = tuple(_bare(str(part)) for part in ("tenants", *error["loc"]))
    key = ".".join(loc)
    if error["type"] == "extra_forbidden":
        return f"{key}: {_unknown_key(str(error['loc'][-1]))}"
    reason = problem_reason(error, loc)
    if loc[1:2] == ("limits",) and error["type"] in ("dict_type", "model_type"):
        return f"{key}: {reason} (write [tenants.limits] then one line per tenant: acme = 200)"
    fix = f"a limit is a whole number of runs, at least 1, e.g. {loc[-1]} = 10"
    if loc[1:] == ("max_concurrent_runs",):
        return (
            f"{key}: {reason}; {fix} (or leave it out: then only the tenants named under "
            f"[tenants.limits] are limited)"
        )
    if len(loc) == 3:
        return (
            f"{key}: {reason}; {fix} (or leave the tenant out to give it max_concurrent_runs; "
            f"to hold all of a tenant's runs, pause them)"
        )
    return f"{key}: {reason}"


def _bare(key: str) -> str:
    """A key as TOML writes it: quoted unless it is a bare key."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else f'"{key}"'


def _unknown_key(key: str) -> str:
    allowed = sorted(TenantsConfig.model_fields)
    close = difflib.get_close_matches(key, allowed, n=1)
    if close:
        return f"unknown key (did you mean {close[0]!r}?)"
    return (
        f"unknown key (the keys here are: {', '.join(allowed)}; a tenant's own limit goes "
        f"under [tenants.limits])"
    )


def tenant_limits_from_config(
    path: str | Path | None = None, *, env: Mapping[str, str] = os.environ
) -> TenantLimits | None:
    """The limits of kernos.toml's ``[tenants]`` table, read from ``path``, else the file
    ``KERNOS_CONFIG`` names, else ``./kernos.toml``; None when there is no file or no table
    (then claims stay in priority order and no tenant is limited).

    Raises ``ConfigError`` naming the file and key when the table is wrong: a limit below 1 or
    not a whole number, a typo'd key."""
    file = find_config_file(path, env)
    if file is None:
        return None
    data = read_config_file(file)
    if "tenants" not in data:
        return None
    return TenantsConfig.from_table(data["tenants"], source=str(file)).tenant_limits()
