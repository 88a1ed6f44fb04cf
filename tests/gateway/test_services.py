"""What a worker checks at start: its kernos.toml, and the keys of the providers routes use."""

from __future__ import annotations

import pytest
from _gateway_support import config_for

from kernos.errors import ConfigError
from kernos.gateway import Endpoint, ProviderConfig, default_services
from kernos.sim import SimServer


def test_a_route_whose_provider_has_no_key_fails_the_worker_at_start(sim: SimServer) -> None:
    config = config_for(sim)
    keyed = config.model_copy(
        update={
            "providers": {
                **config.providers,
                "vendor": ProviderConfig(
                    name="vendor",
                    kind="openai",
                    base_url=sim.openai_base_url("vendor"),
                    api_key_env="VENDOR_KEY",
                ),
            },
            "routes": {"main": (Endpoint.parse("vendor:m1"),)},
        }
    )
    with pytest.raises(ConfigError, match="VENDOR_KEY, which is not set"):
        default_services(keyed, env={})
    assert set(default_services(keyed, env={"VENDOR_KEY": "k"})) == {"llm"}
    # providers no route uses (the built-in openai/anthropic without keys) are not checked
    assert set(default_services(config, env={})) == {"llm"}
