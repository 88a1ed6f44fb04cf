"""The gateway's configuration: kernos.toml parsed, defaulted, and refused with file, key, reason.

A bad file must fail at load with a message that names the file and the dotted key and says
what is wrong, never at the first call; a secret written into the file is refused.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from kernos.errors import ConfigError
from kernos.gateway._config import (
    NO_API_KEY,
    Endpoint,
    GatewayConfig,
    GatewaySettings,
    ProviderConfig,
    load_config,
)
from kernos.gateway._prices import Price

EXAMPLE = """\
[providers.openai]             # any name; kind picks the protocol
kind = "openai"                # OpenAI-compatible Chat Completions
base_url = "https://api.openai.com/v1"
api_key_env = "OPENAI_API_KEY"
rpm = 500                      # optional client-side limits
tpm = 200000

[providers.anthropic]
kind = "anthropic"
base_url = "https://api.anthropic.com"
api_key_env = "ANTHROPIC_API_KEY"

[routes]                       # a route is a fallback chain of provider:model
support = ["anthropic:claude-sonnet-4-5", "openai:gpt-4.1-mini"]
"""


def write(tmp_path: Path, text: str, name: str = "kernos.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str) -> tuple[Path, str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    return path, str(info.value)


# --- loading --------------------------------------------------------------------------------


def test_the_documented_example_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, EXAMPLE), env={})

    openai = config.providers["openai"]
    assert openai == ProviderConfig(
        name="openai",
        kind="openai",
        base_url="https://api.openai.com/v1",
        api_key_env="OPENAI_API_KEY",
        rpm=500,
        tpm=200000,
    )
    assert openai.timeout == 60.0
    assert openai.headers == {}
    anthropic = config.providers["anthropic"]
    assert (anthropic.kind, anthropic.base_url, anthropic.api_key_env) == (
        "anthropic",
        "https://api.anthropic.com",
        "ANTHROPIC_API_KEY",
    )
    assert (anthropic.rpm, anthropic.tpm) == (None, None)
    assert config.routes == {
        "support": (
            Endpoint(provider="anthropic", model="claude-sonnet-4-5"),
            Endpoint(provider="openai", model="gpt-4.1-mini"),
        )
    }
    assert config.gateway == GatewaySettings()
    assert config.prices == {}


def test_gateway_defaults() -> None:
    settings = GatewaySettings()
    assert settings.model_dump() == {
        "timeout": 60.0,
        "max_attempts": 3,
        "backoff_base": 0.5,
        "backoff_cap": 30.0,
        "max_retry_wait": 60.0,
        "breaker_threshold": 5,
        "breaker_cooldown": 5.0,
        "breaker_max_cooldown": 60.0,
        "deadline": None,
        "tool_argument_repairs": 2,
        "fleet_sync": 1.0,
    }


def test_gateway_table_overrides_only_what_it_names(tmp_path: Path) -> None:
    path = write(tmp_path, "[gateway]\nmax_attempts = 5\ndeadline = 120\nbackoff_cap = 2.5\n")
    settings = load_config(path, env={}).gateway
    assert (settings.max_attempts, settings.deadline, settings.backoff_cap) == (5, 120.0, 2.5)
    assert settings.timeout == 60.0


def test_no_file_means_the_two_official_providers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(env={})
    assert config == GatewayConfig()
    assert set(config.providers) == {"openai", "anthropic"}
    openai, anthropic = config.providers["openai"], config.providers["anthropic"]
    assert (openai.kind, openai.base_url, openai.api_key_env) == (
        "openai",
        "https://api.openai.com/v1",
        "OPENAI_API_KEY",
    )
    assert (anthropic.kind, anthropic.base_url, anthropic.api_key_env) == (
        "anthropic",
        "https://api.anthropic.com",
        "ANTHROPIC_API_KEY",
    )
    assert config.routes == {}


def test_kernos_toml_in_the_working_directory_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, EXAMPLE)
    monkeypatch.chdir(tmp_path)
    assert "support" in load_config(env={}).routes


def test_kernos_config_names_another_file(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE, name="elsewhere.toml")
    config = load_config(env={"KERNOS_CONFIG": str(path)})
    assert config.providers["openai"].rpm == 500


def test_kernos_config_naming_a_missing_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(env={"KERNOS_CONFIG": str(missing)})
    assert str(info.value) == (
        f"{missing}: no such config file (KERNOS_CONFIG names it; fix the path, or unset "
        f"KERNOS_CONFIG to read ./kernos.toml)"
    )


def test_an_empty_kernos_config_is_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_config(env={"KERNOS_CONFIG": ""}) == GatewayConfig()


def test_an_explicit_path_wins_and_must_exist(tmp_path: Path) -> None:
    path = write(tmp_path, "[gateway]\nmax_attempts = 7\n", name="explicit.toml")
    other = write(tmp_path, EXAMPLE, name="other.toml")
    assert load_config(path, env={"KERNOS_CONFIG": str(other)}).gateway.max_attempts == 7
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.toml", env={})


def test_a_file_with_providers_keeps_the_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[providers.ollama]\nbase_url = "http://localhost:11434/v1"\napi_key_env = ""\n',
    )
    providers = load_config(path, env={}).providers
    assert set(providers) == {"openai", "anthropic", "ollama"}
    assert providers["anthropic"] == ProviderConfig(name="anthropic", kind="anthropic")
    assert (providers["ollama"].kind, providers["ollama"].api_key_env) == ("openai", "")


def test_redefining_a_default_provider_replaces_only_what_it_sets(tmp_path: Path) -> None:
    path = write(tmp_path, "[providers.anthropic]\nrpm = 50\n")
    anthropic = load_config(path, env={}).providers["anthropic"]
    assert anthropic.kind == "anthropic"
    assert anthropic.base_url == "https://api.anthropic.com"
    assert anthropic.api_key_env == "ANTHROPIC_API_KEY"
    assert anthropic.rpm == 50


def test_a_new_provider_takes_defaults_from_its_name_and_kind(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[providers.together-ai]\nbase_url = "https://api.together.xyz/v1"\n'
        '[providers.claude-proxy]\nkind = "anthropic"\ntimeout = 300\n'
        'headers = { "anthropic-beta" = "prompt-caching-2024-07-31" }\n',
    )
    providers = load_config(path, env={}).providers
    together = providers["together-ai"]
    assert (together.kind, together.api_key_env) == ("openai", "TOGETHER_AI_API_KEY")
    proxy = providers["claude-proxy"]
    assert (proxy.base_url, proxy.api_key_env, proxy.timeout) == (
        "https://api.anthropic.com",
        "CLAUDE_PROXY_API_KEY",
        300.0,
    )
    assert proxy.headers == {"anthropic-beta": "prompt-caching-2024-07-31"}


def test_price_overrides_are_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[providers.ollama]\nbase_url = "http://localhost:11434/v1"\napi_key_env = ""\n'
        '[prices."ollama:llama3.1:8b"]\ninput = 0\noutput = 0\ncontext_window = 131072\n'
        '[prices."gpt-4.1-mini"]\ninput = 0.3\noutput = 1.2\ncached_input = 0.075\n',
    )
    config = load_config(path, env={})
    assert config.prices == {
        "ollama:llama3.1:8b": Price(input=0, output=0, cached_input=0, context_window=131072),
        "gpt-4.1-mini": Price(input=0.3, output=1.2, cached_input=0.075),
    }
    table = config.price_table()
    assert table.context_window("ollama", "llama3.1:8b") == 131072
    assert table.lookup("openai", "gpt-4.1-mini") == config.prices["gpt-4.1-mini"]


def test_the_config_is_frozen() -> None:
    config = GatewayConfig()
    with pytest.raises(ValidationError):
        config.gateway.max_attempts = 9


# --- errors: the file, the key, what is wrong -----------------------------------------------

ERRORS = [
    pytest.param(
        "[providers.openai]\nrpm = -5\n",
        "providers.openai.rpm: must be a positive number, got -5",
        id="negative",
    ),
    pytest.param(
        '[providers.openai]\nrpm = "500"\n',
        "providers.openai.rpm: must be a whole number, got '500'",
        id="string-for-int",
    ),
    pytest.param(
        "[providers.openai]\ntimeout = true\n",
        "providers.openai.timeout: must be a number, got true",
        id="bool-for-float",
    ),
    pytest.param(
        "[providers.openai]\nrmp = 500\n",
        "providers.openai.rmp: unknown key (did you mean 'rpm'?)",
        id="typo",
    ),
    pytest.param(
        "[gatway]\nmax_attempts = 2\n",
        "gatway: unknown key (did you mean 'gateway'?)",
        id="typo-table",
    ),
    pytest.param(
        "[gateway]\nbogus = 1\n",
        "gateway.bogus: unknown key (the keys here are: backoff_base, backoff_cap, "
        "breaker_cooldown, breaker_max_cooldown, breaker_threshold, deadline, fleet_sync, "
        "max_attempts, max_retry_wait, timeout, tool_argument_repairs)",
        id="unknown-key",
    ),
    pytest.param(
        '[providers.openai]\nkind = "azure"\n',
        "providers.openai.kind: must be 'openai' or 'anthropic', got 'azure'",
        id="kind",
    ),
    pytest.param(
        '[providers.local]\nbase_url = "localhost:8000"\n',
        "providers.local.base_url: must be an http:// or https:// URL, got 'localhost:8000'",
        id="base-url",
    ),
    pytest.param(
        '[providers."my provider"]\n',
        "providers.\"my provider\".name: a provider name may use letters, digits, '-', '_' "
        "and '.' (it is written before the ':' of provider:model), got 'my provider'",
        id="provider-name",
    ),
    pytest.param(
        '[providers.openai]\nname = "other"\n',
        "providers.openai.name: must be 'openai', the table's own name, or left out",
        id="provider-renamed",
    ),
    pytest.param(
        "[providers]\nopenai = 5\n",
        "providers.openai: must be a table, got 5",
        id="not-a-table",
    ),
    pytest.param(
        '[routes]\nsupport = ["anthropic:claude-sonnet-4-5", "azure:gpt-4o"]\n',
        "routes.support[1]: unknown provider 'azure' (configured providers: anthropic, "
        "openai); add a [providers.azure] table or fix the name",
        id="route-unknown-provider",
    ),
    pytest.param(
        "[routes]\nsupport = []\n",
        'routes.support: a route needs at least one provider:model (e.g. ["openai:gpt-4.1-mini"])',
        id="route-empty",
    ),
    pytest.param(
        '[routes]\nsupport = ["openai:gpt-4o", "gpt-4o"]\n',
        "routes.support[1]: 'gpt-4o' is not provider:model (e.g. openai:gpt-4.1-mini)",
        id="route-not-provider-model",
    ),
    pytest.param(
        '[routes]\nsupport = ["openai:"]\n',
        "routes.support[0]: 'openai:' is not provider:model: the model is empty",
        id="route-empty-model",
    ),
    pytest.param(
        '[routes]\nsupport = "openai:gpt-4o"\n',
        "routes.support: must be a list, got 'openai:gpt-4o'",
        id="route-not-a-list",
    ),
    pytest.param(
        "[gateway]\nmax_attempts = 0\n",
        "gateway.max_attempts: must be at least 1, got 0",
        id="max-attempts",
    ),
    pytest.param(
        "[gateway]\nbackoff_base = -0.5\n",
        "gateway.backoff_base: must be zero or more, got -0.5",
        id="backoff",
    ),
    pytest.param(
        '[prices."gpt-4.1"]\ninput = 2.0\n',
        'prices."gpt-4.1".output: is required',
        id="price-missing",
    ),
    pytest.param(
        '[prices."gpt-4.1"]\ninput = -2\noutput = 8\n',
        'prices."gpt-4.1".input: must be zero or more, got -2',
        id="price-negative",
    ),
    pytest.param(
        '[prices."gpt-4.1"]\ninput = 2\noutput = 8\ncontext = 5\n',
        "prices.\"gpt-4.1\".context: unknown key (did you mean 'context_window'?)",
        id="price-typo",
    ),
]


@pytest.mark.parametrize(("text", "problem"), ERRORS)
def test_a_bad_file_names_the_file_the_key_and_the_reason(
    tmp_path: Path, text: str, problem: str
) -> None:
    path, message = load_error(tmp_path, text)
    assert message == f"{path}: {problem}"


def test_the_documented_example_of_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "[providers.openai]\nrpm = -5\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config(env={})
    assert str(info.value) == "kernos.toml: providers.openai.rpm: must be a positive number, got -5"


def test_every_problem_is_reported_one_per_line(tmp_path: Path) -> None:
    path, message = load_error(
        tmp_path, "[providers.openai]\nrpm = 0\ntpm = -1\n[gateway]\ntimeout = 0\n"
    )
    assert message.splitlines() == [
        f"{path}: providers.openai.rpm: must be a positive number, got 0",
        f"{path}: providers.openai.tpm: must be a positive number, got -1",
        f"{path}: gateway.timeout: must be a positive number, got 0",
    ]


def test_toml_syntax_errors_give_line_and_column(tmp_path: Path) -> None:
    path, message = load_error(tmp_path, "[providers.openai]\nrpm = = 5\n")
    assert message.startswith(f"{path}: not valid TOML: ")
    assert message.endswith("(at line 2, column 7)")


def test_a_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "kernos.toml"
    path.write_bytes(b'[providers.openai]\nbase_url = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value) == f"{path}: not valid TOML: the file is not UTF-8 text"


def test_a_directory_is_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, env={})
    assert str(info.value) == f"{tmp_path}: cannot be read: Is a directory"


SECRET = "sk-proj-abc123SECRET"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        pytest.param(f'[providers.openai]\napi_key = "{SECRET}"\n', "api_key", id="api_key"),
        pytest.param(f'[providers.openai]\ntoken = "{SECRET}"\n', "token", id="token"),
        pytest.param(
            f'[providers.openai]\nheaders = {{ Authorization = "Bearer {SECRET}" }}\n',
            "headers.Authorization",
            id="header",
        ),
    ],
)
def test_a_secret_in_the_file_is_refused(tmp_path: Path, text: str, key: str) -> None:
    path, message = load_error(tmp_path, text)
    assert message == (
        f"{path}: providers.openai.{key}: put the key in an environment variable and name it "
        f'with api_key_env (e.g. export OPENAI_API_KEY=... and api_key_env = "OPENAI_API_KEY", '
        f"the default): the config file must hold no secrets"
    )
    assert SECRET not in message


def test_a_key_pasted_into_api_key_env_is_refused_without_echoing_it(tmp_path: Path) -> None:
    path, message = load_error(tmp_path, f'[providers.groq]\napi_key_env = "{SECRET}"\n')
    assert message.startswith(
        f"{path}: providers.groq.api_key_env: must be the name of an environment variable"
    )
    assert "put the key in an environment variable and name it with api_key_env" in message
    assert "GROQ_API_KEY" in message
    assert SECRET not in message


# --- routes ---------------------------------------------------------------------------------


def config_with_ollama() -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "providers": {
                "openai": {},
                "ollama": {"base_url": "http://localhost:11434/v1", "api_key_env": ""},
            },
            "routes": {"cheap": ["ollama:llama3.1:8b", "openai:gpt-4.1-nano"]},
        }
    )


def test_a_route_resolves_to_its_chain() -> None:
    assert config_with_ollama().resolve("cheap") == (
        Endpoint(provider="ollama", model="llama3.1:8b"),
        Endpoint(provider="openai", model="gpt-4.1-nano"),
    )


def test_provider_model_is_a_route_of_one() -> None:
    config = config_with_ollama()
    assert config.resolve("openai:gpt-4o") == (Endpoint(provider="openai", model="gpt-4o"),)
    # the model part keeps its own colons: split on the first one only
    assert config.resolve("ollama:qwen2.5:7b-instruct") == (
        Endpoint(provider="ollama", model="qwen2.5:7b-instruct"),
    )


def test_an_unknown_route_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError) as info:
        config_with_ollama().resolve("support")
    assert str(info.value) == (
        "unknown route 'support' (routes: cheap); add it under [routes] in kernos.toml, or name "
        "a model directly as provider:model, e.g. openai:gpt-4.1-mini"
    )


def test_an_unknown_route_without_routes() -> None:
    with pytest.raises(ConfigError, match=r"\(routes: none configured\)"):
        GatewayConfig().resolve("support")


def test_an_unknown_provider_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError) as info:
        config_with_ollama().resolve("azure:gpt-4o")
    assert str(info.value) == (
        "unknown provider 'azure' in 'azure:gpt-4o' (configured providers: ollama, openai); "
        "add a [providers.azure] table to kernos.toml or fix the name"
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [(":gpt-4o", "the provider is empty"), ("openai:", "the model is empty")],
)
def test_a_malformed_provider_model_is_refused(text: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        GatewayConfig().resolve(text)
    assert str(info.value) == f"{text!r} is not provider:model: {reason}"


def test_endpoint_parses_and_prints_provider_model() -> None:
    endpoint = Endpoint.parse("ollama:llama3.1:8b")
    assert (endpoint.provider, endpoint.model) == ("ollama", "llama3.1:8b")
    assert str(endpoint) == "ollama:llama3.1:8b"
    with pytest.raises(ConfigError, match="is not provider:model"):
        Endpoint.parse("gpt-4o")


# --- API keys from the environment ----------------------------------------------------------


def test_the_api_key_is_read_from_the_named_variable() -> None:
    provider = ProviderConfig(name="openai")
    assert provider.api_key({"OPENAI_API_KEY": "sk-test"}) == "sk-test"


def test_an_unset_api_key_names_the_provider_and_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        ProviderConfig(name="anthropic").api_key({})
    assert str(info.value) == (
        "provider 'anthropic' needs an API key in the environment variable ANTHROPIC_API_KEY, "
        "which is not set (export ANTHROPIC_API_KEY=...; or set api_key_env in "
        '[providers.anthropic] of kernos.toml to the variable that holds the key, or to "" '
        "for a local server that needs none)"
    )


def test_an_empty_api_key_is_as_good_as_none() -> None:
    with pytest.raises(ConfigError, match="OPENAI_API_KEY, which is empty"):
        ProviderConfig(name="openai").api_key({"OPENAI_API_KEY": ""})


def test_a_provider_without_a_key_sends_a_placeholder() -> None:
    local = ProviderConfig(name="vllm", base_url="http://localhost:8000/v1", api_key_env="")
    assert local.api_key({}) == NO_API_KEY
    assert NO_API_KEY


def test_the_key_is_read_when_asked_not_when_loaded(tmp_path: Path) -> None:
    """A config loads without any key set; the key is looked up per call to api_key()."""
    config = load_config(write(tmp_path, EXAMPLE), env={})
    env: dict[str, str] = {}
    with pytest.raises(ConfigError):
        config.providers["openai"].api_key(env)
    env["OPENAI_API_KEY"] = "sk-rotated"
    assert config.providers["openai"].api_key(env) == "sk-rotated"


def test_a_provider_is_found_by_name() -> None:
    config = config_with_ollama()
    assert config.provider("ollama").base_url == "http://localhost:11434/v1"
    with pytest.raises(ConfigError) as info:
        config.provider("azure")
    assert str(info.value) == (
        "unknown provider 'azure' (configured providers: ollama, openai); add a "
        "[providers.azure] table to kernos.toml or fix the name"
    )


def test_the_mcp_table_of_the_same_file_is_left_to_the_agents_layer(tmp_path: Path) -> None:
    text = '[routes]\nsupport = ["openai:gpt-4.1-mini"]\n\n[mcp.servers.billing]\ncommand = "x"\n'
    config = load_config(write(tmp_path, text), env={})
    assert [str(e.model) for e in config.routes["support"]] == ["gpt-4.1-mini"]
