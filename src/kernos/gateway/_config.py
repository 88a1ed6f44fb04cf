"""The gateway's configuration: providers, routes, retry and breaker settings, price overrides.

Read once at start from ``kernos.toml`` in the working directory (or the file ``KERNOS_CONFIG``
names) and passed down; nothing re-reads it behind the caller's back. Everything has a default,
so no file at all means the two official providers, ``openai`` and ``anthropic``, with their keys
in ``OPENAI_API_KEY`` and ``ANTHROPIC_API_KEY``::

    [providers.openai]             # any name; kind picks the protocol
    kind = "openai"                # OpenAI-compatible Chat Completions (vLLM, Ollama, Groq, ...)
    base_url = "https://api.openai.com/v1"
    api_key_env = "OPENAI_API_KEY" # "" for a local server that needs no key
    rpm = 500                      # optional client-side limits
    tpm = 200000

    [routes]                       # a route is a fallback chain of provider:model
    support = ["anthropic:claude-sonnet-4-5", "openai:gpt-4.1-mini"]

    [gateway]                      # retries, backoff, breaker, deadline
    max_attempts = 3

    [prices."ollama:llama3.1:8b"]  # USD per million tokens; overrides the built-in table
    input = 0
    output = 0
    context_window = 131072

A bad file fails at load, not at the first call, with the file, the key and what is wrong:
``kernos.toml: providers.openai.rpm: must be a positive number, got -5``. A typo'd key is an
error too, and so is a secret written into the file: keys live in the environment.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from kernos.errors import ConfigError
from kernos.gateway._prices import Price, PriceTable

#: read from the working directory when ``KERNOS_CONFIG`` is not set
DEFAULT_CONFIG_FILE: Final = "kernos.toml"
#: environment variable naming another config file
CONFIG_ENV: Final = "KERNOS_CONFIG"
#: the API key sent to a provider configured with ``api_key_env = ""`` (the SDKs insist on one)
NO_API_KEY: Final = "no-key"

ProviderKind = Literal["openai", "anthropic"]

_BASE_URLS: Final[Mapping[str, str]] = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
}
#: providers that exist without a file; a [providers.NAME] table of the same name redefines one
_DEFAULT_PROVIDERS: Final = ("openai", "anthropic")

_PROVIDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_ENV_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SECRET_KEYS: Final = frozenset(
    {"api_key", "apikey", "key", "token", "api_token", "access_token", "secret", "password"}
)
_SECRET_HEADERS: Final = frozenset({"authorization", "proxy-authorization", "x-api-key", "api-key"})


def _put_key_in_env(variable: str) -> str:
    return (
        f"put the key in an environment variable and name it with api_key_env (e.g. export "
        f'{variable}=... and api_key_env = "{variable}", the default): the config file must '
        f"hold no secrets"
    )


def _default_key_variable(provider: str) -> str:
    """``NAME_API_KEY``: where a provider's key is looked for unless ``api_key_env`` says."""
    return re.sub(r"[^A-Za-z0-9]", "_", provider).upper() + "_API_KEY"


def _invalid(message: str, *path: str | int) -> PydanticCustomError:
    """A validation error worded for the user; ``path`` continues pydantic's location below the
    model that raised it (a model validator only knows its own)."""
    return PydanticCustomError("kernos", "{message}", {"message": message, "path": path})


