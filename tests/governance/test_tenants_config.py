"""``[tenants]`` in kernos.toml: per-tenant concurrency limits, read once by ``kernos worker``.

A mistake is reported at load with the file, the key, what is wrong and what to write instead.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kernos.errors import ConfigError
from kernos.gateway import load_config
from kernos.governance import tenant_limits_from_config
from kernos.store import TenantLimits

ROOT = Path(__file__).resolve().parents[2]

EXAMPLE = """
[tenants]
max_concurrent_runs = 50

[tenants.limits]
acme = 200
"free-trial" = 2
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "kernos.toml"
    path.write_text(text)
    return path


def test_the_documented_example_loads(tmp_path: Path) -> None:
    limits = tenant_limits_from_config(write(tmp_path, EXAMPLE), env={})
    assert limits == TenantLimits(default=50, limits={"acme": 200, "free-trial": 2})
    assert limits is not None
    assert (limits.limit_of("acme"), limits.limit_of("free-trial")) == (200, 2)
    assert limits.limit_of("anyone-else") == 50
    assert limits.describe() == "default 50, acme 200, free-trial 2"


def test_the_reference_examples_in_the_docs_load(tmp_path: Path) -> None:
    """docs/configuration.md's complete example and its [tenants] section both load."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, flags=re.DOTALL)
    complete = next(b for b in blocks if "[providers.openai]" in b and "[tenants]" in b)
    section = next(b for b in blocks if "free-trial" in b)
    assert tenant_limits_from_config(write(tmp_path, complete), env={}) == TenantLimits(
        default=50, limits={"acme": 200}
    )
    assert tenant_limits_from_config(write(tmp_path, section), env={}) == TenantLimits(
        default=50, limits={"acme": 200, "free-trial": 2}
    )


def test_every_key_is_optional(tmp_path: Path) -> None:
    only_named = tenant_limits_from_config(write(tmp_path, "[tenants.limits]\nacme = 3\n"), env={})
    assert only_named == TenantLimits(limits={"acme": 3})
    assert only_named is not None and only_named.limit_of("beta") is None
    empty = tenant_limits_from_config(write(tmp_path, "[tenants]\n"), env={})
    assert empty == TenantLimits() and not empty.limited  # fair claims, no limit


def test_no_file_or_no_table_means_no_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert tenant_limits_from_config(env={}) is None
    assert tenant_limits_from_config(write(tmp_path, "[gateway]\ntimeout = 5\n"), env={}) is None
    named = tmp_path / "other.toml"
    named.write_text("[tenants]\nmax_concurrent_runs = 4\n")
    assert tenant_limits_from_config(env={"KERNOS_CONFIG": os.fspath(named)}) == TenantLimits(
        default=4
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[tenants]\nmax_concurrent_runs = -5\n",
            "tenants.max_concurrent_runs: must be at least 1, got -5; a limit is a whole number "
            "of runs, at least 1, e.g. max_concurrent_runs = 10",
        ),
        (
            "[tenants]\nmax_concurrent_runs = 0\n",
            "tenants.max_concurrent_runs: must be at least 1, got 0;",
        ),
        (
            "[tenants.limits]\nacme = 2.5\n",
            "tenants.limits.acme: must be a whole number, got 2.5; a limit is a whole number of "
            "runs, at least 1, e.g. acme = 10",
        ),
        (
            '[tenants.limits]\nacme = "200"\n',
            "tenants.limits.acme: must be a whole number, got '200'; ",
        ),
        ("[tenants.limits]\nacme = true\n", "tenants.limits.acme: must be a whole number"),
        ("[tenants.limits]\nacme = -1\n", "tenants.limits.acme: must be at least 1, got -1"),
        (
            "[tenants]\nlimits = 5\n",
            "tenants.limits: must be a table, got 5 (write [tenants.limits] then one line per "
            "tenant: acme = 200)",
        ),
        (
            "[tenants]\nmax_concurent_runs = 5\n",
            "tenants.max_concurent_runs: unknown key (did you mean 'max_concurrent_runs'?)",
        ),
        (
            "[tenants]\nacme = 5\n",
            "tenants.acme: unknown key (the keys here are: limits, max_concurrent_runs; a "
            "tenant's own limit goes under [tenants.limits])",
        ),
        ("tenants = 5\n", "tenants: must be a table, got int"),
    ],
)
def test_a_mistake_names_the_file_the_key_and_the_fix(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        tenant_limits_from_config(path, env={})
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


def test_every_problem_is_reported_one_per_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[tenants]\nmax_concurrent_runs = -1\n[tenants.limits]\na = 0\nb = 1\n")
    with pytest.raises(ConfigError) as caught:
        tenant_limits_from_config(path, env={})
    lines = str(caught.value).splitlines()
    assert [line.split(": ")[1] for line in lines] == [
        "tenants.max_concurrent_runs",
        "tenants.limits.a",
    ]


def test_the_gateway_leaves_the_table_to_the_worker(tmp_path: Path) -> None:
    """The gateway reads the same file and refuses sections it does not know: [tenants] is
    known (the worker reads it)."""
    config = load_config(write(tmp_path, EXAMPLE + '[routes]\nr = ["openai:gpt-4.1"]\n'), env={})
    assert list(config.routes) == ["r"]


def test_kernos_worker_stops_at_a_bad_table_and_says_why(tmp_path: Path) -> None:
    config = write(tmp_path, "[tenants.limits]\nacme = -3\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERNOS_")}
    env |= {"KERNOS_CONFIG": str(config), "KERNOS_DATABASE_URL": f"sqlite:///{tmp_path}/k.db"}
    done = subprocess.run(
        [sys.executable, "-m", "kernos", "worker", "--app", "examples.refund"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "tenants.limits.acme: must be at least 1, got -3" in done.stderr
    assert "Traceback" not in done.stderr
