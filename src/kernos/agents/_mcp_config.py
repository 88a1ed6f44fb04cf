"""MCP servers as ``kernos.toml`` describes them: ``[mcp.servers.NAME]`` tables.

The file is found as the gateway finds it (the ``path`` given, else the file ``KERNOS_CONFIG``
names, else ``./kernos.toml``) and read once, when :func:`kernos.agents.mcp_server` builds a
server::

    [mcp.servers.billing]              # stdio: kernos starts the server as a child process
    command = "python"
    args = ["billing_server.py"]       # relative paths resolve in cwd, which defaults to the
    cwd = "servers"                    # file's own directory (relative cwd: from that directory)
    env = { LOG_LEVEL = "info" }       # added to a minimal environment (PATH, HOME, ...)
    pass_env = ["STRIPE_API_KEY"]      # variables passed on from kernos's own environment
    timeout = 30                       # seconds one call may take
    startup_timeout = 30               # seconds to start and complete the MCP handshake

    [mcp.servers.search]               # streamable HTTP: a server that is already running
    url = "http://127.0.0.1:8931/mcp"
    headers = { X-Tenant = "acme" }
    headers_env = { Authorization = "SEARCH_MCP_AUTH" }   # header value from the environment

A server runs with kernos's environment withheld (the SDK passes PATH, HOME and a few more), so
a secret reaches it only when the file names it in ``pass_env``; like the gateway's provider
keys, secrets live in the environment and never in the file, which is why an ``Authorization``
header written into ``headers`` is an error. A bad ``[mcp]`` section fails when a server is
built, with the file, the key and what to change.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails

from kernos.errors import ConfigError
from kernos.gateway import (
    CONFIG_ENV,
    DEFAULT_CONFIG_FILE,
    find_config_file,
    problem_reason,
    read_config_file,
)

#: seconds a call may take, and a server may take to start, unless configured
DEFAULT_TIMEOUT: Final = 30.0

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_ENV_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SECRET_HEADERS: Final = frozenset(
    {"authorization", "proxy-authorization", "x-api-key", "api-key", "cookie"}
)


@dataclass(frozen=True, kw_only=True)
class StdioTransport:
    """A server kernos starts as a child process and talks to over its stdin and stdout."""

    command: str
    args: tuple[str, ...] = ()
    #: added to the SDK's minimal environment; None: that environment alone
    env: Mapping[str, str] | None = None
    #: None: the working directory of the process that starts the server
    cwd: str | None = None

    def describe(self) -> str:
        return " ".join((self.command, *self.args))


@dataclass(frozen=True, kw_only=True)
class HttpTransport:
    """A running server reached over streamable HTTP."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        return self.url


Transport = StdioTransport | HttpTransport


@dataclass(frozen=True, kw_only=True)
class ServerSettings:
    """Everything an ``McpServer`` is built from, from code or from ``kernos.toml``."""

    name: str
    transport: Transport
    #: seconds one call (or one listing of the tools) may take
    timeout: float = DEFAULT_TIMEOUT
    #: seconds to start the server (or connect to it) and complete the MCP handshake
    startup_timeout: float = DEFAULT_TIMEOUT


class _Table(BaseModel):
    # strict: TOML has real types, so timeout = "30" is a mistake worth reporting
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class _ServerTable(_Table):
    command: str | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    pass_env: list[str] = Field(default_factory=list)
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    headers_env: dict[str, str] = Field(default_factory=dict)
    # not strict: timeout = 30 (an integer) is as good as 30.0
    timeout: float = Field(default=DEFAULT_TIMEOUT, gt=0, strict=False)
    startup_timeout: float = Field(default=DEFAULT_TIMEOUT, gt=0, strict=False)

    @model_validator(mode="after")
    def _one_transport(self) -> _ServerTable:
        if (self.command is None) == (self.url is None):
            raise ValueError(
                'give either command (a server kernos starts, e.g. command = "python" and '
                'args = ["server.py"]) or url (a running server, e.g. url = '
                '"http://127.0.0.1:8931/mcp"), not both or neither'
            )
        stdio_only = {"args": self.args, "env": self.env, "pass_env": self.pass_env}
        http_only = {"headers": self.headers, "headers_env": self.headers_env}
        wrong = stdio_only if self.url is not None else http_only
        misplaced = [key for key, value in wrong.items() if value]
        if self.url is not None and self.cwd is not None:
            misplaced.append("cwd")
        if misplaced:
            kind = "a url (HTTP) server" if self.url is not None else "a command (stdio) server"
            raise ValueError(f"{', '.join(misplaced)} cannot be set for {kind}")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {self.url!r}")
        for header in self.headers:
            if header.lower() in _SECRET_HEADERS:
                raise ValueError(
                    f"header {header!r} carries a secret, which must not be written in the file: "
                    f'name the environment variable that holds it, e.g. headers_env = {{ "{header}" '
                    f'= "MY_SERVER_TOKEN" }}'
                )
        for variable in [*self.pass_env, *self.headers_env.values()]:
            if not _ENV_VAR.fullmatch(variable):
                raise ValueError(f"{variable!r} is not an environment variable name")
        return self


