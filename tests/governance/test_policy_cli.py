"""``kernos policy check`` and ``kernos policy replay``, through the typer app itself.

``check`` must say ok and list the rules in the order they decide, or name every problem and
exit 2; ``replay`` reads real runs recorded by a real worker in a real SQLite file and changes
nothing (guarantee 7: a command that fails changes no state).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from governance.test_policy import CONVERSATIONS, REPLAY_RULES, history, write
from typer.testing import CliRunner, Result

from kernos.cli._policy import policy_app
from kernos.kernel import Registry, connect
from kernos.sim import SimServer

RULES = """
[policy]
default = "allow"

[[policy.rules]]
name = "refunds"
when = 'kind == "tool" && tool == "issue_refund"'
effect = "require_approval"

[[policy.rules]]
name = "no-deletes"
priority = 100
when = '''
kind == "tool"
  && tool.startsWith("delete_")
'''
effect = "deny"
"""


def kernos_policy(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(policy_app, list(args), env={"COLUMNS": "200", **(env or {})})


def test_check_says_ok_and_lists_the_rules_in_decision_order(tmp_path: Path) -> None:
    file = write(tmp_path / "kernos.toml", RULES)
    result = kernos_policy("check", str(file))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{file}: ok: 2 rules in decision order, default allow (policy ")
    assert lines[1].split() == ["#", "PRIORITY", "RULE", "EFFECT", "WHEN"]
    assert lines[2].split()[:4] == ["1", "100", "no-deletes", "deny"]
    assert 'kind == "tool" && tool.startsWith("delete_")' in lines[2]
    assert lines[3].split()[:4] == ["2", "0", "refunds", "require_approval"]
    assert result.stderr == ""


def test_check_as_json(tmp_path: Path) -> None:
    file = write(tmp_path / "kernos.toml", RULES)
    result = kernos_policy("check", str(file), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["ok"], data["default"], data["warnings"]) == (True, "allow", [])
    assert [(r["order"], r["name"], r["effect"]) for r in data["rules"]] == [
        (1, "no-deletes", "deny"),
        (2, "refunds", "require_approval"),
    ]


def test_check_names_every_problem_and_exits_2(tmp_path: Path) -> None:
    file = write(
        tmp_path / "policy.toml",
        """
[[rules]]
name = "a"
when = 'kind == "tool" && tols == "x"'
effect = "deny"

[[rules]]
name = "a"
when = "kind == "
effect = "deny"
""",
    )
    result = kernos_policy("check", str(file))
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == (
        f"error: {file}: rules[0] (\"a\").when: unknown variable 'tols' (did you mean 'tool'?); "
        f"the variables are: kind, principal, tenant, agent, tool, model, args, params"
    )
    assert lines[1].startswith(f'{file}: rules[1] ("a").name: duplicate rule name')
    assert lines[2].startswith(f'{file}: rules[1] ("a").when: CEL syntax error at line 1, ')
    assert lines[3:] == ["    kind == ", "            ^"]


def test_check_warns_about_a_rule_that_fails_for_every_llm_call(tmp_path: Path) -> None:
    file = write(
        tmp_path / "p.toml",
        """
[[rules]]
name = "deletes"
when = 'tool.startsWith("delete_")'
effect = "deny"
""",
    )
    result = kernos_policy("check", str(file))
    assert result.exit_code == 0
    assert result.stdout.startswith(f"{file}: ok: 1 rule in decision order")
    assert result.stderr.startswith("warning: rule 'deletes' fails for every LLM call")


def test_check_without_a_file_reads_the_config_kernos_reads(tmp_path: Path) -> None:
    file = write(tmp_path / "conf.toml", RULES)
    result = kernos_policy("check", env={"KERNOS_CONFIG": str(file)})
    assert result.exit_code == 0 and result.stdout.startswith(f"{file}: ok: 2 rules")
    routes_only = write(tmp_path / "routes.toml", '[routes]\nsupport = ["oa:gpt-4.1-mini"]\n')
    result = kernos_policy("check", str(routes_only))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {routes_only}: no policy in this file")
    result = kernos_policy("check", str(tmp_path / "missing.toml"))
    assert result.exit_code == 2 and "no such config file" in result.stderr


async def test_replay_shows_what_the_rules_would_decide_on_recorded_runs(
    sqlite_url: str, registry: Registry, kernos_sim: SimServer, tmp_path: Path
) -> None:
    file = write(tmp_path / "kernos.toml", REPLAY_RULES)
    client = await connect(sqlite_url, registry=registry)
    try:
        async with history(client, registry, kernos_sim) as runs:
            pass
        before = [await client.journal(r.id) for r in runs]
        table = await asyncio.to_thread(
            kernos_policy, "replay", str(file), "--since", "1h", "--database", sqlite_url
        )
        as_json = await asyncio.to_thread(
            kernos_policy, "replay", str(file), "--since", "1h", "--json", "--database", sqlite_url
        )
        after = [await client.journal(r.id) for r in runs]
    finally:
        await client.close()
    assert before == after  # replay reads, nothing more
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].startswith(f"{file} (policy ")
    assert f"on {len(CONVERSATIONS)} run(s) created since " in lines[0]
    assert lines[0].endswith(": 4 tool call(s), 8 LLM call(s)")
    assert [line.split() for line in lines[1:6]] == [
        ["RULE", "EFFECT", "CALLS", "FAILED", "CLOSED"],
        ["no-deletes", "deny", "1", "0"],
        ["big-refunds", "require_approval", "1", "0"],
        ["acme-models", "deny", "0", "0"],
        ["(default)", "allow", "10", "-"],
    ]
    assert "2 call(s) would be denied or need approval:" in table.stdout
    refund = next(line for line in lines if runs[1].id in line)
    assert "tool issue_refund" in refund and "require_approval" in refund
    assert '{"order_id": "A-2", "amount": 500}' in refund
    delete = next(line for line in lines if runs[3].id in line)
    assert "tool delete_account" in delete and "no-deletes" in delete
    data = json.loads(as_json.stdout)
    assert (data["runs"], data["calls"]) == (4, {"tool": 4, "llm": 8})
    assert [(f["run"], f["tool"], f["effect"], f["rule"]) for f in data["flagged"]] == [
        (runs[1].id, "issue_refund", "require_approval", "big-refunds"),
        (runs[3].id, "delete_account", "deny", "no-deletes"),
    ]
    assert data["flagged"][1]["reason"] == "deleting accounts needs a person"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday"], "--since 'yesterday' is neither a duration"),
        (["--since", "1h", "--database", "sqlite:///{tmp}/nope.db"], "no kernos database at"),
    ],
)
def test_replay_with_a_bad_option_exits_2_and_creates_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    file = write(tmp_path / "kernos.toml", RULES)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = kernos_policy("replay", str(file), *args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert not (tmp_path / "nope.db").exists()


def test_replay_of_a_broken_rule_set_exits_2_before_reading_history(tmp_path: Path) -> None:
    file = write(tmp_path / "p.toml", '[[rules]]\nname = "x"\nwhen = "nope"\neffect = "deny"\n')
    result = kernos_policy(
        "replay", str(file), "--since", "1h", "--database", f"sqlite:///{tmp_path}/nope.db"
    )
    assert result.exit_code == 2
    assert "unknown variable 'nope'" in result.stderr
