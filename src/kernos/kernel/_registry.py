"""Agents by name and version, and loading the module that defines them.

The registry is the one piece of process-wide state kernos keeps (STYLE.md): ``@kernos.agent``
adds to it at import time, as a route decorator does in a web framework.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast, get_type_hints

from pydantic import BaseModel

from kernos.errors import AgentNotFound, ConfigError, UsageError
from kernos.kernel._retry import DEFAULT_RETRY, RetryPolicy

AgentFn = Callable[..., Awaitable[Any]]
F = TypeVar("F", bound=AgentFn)


@dataclass(frozen=True, slots=True)
class AgentSpec:
    """A registered agent: its code at one version, and how it may be run."""

    name: str
    version: str
    fn: AgentFn
    input_model: type[BaseModel] | None
    max_concurrency: int | None
    retry: RetryPolicy

    @property
    def key(self) -> tuple[str, str]:
        return (self.name, self.version)


class Registry:
    """Agents known to this process, by name; several versions of one name may coexist."""

    def __init__(self) -> None:
        self._agents: dict[str, dict[str, AgentSpec]] = {}

    def add(self, spec: AgentSpec) -> None:
        versions = self._agents.setdefault(spec.name, {})
        if spec.version in versions and versions[spec.version].fn is not spec.fn:
            existing = versions[spec.version].fn
            if getattr(existing, "__qualname__", None) != getattr(spec.fn, "__qualname__", None):
                raise UsageError(
                    f"agent {spec.name!r} version {spec.version!r} is registered twice with "
                    f"different functions; give the new code a new version"
                )
        versions[spec.version] = spec

    def get(self, name: str, version: str | None = None) -> AgentSpec:
        versions = self._agents.get(name)
        if not versions:
            known = ", ".join(sorted(self._agents)) or "none"
            raise AgentNotFound(
                f"no agent named {name!r} is registered (known: {known}); is --app / KERNOS_APP "
                f"pointing at the module that defines it?"
            )
        if version is None:
            return versions[self.latest(name)]
        if version not in versions:
            raise AgentNotFound(
                f"agent {name!r} has no version {version!r} here (this process has "
                f"{', '.join(sorted(versions))}); run a worker that has that version's code"
            )
        return versions[version]

    def latest(self, name: str) -> str:
        """The version registered last: the one new runs start on."""
        return list(self._agents[name])[-1]

    def __contains__(self, name: object) -> bool:
        return name in self._agents

    def __iter__(self) -> Iterator[AgentSpec]:
        for versions in self._agents.values():
            yield from versions.values()

    def keys(self) -> list[tuple[str, str]]:
        return [spec.key for spec in self]

    def limits(self) -> dict[str, int]:
        """Per-agent concurrency limits (the smallest over an agent's versions)."""
        limits: dict[str, int] = {}
        for spec in self:
            if spec.max_concurrency is not None:
                limits[spec.name] = min(
                    limits.get(spec.name, spec.max_concurrency), spec.max_concurrency
                )
        return limits

    def latest_versions(self) -> dict[str, str]:
        return {name: self.latest(name) for name in self._agents}


REGISTRY = Registry()


def _input_model(fn: AgentFn) -> type[BaseModel] | None:
    params = list(inspect.signature(fn).parameters.values())
    if len(params) < 2:
        raise UsageError(
            f"agent function {fn.__qualname__} must take (ctx, input); it takes "
            f"{len(params)} parameter(s)"
        )
    try:
        hints = get_type_hints(fn)
    except Exception:
        return None
    hint = hints.get(params[1].name)
    if inspect.isclass(hint) and issubclass(hint, BaseModel):
        return hint
    return None


def agent(
    name: str,
    *,
    version: str = "1",
    max_concurrency: int | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
    registry: Registry | None = None,
) -> Callable[[F], F]:
    """Register an async function ``(ctx, input) -> output`` as a durable agent.

    Runs are pinned to the version they started on; deploy changed code under a new version so
    that runs in flight replay the code they started with (guarantee 8). ``max_concurrency``
    bounds how many runs of this agent execute at once across the whole fleet.
    """

    def register(fn: F) -> F:
        if not inspect.iscoroutinefunction(cast(Any, fn)):
            raise UsageError(f"agent {name!r}: {fn.__qualname__} must be an `async def` function")
        if max_concurrency is not None and max_concurrency < 1:
            raise UsageError(f"agent {name!r}: max_concurrency must be >= 1")
        spec = AgentSpec(name, version, fn, _input_model(fn), max_concurrency, retry)
        (registry or REGISTRY).add(spec)
        return fn

    return register


def load_app(module: str) -> Registry:
    """Import the module that defines the agents (``pkg.module`` or ``path/to/file.py``)."""
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    name = module
    if module.endswith(".py"):
        path = Path(module)
        parent = str(path.parent.resolve())
        if parent not in sys.path:
            sys.path.insert(0, parent)
        name = path.stem
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"cannot import the app module {module!r} ({exc}); pass an importable module such as "
            f"examples.refund (run from the directory that contains it) or a path to a .py file"
        ) from exc
    return REGISTRY
