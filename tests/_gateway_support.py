"""Gateway test helpers: the simulator's two providers, as a gateway configuration.

``oa`` speaks OpenAI Chat Completions, ``an`` Anthropic Messages, both on the simulator.
Backoff is scaled down so that retries take milliseconds; everything else is the product's.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from kernos.gateway import Endpoint, GatewayConfig, GatewaySettings, ProviderConfig
from kernos.sim import SimServer

OA = "oa:gpt-4.1-mini"
AN = "an:claude-haiku-4-5"

ConfigFactory = Callable[..., GatewayConfig]


def config_for(
    sim: SimServer,
    *,
    routes: dict[str, list[str]] | None = None,
    rpm: int | None = None,
    tpm: int | None = None,
    **settings: Any,
) -> GatewayConfig:
    defaults: dict[str, Any] = {"backoff_base": 0.01, "backoff_cap": 0.05, "timeout": 5.0}
    return GatewayConfig(
        providers={
            "oa": ProviderConfig(
                name="oa",
                kind="openai",
                base_url=sim.openai_base_url("oa"),
                api_key_env="",
                rpm=rpm,
                tpm=tpm,
            ),
            "an": ProviderConfig(
                name="an",
                kind="anthropic",
                base_url=sim.anthropic_base_url("an"),
                api_key_env="",
                rpm=rpm,
                tpm=tpm,
            ),
        },
        routes={
            name: tuple(Endpoint.parse(e) for e in chain)
            for name, chain in (routes or {"both": [OA, AN], "back": [AN, OA]}).items()
        },
        gateway=GatewaySettings(**{**defaults, **settings}),
        prices={},
    )


def write_config(path: Path, config: GatewayConfig) -> Path:
    oa = config.providers["oa"]
    an = config.providers["an"]
    path.write_text(
        f"""
[providers.oa]
kind = "openai"
base_url = "{oa.base_url}"
api_key_env = ""

[providers.an]
kind = "anthropic"
base_url = "{an.base_url}"
api_key_env = ""

[gateway]
backoff_base = 0.01
breaker_threshold = 50
"""
    )
    return path