class _McpSection(_Table):
    servers: dict[str, _ServerTable] = Field(default_factory=dict)


def server_settings(
    name: str, *, path: str | Path | None = None, env: Mapping[str, str] = os.environ
) -> ServerSettings:
    """The settings of ``[mcp.servers.NAME]`` in the config file; ``ConfigError`` saying what is
    wrong (no file, no such server, a bad key, an unset variable) and how to fix it."""
    file = find_config_file(path, env)
    if file is None:
        raise ConfigError(
            f"no MCP server {name!r} is configured: there is no ./{DEFAULT_CONFIG_FILE} (and "
            f"{CONFIG_ENV} is not set); add a [mcp.servers.{name}] table to {DEFAULT_CONFIG_FILE} "
            f"or build the server in code with McpServer.stdio(...) or McpServer.http(...)"
        )
    data = read_config_file(file)
    section = data.get("mcp", {})
    try:
        mcp = _McpSection.model_validate(section)
    except ValidationError as exc:
        problems = "\n".join(f"{file}: {_describe(error)}" for error in exc.errors())
        raise ConfigError(problems) from None
    table = mcp.servers.get(name)
    if table is None:
        known = ", ".join(sorted(mcp.servers)) or "none"
        raise ConfigError(
            f"{file}: no MCP server {name!r} (configured: {known}); add a [mcp.servers.{name}] "
            f"table or fix the name"
        )
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"{file}: mcp.servers.{name}: a server name is letters, digits, '_', '.' and '-'"
        )
    return ServerSettings(
        name=name,
        transport=_transport(file, name, table, env),
        timeout=table.timeout,
        startup_timeout=table.startup_timeout,
    )


def _transport(file: Path, name: str, table: _ServerTable, env: Mapping[str, str]) -> Transport:
    where = f"{file}: mcp.servers.{name}"
    if table.url is not None:
        headers = dict(table.headers)
        for header, variable in table.headers_env.items():
            headers[header] = _variable(where, "headers_env", variable, env)
        return HttpTransport(url=table.url, headers=headers)
    assert table.command is not None  # one of command and url, checked by the table
    server_env = dict(table.env)
    for variable in table.pass_env:
        server_env[variable] = _variable(where, "pass_env", variable, env)
    base = file.resolve().parent
    cwd = base / table.cwd if table.cwd is not None else base
    return StdioTransport(
        command=table.command,
        args=tuple(table.args),
        env=server_env or None,
        cwd=str(cwd),
    )


def _variable(where: str, key: str, variable: str, env: Mapping[str, str]) -> str:
    value = env.get(variable)
    if value is None:
        raise ConfigError(
            f"{where}.{key}: the environment variable {variable} is not set (export it before "
            f"starting kernos, or remove it from {key})"
        )
    return value


def _describe(error: ErrorDetails) -> str:
    """One problem as a person editing the file needs it: ``mcp.servers.x.timeout: must be a
    positive number, got -5``."""
    where = ".".join(["mcp", *(str(part) for part in error["loc"])])
    kind = error["type"]
    if kind == "extra_forbidden" and len(error["loc"]) == 1:
        return f"{where}: unknown key (the only key of [mcp] is servers)"
    if kind == "extra_forbidden":
        return f"{where}: unknown key (the keys of a server are: {_keys()})"
    if kind == "value_error":
        return f"{where}: {error['msg'].removeprefix('Value error, ')}"
    return f"{where}: {problem_reason(error)}"


def _keys() -> str:
    return ", ".join(_ServerTable.model_fields)
