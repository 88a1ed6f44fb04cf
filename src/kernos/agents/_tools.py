"""Tools: Python functions a model may call, described to it from their type hints.

A tool's JSON schema comes from its signature (pydantic builds it, so a parameter can be any
type pydantic knows: a model, a literal, a list of dates) and its description and parameter
notes from its docstring (Google style, ``Args:``). The model's arguments are validated against
the same schema before the function runs; what fails validation goes back to the model as an
error it can fix, worded for it, never as a traceback.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_type_hints, overload

from pydantic import BaseModel, ConfigDict, ValidationError, create_model
from pydantic.fields import FieldInfo

from kernos.agents._toolcall import serve_tool
from kernos.errors import UsageError
from kernos.gateway import ToolSpec
from kernos.kernel import DurableCall

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # what both provider families accept


class ToolArgumentsInvalid(Exception):
    """The model's arguments do not fit the tool's schema; ``str()`` is worded for the model."""


@dataclass(frozen=True)
class Tool:
    """A function the model may call, with what the model is told about it."""

    name: str
    description: str
    fn: Callable[..., Any]
    parameters: dict[str, Any]
    #: safe to call again with the same arguments (only then is a failed call retried)
    idempotent: bool = False
    #: seconds one call may take (None: no limit of its own)
    timeout: float | None = None
    #: a person must approve each call (``True``), or the calls whose arguments this
    #: predicate accepts (e.g. ``lambda a: a["amount"] > 100``)
    requires_approval: bool | Callable[[Mapping[str, Any]], bool] = False
    #: seconds a call waits for its approval before it is rejected (None: no limit)
    approval_timeout: float | None = None
    #: what that deadline does: reject the call, or escalate (people are told again) and
    #: reject only ``escalation_timeout`` seconds later (None: wait for a person)
    on_approval_timeout: Literal["reject", "escalate"] = "reject"
    escalation_timeout: float | None = None
    #: validates the model's arguments; built from the signature for a Python function,
    #: from the server's JSON schema for an MCP tool. None: passed on as they are.
    check: Callable[[Mapping[str, Any]], dict[str, Any]] | None = field(repr=False, default=None)

    @property
    def spec(self) -> ToolSpec:
        """What the gateway sends the model."""
        return ToolSpec(name=self.name, description=self.description, parameters=self.parameters)

    def validate(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """The arguments as the function's parameters, or ``ToolArgumentsInvalid``."""
        if self.check is None:
            return dict(arguments)
        return self.check(arguments)

    def approval_question(self, arguments: Mapping[str, Any]) -> str | None:
        """What a person is asked before this call, or None when it needs no approval."""
        needed = self.requires_approval
        if callable(needed):
            try:
                needed = bool(needed(arguments))
            except Exception:  # a predicate that cannot judge these arguments: ask
                needed = True
        if not needed:
            return None
        shown = ", ".join(f"{k}={v!r}" for k, v in arguments.items())
        return f"Allow {self.name}({shown})?"

    def serve(
        self, call: DurableCall, arguments: dict[str, Any], /, **options: Any
    ) -> Awaitable[Any]:
        """Serve ``ctx.tool(self, arguments)`` (see ``kernos.agents._toolcall``)."""
        return serve_tool(self, call, arguments, **options)

    async def invoke(self, arguments: Mapping[str, Any]) -> Any:
        """Validate and call: an async function is awaited, a sync one runs on a thread (it
        must not block the worker's loop), each within the tool's timeout."""
        kwargs = self.validate(arguments)
        if inspect.iscoroutinefunction(self.fn):
            call: Any = self.fn(**kwargs)
        else:
            call = asyncio.to_thread(self.fn, **kwargs)
        if self.timeout is None:
            return await call
        async with asyncio.timeout(self.timeout):
            return await call


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    idempotent: bool = False,
    timeout: float | None = None,
    requires_approval: bool | Callable[[Mapping[str, Any]], bool] = False,
    approval_timeout: float | None = None,
    on_approval_timeout: Literal["reject", "escalate"] = "reject",
    escalation_timeout: float | None = None,
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    idempotent: bool = False,
    timeout: float | None = None,
    requires_approval: bool | Callable[[Mapping[str, Any]], bool] = False,
    approval_timeout: float | None = None,
    on_approval_timeout: Literal["reject", "escalate"] = "reject",
    escalation_timeout: float | None = None,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make a function a tool: ``@tool`` or ``@tool(idempotent=True, timeout=10)``;
    ``requires_approval=True`` (or a predicate over the arguments) has a person approve each
    call first (they may edit its arguments)."""

    def make(f: Callable[..., Any]) -> Tool:
        return as_tool(
            f,
            name=name,
            description=description,
            idempotent=idempotent,
            timeout=timeout,
            requires_approval=requires_approval,
            approval_timeout=approval_timeout,
            on_approval_timeout=on_approval_timeout,
            escalation_timeout=escalation_timeout,
        )

    return make(fn) if fn is not None else make


def as_tool(
    fn: Callable[..., Any] | Tool,
    *,
    name: str | None = None,
    description: str | None = None,
    idempotent: bool = False,
    timeout: float | None = None,
    requires_approval: bool | Callable[[Mapping[str, Any]], bool] = False,
    approval_timeout: float | None = None,
    on_approval_timeout: Literal["reject", "escalate"] = "reject",
    escalation_timeout: float | None = None,
) -> Tool:
    """A ``Tool`` for ``fn`` (a ``Tool`` is returned as it is)."""
    if isinstance(fn, Tool):
        return fn
    if not callable(fn):
        raise UsageError(f"{fn!r} is not a function and cannot be a tool")
    tool_name: str = name or str(getattr(fn, "__name__", ""))
    if not _NAME.match(tool_name):
        raise UsageError(
            f"tool name {tool_name!r} is not allowed: use 1-64 letters, digits, _ or - "
            f"(pass name=... to kernos tool())"
        )
    if timeout is not None and timeout <= 0:
        raise UsageError(f"the timeout of tool {tool_name!r} must be positive, not {timeout}")
    if on_approval_timeout not in ("reject", "escalate"):
        raise UsageError(
            f"tool {tool_name!r}: on_approval_timeout must be 'reject' or 'escalate', not "
            f"{on_approval_timeout!r}"
        )
    summary, notes = _docstring(inspect.getdoc(fn) or "")
    arguments = _arguments_model(fn, tool_name, notes)
    return Tool(
        name=tool_name,
        description=description if description is not None else summary,
        fn=fn,
        parameters=_schema(arguments),
        idempotent=idempotent,
        timeout=timeout,
        requires_approval=requires_approval,
        approval_timeout=approval_timeout,
        on_approval_timeout=on_approval_timeout,
        escalation_timeout=escalation_timeout,
        check=_checker(tool_name, arguments),
    )


def _checker(name: str, model: type[BaseModel]) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    def check(arguments: Mapping[str, Any]) -> dict[str, Any]:
        try:
            parsed = model.model_validate(dict(arguments))
        except ValidationError as exc:
            raise ToolArgumentsInvalid(_for_the_model(name, exc)) from None
        return {field: getattr(parsed, field) for field in type(parsed).model_fields}

    return check


def _arguments_model(
    fn: Callable[..., Any], name: str, notes: Mapping[str, str]
) -> type[BaseModel]:
    try:
        hints = get_type_hints(fn)
    except (NameError, TypeError) as exc:
        raise UsageError(f"the type hints of tool {name!r} cannot be resolved: {exc}") from exc
    fields: dict[str, Any] = {}
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise UsageError(
                f"tool {name!r} takes *{param.name}: a model needs named parameters to call it"
            )
        if param.kind is param.POSITIONAL_ONLY:
            raise UsageError(f"tool {name!r}: parameter {param.name!r} must not be positional-only")
        annotation = hints.get(param.name, Any)
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (
            annotation,
            FieldInfo(default=default, description=notes.get(param.name)),
        )
    return create_model(f"{name}_arguments", __config__=ConfigDict(extra="forbid"), **fields)


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema a model reads: without pydantic's generated titles."""
    schema = model.model_json_schema()
    return _drop_titles(schema)  # type: ignore[no-any-return]