class _Model(BaseModel):
    # strict: TOML has real types, so rpm = "500" is a mistake worth reporting, not coercing
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class ProviderConfig(_Model):
    """One provider: the protocol it speaks, where, with which key, and how often it may be
    called.

    In ``kernos.toml`` it is a ``[providers.NAME]`` table whose keys may all be left out:
    ``kind`` is the kind of the built-in provider of that name (``openai`` for any other name),
    ``base_url`` the kind's official endpoint, ``api_key_env`` ``NAME_API_KEY``. The key itself
    is read from the environment only when :meth:`api_key` is called.
    """

    name: str
    # The defaults below are those of a provider named "openai"; other names get theirs from
    # _defaults_from_name.
    kind: ProviderKind = "openai"
    base_url: str = _BASE_URLS["openai"]
    #: environment variable holding the API key; "" for a server that needs none
    api_key_env: str = "OPENAI_API_KEY"
    #: client-side limit on requests per minute (None: no limit)
    rpm: int | None = Field(default=None, gt=0)
    #: client-side limit on tokens per minute (None: no limit)
    tpm: int | None = Field(default=None, gt=0)
    #: seconds an HTTP request to this provider may take (the SDK client's timeout)
    timeout: float = Field(default=60.0, gt=0)
    #: sent with every request (e.g. OpenAI-Organization); never credentials
    headers: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _defaults_from_name(cls, data: object) -> object:
        if not isinstance(data, Mapping) or not isinstance(data.get("name"), str):
            return data
        name: str = data["name"]
        for key in data:
            if isinstance(key, str) and key.lower() in _SECRET_KEYS:
                raise _invalid(_put_key_in_env(_default_key_variable(name)), key)
        kind = data.get("kind", name if name in _DEFAULT_PROVIDERS else "openai")
        # a bad kind is reported by its own check; the URL default must not raise first
        base_url = _BASE_URLS[kind] if isinstance(kind, str) and kind in _BASE_URLS else ""
        defaults = {
            "kind": kind,
            "base_url": base_url or _BASE_URLS["openai"],
            "api_key_env": _default_key_variable(name),
        }
        return {**defaults, **data}

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        if not _PROVIDER_NAME.fullmatch(name):
            raise _invalid(
                f"a provider name may use letters, digits, '-', '_' and '.' (it is written "
                f"before the ':' of provider:model), got {name!r}"
            )
        return name

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise _invalid(f"must be an http:// or https:// URL, got {url!r}")
        return url

    @field_validator("api_key_env")
    @classmethod
    def _check_api_key_env(cls, variable: str, info: ValidationInfo) -> str:
        # The value is never echoed: a key pasted here by mistake must not reach a log.
        if variable and not _ENV_VAR.fullmatch(variable):
            raise _invalid(
                "must be the name of an environment variable (letters, digits and '_'), or "
                '"" for a server that needs no key. If that was the key itself, '
                + _put_key_in_env(_default_key_variable(info.data.get("name", "provider")))
            )
        return variable

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, headers: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        for header in headers:
            if header.lower() in _SECRET_HEADERS:
                variable = _default_key_variable(info.data.get("name", "provider"))
                raise _invalid(_put_key_in_env(variable), header)
        return headers

    def api_key(self, env: Mapping[str, str] = os.environ) -> str:
        """The API key, read from the environment now (so a rotated key is picked up by the
        next client); :data:`NO_API_KEY` when ``api_key_env`` is ``""``.

        Raises ``ConfigError`` naming the provider and the variable when it is unset or empty.
        """
        if not self.api_key_env:
            return NO_API_KEY
        key = env.get(self.api_key_env, "")
        if key:
            return key
        state = "is empty" if self.api_key_env in env else "is not set"
        raise ConfigError(
            f"provider {self.name!r} needs an API key in the environment variable "
            f"{self.api_key_env}, which {state} (export {self.api_key_env}=...; or set "
            f"api_key_env in [providers.{self.name}] of kernos.toml to the variable that holds "
            f'the key, or to "" for a local server that needs none)'
        )


def _split_endpoint(text: str) -> tuple[str, str]:
    """``provider:model`` split at the first colon (``ollama:llama3.1:8b`` is the model
    ``llama3.1:8b`` at ``ollama``); ``ValueError`` saying what is missing."""
    provider, colon, model = text.partition(":")
    if not colon:
        raise ValueError(f"{text!r} is not provider:model (e.g. openai:gpt-4.1-mini)")
    if not provider or not model:
        missing = "provider" if not provider else "model"
        raise ValueError(f"{text!r} is not provider:model: the {missing} is empty")
    return provider, model


class Endpoint(_Model):
    """One model at one provider: a step of a route, and what the breaker and limits key on."""

    provider: str = Field(min_length=1)
    model: str = Field(min_length=1)

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """The endpoint written ``provider:model``; ``ConfigError`` when it is not."""
        try:
            provider, model = _split_endpoint(text)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return cls(provider=provider, model=model)

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data: object) -> object:
        if not isinstance(data, str):
            return data
        try:
            provider, model = _split_endpoint(data)
        except ValueError as exc:
            raise _invalid(str(exc)) from None
        return {"provider": provider, "model": model}

    def __str__(self) -> str:
        return f"{self.provider}:{self.model}"


class GatewaySettings(_Model):
    """How hard the gateway tries: the ``[gateway]`` table. Times are seconds."""

    #: one attempt may take this long before it counts as a timeout
    timeout: float = Field(default=60.0, gt=0)
    #: attempts at one endpoint before the route falls back to the next
    max_attempts: int = Field(default=3, ge=1)
    #: the first retry waits up to this long (full jitter), doubling per attempt...
    backoff_base: float = Field(default=0.5, ge=0)
    #: ...up to this
    backoff_cap: float = Field(default=30.0, ge=0)
    #: a retry-after longer than this falls back to the next endpoint instead of waiting
    max_retry_wait: float = Field(default=60.0, ge=0)
    #: consecutive failures that open an endpoint's circuit breaker
    breaker_threshold: int = Field(default=5, ge=1)
    #: how long an open breaker waits before letting one trial call through...
    breaker_cooldown: float = Field(default=5.0, gt=0)
    #: ...doubling after each failed trial, up to this
    breaker_max_cooldown: float = Field(default=60.0, gt=0)
    #: the most one call may take across all its attempts and fallbacks (None: no deadline)
    deadline: float | None = Field(default=None, gt=0)
    #: times the model is asked to fix tool-call arguments that are not valid JSON
    tool_argument_repairs: int = Field(default=2, ge=0)
    #: a worker reads the fleet's shares, pauses and open breakers this often (and publishes
    #: its own at once); 0 keeps each worker's limits and breakers to itself
    fleet_sync: float = Field(default=1.0, ge=0)


