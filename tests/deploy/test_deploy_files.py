"""The Docker deployment files (Dockerfile, compose.yaml, deploy/), checked without Docker.

Docker does not run here, so this checks what can be checked outside a container: compose.yaml
and the collector's config parse; every service is wired (images pinned, healthchecks,
depends_on); every ``kernos ...`` command line of compose.yaml and the Dockerfile names a real
subcommand whose ``--help`` lists each option used; deploy/kernos.toml loads with kernos's
own config loader.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from kernos.gateway import load_config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DEPLOY = ROOT / "deploy"
KERNOS_SERVICES = {"migrate", "serve", "worker", "sim"}
SERVICES = KERNOS_SERVICES | {"postgres", "otel-collector"}


def yaml_module() -> Any:
    return pytest.importorskip("yaml", reason="PyYAML is not installed; cannot parse YAML")


@cache
def compose() -> dict[str, Any]:
    data = yaml_module().safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    found = compose()["services"]
    assert isinstance(found, dict)
    return found


def dockerfile_instruction(name: str) -> list[str]:
    """The exec-form (JSON array) argument of the Dockerfile's last ``name`` instruction."""
    lines = [line for line in DOCKERFILE.read_text().splitlines() if line.startswith(f"{name} ")]
    assert lines, f"the Dockerfile has no {name}"
    value = json.loads(lines[-1].removeprefix(f"{name} "))
    assert isinstance(value, list)
    return [str(part) for part in value]


def kernos_command_lines() -> dict[str, list[str]]:
    """Every kernos argv (after the entrypoint) used: the Dockerfile's CMD and each service's."""
    lines = {"Dockerfile CMD": dockerfile_instruction("CMD")}
    for name in sorted(KERNOS_SERVICES):
        command = services()[name]["command"]
        assert isinstance(command, list), f"{name}: command must be a list (exec form)"
        lines[f"service {name}"] = [str(part) for part in command]
    return lines


def help_text(subcommand: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kernos", *subcommand, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
    )


def split(argv: list[str]) -> tuple[tuple[str, ...], list[str]]:
    """(the subcommand path, the options used): leading words, then ``--name`` tokens."""
    words: list[str] = []
    for token in argv:
        if token.startswith("-"):
            break
        words.append(token)
    options = [token.split("=", 1)[0] for token in argv if token.startswith("--")]
    return tuple(words), options


def test_dockerfile_runs_kernos_as_a_non_root_user() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.MULTILINE)
    assert dockerfile_instruction("ENTRYPOINT") == ["kernos"]
    assert dockerfile_instruction("CMD")[0] == "serve"
    user = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert user and user[-1] not in ("root", "0"), "the image must not run as root"
    assert "pip install ." in text and "[dev]" not in text
    assert "/healthz" in text.split("HEALTHCHECK", 1)[1]
    for source in ("pyproject.toml", "README.md", "src/", "examples/"):
        assert re.search(rf"^COPY .*{re.escape(source)}", text, re.MULTILINE), source


def test_compose_wires_every_service() -> None:
    found = services()
    assert set(found) == SERVICES
    for name, service in found.items():
        image = service.get("image")
        assert isinstance(image, str) and ":" in image, f"{name}: image without a tag"
        if "build" not in service:  # third-party images: pinned to a major version at least
            tag = image.rsplit(":", 1)[1]
            assert re.fullmatch(r"\d+(\.\d+)*", tag), f"{name}: image {image} is not pinned"
        health = service.get("healthcheck", {})
        if name not in ("migrate", "otel-collector"):  # a one-shot job; a distroless image
            assert health.get("test"), f"{name}: no healthcheck"
    assert found["postgres"]["image"].startswith("postgres:16")
    assert found["otel-collector"]["image"].startswith("otel/opentelemetry-collector:")
    depends = {name: service.get("depends_on", {}) for name, service in found.items()}
    assert depends["migrate"]["postgres"]["condition"] == "service_healthy"
    for name in ("serve", "worker"):
        assert depends[name]["migrate"]["condition"] == "service_completed_successfully"
    assert depends["worker"]["sim"]["condition"] == "service_healthy"
    assert "otel-collector" in depends["worker"]


def test_kernos_services_share_the_database_and_config() -> None:
    config = DEPLOY / "kernos.toml"
    for name in KERNOS_SERVICES:
        service = services()[name]
        env = service["environment"]
        assert env["KERNOS_DATABASE_URL"].startswith("postgresql://")
        assert "@postgres:5432/" in env["KERNOS_DATABASE_URL"]
        mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in service["volumes"]}
        assert (ROOT / mounts[env["KERNOS_CONFIG"]]).resolve() == config.resolve()
    worker = services()["worker"]
    assert worker["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"
    assert worker["command"][worker["command"].index("--metrics-port") + 1] == "9464"
    assert "9464:9464" in worker["ports"]


def test_every_kernos_command_line_is_a_real_command() -> None:
    lines = kernos_command_lines()
    subcommands = sorted({split(argv)[0] for argv in lines.values()})
    with ThreadPoolExecutor(max_workers=len(subcommands)) as pool:
        helps = dict(zip(subcommands, pool.map(help_text, subcommands), strict=True))
    for where, argv in lines.items():
        subcommand, options = split(argv)
        result = helps[subcommand]
        assert result.returncode == 0, f"{where}: kernos {' '.join(subcommand)}: {result.stderr}"
        for option in options:
            assert re.search(rf"{re.escape(option)}\b", result.stdout), (
                f"{where}: kernos {' '.join(subcommand)} has no option {option}"
            )


def test_the_worker_app_is_an_example() -> None:
    command = services()["worker"]["command"]
    module = command[command.index("--app") + 1]
    assert (ROOT / (module.replace(".", "/") + ".py")).is_file()


def test_deploy_kernos_toml_routes_to_the_simulator() -> None:
    config = load_config(DEPLOY / "kernos.toml", env={})
    assert "support" in config.routes  # the route examples/support.py asks
    sim_port = services()["sim"]["command"][services()["sim"]["command"].index("--port") + 1]
    for name in ("openai", "anthropic"):
        base_url = config.providers[name].base_url
        assert base_url and base_url.startswith(f"http://sim:{sim_port}/"), base_url


def test_otel_collector_config_receives_otlp_and_exports_to_debug() -> None:
    config = yaml_module().safe_load((DEPLOY / "otel-collector.yaml").read_text())
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"].endswith(":4317")
    assert protocols["http"]["endpoint"].endswith(":4318")
    assert "debug" in config["exporters"]
    traces = config["service"]["pipelines"]["traces"]
    assert traces["receivers"] == ["otlp"] and traces["exporters"] == ["debug"]
    mounts = services()["otel-collector"]["volumes"]
    assert any(mount.startswith("./deploy/otel-collector.yaml:") for mount in mounts)