def _drop_titles(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: _drop_titles(v) for k, v in node.items() if not (k == "title" and isinstance(v, str))
        }
    if isinstance(node, list):
        return [_drop_titles(v) for v in node]
    return node


_SECTION = re.compile(r"^(Args|Arguments|Parameters|Returns|Raises|Yields|Examples?|Notes?):\s*$")
_PARAM = re.compile(r"^\s+(\*{0,2}\w+)(?:\s*\([^)]*\))?\s*:\s*(.*)$")


def _docstring(doc: str) -> tuple[str, dict[str, str]]:
    """The description (everything before the first section) and the ``Args:`` notes."""
    lines = doc.splitlines()
    summary: list[str] = []
    notes: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    for line in lines:
        heading = _SECTION.match(line.strip())
        if heading:
            section = heading.group(1)
            current = None
            continue
        if section is None:
            summary.append(line)
        elif section in ("Args", "Arguments", "Parameters"):
            match = _PARAM.match(line)
            if match:
                current = match.group(1).lstrip("*")
                notes[current] = match.group(2).strip()
            elif current and line.strip():
                notes[current] = f"{notes[current]} {line.strip()}".strip()
    return "\n".join(summary).strip(), notes


def _for_the_model(name: str, exc: ValidationError) -> str:
    """Validation errors as short lines the model can act on."""
    problems = []
    for error in exc.errors()[:10]:
        where = ".".join(str(part) for part in error["loc"]) or "arguments"
        if error["type"] == "missing":
            problems.append(f"'{where}' is required")
        elif error["type"] == "extra_forbidden":
            problems.append(f"'{where}' is not a parameter of {name}")
        else:
            problems.append(f"'{where}': {error['msg']} (got {error.get('input')!r})")
    more = f" (and {exc.error_count() - 10} more)" if exc.error_count() > 10 else ""
    return f"invalid arguments for {name}: " + "; ".join(problems) + more