def default_providers() -> dict[str, ProviderConfig]:
    """The providers that exist without a config file: the official OpenAI and Anthropic APIs."""
    return {name: ProviderConfig(name=name) for name in _DEFAULT_PROVIDERS}


class GatewayConfig(_Model):
    """Everything the gateway is configured with; what :func:`load_config` returns."""

    # not strict: a route is a TOML list that becomes a tuple
    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)

    providers: dict[str, ProviderConfig] = Field(default_factory=default_providers)
    #: route name → the endpoints to try, in order
    routes: dict[str, tuple[Endpoint, ...]] = Field(default_factory=dict)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    #: "model" or "provider:model" → price, over the built-in table
    prices: dict[str, Price] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _name_providers(cls, data: object) -> object:
        """A provider's name is its table's key; the table need not repeat it."""
        if not isinstance(data, Mapping) or not isinstance(data.get("providers"), Mapping):
            return data
        providers = {
            name: {"name": name, **table} if isinstance(table, Mapping) else table
            for name, table in data["providers"].items()
        }
        return {**data, "providers": providers}

    @model_validator(mode="after")
    def _check_references(self) -> GatewayConfig:
        for name, provider in self.providers.items():
            if provider.name != name:
                raise _invalid(
                    f"must be {name!r}, the table's own name, or left out",
                    "providers",
                    name,
                    "name",
                )
        for route, endpoints in self.routes.items():
            if not endpoints:
                raise _invalid(
                    'a route needs at least one provider:model (e.g. ["openai:gpt-4.1-mini"])',
                    "routes",
                    route,
                )
            for index, endpoint in enumerate(endpoints):
                if endpoint.provider not in self.providers:
                    raise _invalid(
                        f"unknown provider {endpoint.provider!r} ({self._known_providers()}); "
                        f"add a [providers.{endpoint.provider}] table or fix the name",
                        "routes",
                        route,
                        index,
                    )
        return self

    def _known_providers(self) -> str:
        return "configured providers: " + (", ".join(sorted(self.providers)) or "none")

    def resolve(self, route: str) -> tuple[Endpoint, ...]:
        """The endpoints to try for ``route``: a configured route's, or one endpoint when
        ``route`` is written ``provider:model``. ``ConfigError`` listing what is known when it
        names neither."""
        if route in self.routes:
            return self.routes[route]
        if ":" not in route:
            known = ", ".join(sorted(self.routes)) or "none configured"
            raise ConfigError(
                f"unknown route {route!r} (routes: {known}); add it under [routes] in "
                f"kernos.toml, or name a model directly as provider:model, e.g. "
                f"openai:gpt-4.1-mini"
            )
        endpoint = Endpoint.parse(route)
        if endpoint.provider not in self.providers:
            raise ConfigError(
                f"unknown provider {endpoint.provider!r} in {route!r} "
                f"({self._known_providers()}); add a [providers.{endpoint.provider}] table to "
                f"kernos.toml or fix the name"
            )
        return (endpoint,)

    def provider(self, name: str) -> ProviderConfig:
        """The provider called ``name``; ``ConfigError`` listing the configured ones."""
        provider = self.providers.get(name)
        if provider is None:
            raise ConfigError(
                f"unknown provider {name!r} ({self._known_providers()}); add a "
                f"[providers.{name}] table to kernos.toml or fix the name"
            )
        return provider

    def price_table(self) -> PriceTable:
        """The built-in prices under this file's ``[prices]`` overrides."""
        return PriceTable(self.prices)


def load_config(
    path: str | Path | None = None, *, env: Mapping[str, str] = os.environ
) -> GatewayConfig:
    """The gateway's configuration from ``path``, else the file ``KERNOS_CONFIG`` names, else
    ``./kernos.toml``, else the defaults.

    A file that was asked for (``path`` or ``KERNOS_CONFIG``) must exist; ``./kernos.toml`` may
    not. ``[providers]`` in a file adds to the default ``openai`` and ``anthropic`` providers,
    redefining them only by name. Every problem raises ``ConfigError`` naming the file and key.
    """
    file = find_config_file(path, env)
    if file is None:
        return GatewayConfig()
    data = read_config_file(file)
    for section in ("mcp", "policy", "budgets", "notifications", "redaction", "tenants", "api"):
        data.pop(section, None)  # other layers' sections of the same file
    providers = data.get("providers", {})
    if isinstance(providers, Mapping):
        data["providers"] = {**{name: {} for name in _DEFAULT_PROVIDERS}, **providers}
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        # one line per problem, each complete, as a compiler reports them
        problems = "\n".join(f"{file}: {_describe(error)}" for error in exc.errors())
        raise ConfigError(problems) from None


