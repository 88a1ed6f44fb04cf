"""The architecture, tested: layers depend downward only, packages keep their internals private,
agent code takes time and randomness from the context, and the public API is what we document."""

from __future__ import annotations

import ast
from pathlib import Path

import kernos

SRC = Path(__file__).resolve().parents[1] / "src" / "kernos"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# Lower index = lower layer (DESIGN.md, "Layers"). errors is shared by all.
LAYERS = [
    "store",
    "kernel",
    "gateway",
    "agents",
    "governance",
    "telemetry",
    "api",
    "chaos",
    "cli",
]


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
    return names


def _package_of(path: Path) -> str | None:
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else None


def test_layers_depend_downward_only() -> None:
    violations = []
    for path in SRC.rglob("*.py"):
        package = _package_of(path)
        if package not in LAYERS:
            continue
        level = LAYERS.index(package)
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] != "kernos" or len(parts) < 2 or parts[1] not in LAYERS:
                continue
            if LAYERS.index(parts[1]) > level:
                violations.append(f"{path.relative_to(SRC)} imports {name}")
    assert violations == []


def test_packages_do_not_import_each_others_internals() -> None:
    violations = []
    for path in SRC.rglob("*.py"):
        package = _package_of(path)
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "kernos" and len(parts) > 2 and parts[2].startswith("_"):
                if parts[1] != package:
                    violations.append(f"{path.relative_to(SRC)} imports {name}")
    assert violations == []


def test_lower_layers_import_no_cli_libraries() -> None:
    lower = ("store", "kernel", "gateway")
    for path in [p for layer in lower for p in (SRC / layer).rglob("*.py")]:
        for name in _imports(path):
            assert name.split(".")[0] not in {"typer", "rich"}, f"{path} imports {name}"


def test_the_simulator_shares_no_code_with_what_it_tests() -> None:
    """kernos.sim stands in for real providers: were it to share code with the gateway, a bug
    could sit on both sides of the wire and pass every test. It uses only kernos.errors, and
    only the interfaces (cli, chaos, kernos.testing) use it."""
    for path in (SRC / "sim").rglob("*.py"):
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "kernos":
                assert parts[1:2] in (["errors"], ["sim"]), (
                    f"{path.relative_to(SRC)} imports {name}"
                )
    for path in SRC.rglob("*.py"):
        if _package_of(path) in {"sim", "cli", "chaos"} or path.relative_to(SRC) in {
            Path("testing.py"),
            Path("pytest_plugin.py"),
        }:
            continue
        for name in _imports(path):
            assert not name.startswith("kernos.sim"), f"{path.relative_to(SRC)} imports {name}"


_NONDETERMINISTIC = {
    ("datetime", "now"),
    ("datetime", "utcnow"),
    ("time", "time"),
    ("uuid", "uuid4"),
    ("random", "random"),
    ("random", "randint"),
    ("random", "choice"),
}


def _agent_functions(tree: ast.Module) -> list[ast.AsyncFunctionDef]:
    found = []
    for node in tree.body:
        if isinstance(node, ast.AsyncFunctionDef):
            for dec in node.decorator_list:
                target = dec.func if isinstance(dec, ast.Call) else dec
                if isinstance(target, ast.Attribute) and target.attr == "agent":
                    found.append(node)
    return found


def test_agent_code_takes_time_and_randomness_from_the_context() -> None:
    """Guarantee 8: replayed code must not read the clock or draw random numbers itself."""
    violations = []
    for path in EXAMPLES.rglob("*.py"):
        for fn in _agent_functions(ast.parse(path.read_text())):
            for node in ast.walk(fn):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name)
                    and (node.func.value.id, node.func.attr) in _NONDETERMINISTIC
                ):
                    violations.append(
                        f"{path.name}:{node.lineno} {fn.name} calls "
                        f"{node.func.value.id}.{node.func.attr}()"
                    )
    assert violations == []


def test_agent_lint_catches_a_clock_read(tmp_path: Path) -> None:
    bad = ast.parse(
        "import time\nimport kernos\n@kernos.agent('x')\nasync def x(ctx, i):\n"
        "    return time.time()\n"
    )
    fns = _agent_functions(bad)
    assert len(fns) == 1
    calls = [n for n in ast.walk(fns[0]) if isinstance(n, ast.Call)]
    assert any(
        isinstance(c.func, ast.Attribute)
        and isinstance(c.func.value, ast.Name)
        and (c.func.value.id, c.func.attr) in _NONDETERMINISTIC
        for c in calls
    )


PUBLIC_API = {
    "AgentNotFound",
    "Cancelled",
    "ChildHandle",
    "ChildRunFailed",
    "Client",
    "ConfigError",
    "DeterminismError",
    "Event",
    "InfrastructureError",
    "InvalidInput",
    "InvalidState",
    "KernosError",
    "LeaseLost",
    "NotSerializable",
    "RetryPolicy",
    "Run",
    "RunContext",
    "RunError",
    "RunNotFound",
    "RunState",
    "ScheduleNotFound",
    "SchemaMismatch",
    "Settings",
    "StepFailed",
    "StoreFull",
    "StoreUnavailable",
    "UsageError",
    "Worker",
    "WorkerConfig",
    "__version__",
    "agent",
    "connect",
    "default_services",
    "idempotency_key",
    "retry",
    "Gateway",
    "LLMCallFailed",
    "LLMResponse",
    "Message",
    "ProviderUnavailable",
    "ToolCall",
    "ToolSpec",
    "Usage",
    "Agent",
    "AgentFailed",
    "Tool",
    "ToolCallFailed",
    "ToolRefused",
    "as_tool",
    "tool",
    "ContextOverflow",
    "ToolUnavailable",
    "McpServer",
    "mcp_server",
}


def test_public_api_is_exactly_the_documented_one() -> None:
    assert set(kernos.__all__) == PUBLIC_API
    for name in kernos.__all__:
        assert hasattr(kernos, name), name


def test_every_error_is_a_kernos_error_or_control_flow() -> None:
    import kernos.errors as errors

    for name in errors.__all__:
        cls = getattr(errors, name)
        if name in {"Cancelled", "LeaseLost"}:
            assert issubclass(cls, BaseException) and not issubclass(cls, Exception)
        else:
            assert issubclass(cls, kernos.KernosError), name