def find_config_file(path: str | Path | None, env: Mapping[str, str]) -> Path | None:
    """The config file: ``path``, else what ``KERNOS_CONFIG`` names (both must exist), else
    ``./kernos.toml`` if there is one. Every section of the file is read from the same one."""
    if path is not None:
        file = Path(path)
        if not file.exists():
            raise ConfigError(f"{file}: no such config file (check the path passed to kernos)")
        return file
    named = env.get(CONFIG_ENV, "")
    if named:
        file = Path(named)
        if not file.exists():
            raise ConfigError(
                f"{file}: no such config file ({CONFIG_ENV} names it; fix the path, or unset "
                f"{CONFIG_ENV} to read ./{DEFAULT_CONFIG_FILE})"
            )
        return file
    file = Path(DEFAULT_CONFIG_FILE)
    return file if file.exists() else None


def read_config_file(file: Path) -> dict[str, object]:
    """The file's TOML, or ``ConfigError`` naming the file and what is wrong."""
    try:
        with file.open("rb") as stream:
            return tomllib.load(stream)
    except tomllib.TOMLDecodeError as exc:
        # the message ends "(at line L, column C)"
        raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: not valid TOML: the file is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot be read: {exc.strerror or exc}") from None


# The wording of pydantic's error types, as a person editing the file needs it.
_MUST: Final[Mapping[str, str]] = {
    "int_type": "must be a whole number",
    "float_type": "must be a number",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "dict_type": "must be a table",
    "model_type": "must be a table",
    "model_attributes_type": "must be a table",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
}


def _describe(error: ErrorDetails) -> str:
    """``key.path: what is wrong, got VALUE`` for one of pydantic's errors."""
    ctx = error.get("ctx", {})
    loc = (*error["loc"], *ctx.get("path", ()))
    reason = problem_reason(error, loc)
    return f"{_dotted(loc)}: {reason}" if loc else reason


def problem_reason(error: ErrorDetails, loc: tuple[str | int, ...] = ()) -> str:
    """What is wrong with a value of the config file, in words for the person editing it
    (``must be a positive number, got -5``): shared by every section of kernos.toml."""
    kind, ctx, got = error["type"], error.get("ctx", {}), _show(error["input"])
    if kind == "kernos":
        return str(ctx["message"])
    if kind == "extra_forbidden":
        return _unknown_key(loc)
    if kind == "missing":
        return "is required"
    if kind == "greater_than":
        bound = ctx["gt"]
        return f"must be {'a positive number' if bound == 0 else f'more than {bound}'}, got {got}"
    if kind == "greater_than_equal":
        bound = ctx["ge"]
        return f"must be {'zero or more' if bound == 0 else f'at least {bound}'}, got {got}"
    if kind == "literal_error":
        return f"must be {ctx['expected']}, got {got}"
    if kind in _MUST:
        return f"{_MUST[kind]}, got {got}"
    return f"{error['msg']}, got {got}"


def _unknown_key(loc: tuple[str | int, ...]) -> str:
    key, allowed = str(loc[-1]), _keys_at(loc[:-1])
    close = difflib.get_close_matches(key, allowed, n=1)
    if close:
        return f"unknown key (did you mean {close[0]!r}?)"
    return f"unknown key (the keys here are: {', '.join(allowed)})"


def _keys_at(table: tuple[str | int, ...]) -> list[str]:
    """The keys the table at ``table`` may hold, for suggesting one in place of a typo."""
    model: type[BaseModel] | None = None
    if table == ():
        model = GatewayConfig
    elif table == ("gateway",):
        model = GatewaySettings
    elif len(table) == 2 and table[0] == "providers":
        model = ProviderConfig
    elif len(table) == 2 and table[0] == "prices":
        model = Price
    if model is None:
        return []
    return sorted(name for name in model.model_fields if name != "name")


def _dotted(loc: tuple[str | int, ...]) -> str:
    """A location as TOML writes it: ``providers.openai.rpm``, ``prices."gpt-4.1".input``,
    ``routes.support[1]``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
            continue
        key = part if _BARE_KEY.fullmatch(part) else f'"{part}"'
        text += f".{key}" if text else key
    return text


def _show(value: object) -> str:
    """A value as the user wrote it in TOML, short: tables and lists are not spelled out."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "a list"
    return repr(value)
