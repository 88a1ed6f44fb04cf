"""The policy engine: rules in kernos.toml decide allow, deny or require approval for each tool
and LLM call (guarantee 6: checks come before effects).

Decisions are pure functions of the rules and the call, tested here directly; the guard index
that skips rules which cannot match is checked against a reference that evaluates every rule
(a property test). Replay reads history recorded by real runs: an Agent on a real worker and
database, talking to the provider simulator over HTTP.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import cel
import pytest
from _gateway_support import OA, config_for
from hypothesis import given, settings
from hypothesis import strategies as st

import kernos
from kernos.agents import Agent
from kernos.errors import ConfigError, InvalidInput
from kernos.gateway import default_services
from kernos.governance import (
    Decision,
    Effect,
    Policy,
    Rule,
    Subject,
    load_policy,
    recorded_calls,
    replay_policy,
)
from kernos.governance._cel import FUNCTIONS, Guard, _tokens, compile_expression, guard_of
from kernos.kernel import Client, Registry
from kernos.sim import Reply, SimServer
from kernos.sim import ToolCall as Call
from kernos.store import RunState
from kernos.testing import running_worker


def tool(name: str, args: dict[str, Any] | None = None, **who: Any) -> Subject:
    return Subject.for_tool(name, args or {}, agent=who.pop("agent", "support"), **who)


def llm(model: str = "support", **who: Any) -> Subject:
    return Subject.for_llm(model, agent=who.pop("agent", "support"), **who)


def policy(*rules: tuple[str, str, Effect] | Rule, default: Effect = "allow") -> Policy:
    """Rules written (name, when, effect), or as ``Rule``s."""
    built = [r if isinstance(r, Rule) else Rule(name=r[0], when=r[1], effect=r[2]) for r in rules]
    return Policy(built, default=default)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def config_error(path: Path, text: str) -> str:
    """The message of the ConfigError that loading ``text`` from ``path`` raises."""
    write(path, text)
    with pytest.raises(ConfigError) as caught:
        load_policy(path, env={})
    return str(caught.value)


# -- order, effects, default ------------------------------------------------------------------


def test_the_first_matching_rule_by_priority_decides_and_ties_keep_the_file_order() -> None:
    p = Policy(
        [
            Rule(name="low", when="true", effect="allow", priority=1),
            Rule(name="first-of-two", when='kind == "tool"', effect="deny", priority=50),
            Rule(name="second-of-two", when='kind == "tool"', effect="allow", priority=50),
            Rule(name="high", when='tool == "pay"', effect="require_approval", priority=100),
        ]
    )
    assert [r.name for r in p.rules] == ["high", "first-of-two", "second-of-two", "low"]
    assert p.decide(tool("pay")).rule == "high"
    assert p.decide(tool("lookup")).rule == "first-of-two"
    assert p.decide(llm()).rule == "low"


def test_each_effect_with_the_rules_reason_or_one_that_names_the_rule() -> None:
    p = Policy(
        [
            Rule(
                name="no-deletes",
                when='kind == "tool" && tool.startsWith("delete_")',
                effect="deny",
                reason="deleting accounts needs a person",
            ),
            Rule(name="refunds", when='tool == "refund"', effect="require_approval"),
            Rule(name="reads", when='tool.startsWith("get_")', effect="allow"),
        ],
        default="deny",
    )
    denied = p.decide(tool("delete_account", {"id": 7}))
    assert (denied.effect, denied.rule) == ("deny", "no-deletes")
    assert denied.reason == "deleting accounts needs a person"
    held = p.decide(tool("refund"))
    assert (held.effect, held.rule) == ("require_approval", "refunds")
    assert "refunds" in held.reason and "approval" in held.reason
    allowed = p.decide(tool("get_order"))
    assert (allowed.effect, allowed.rule, allowed.allowed) == ("allow", "reads", True)
    assert not denied.errors and not denied.failed_closed


@pytest.mark.parametrize("default", ["allow", "deny", "require_approval"])
def test_the_default_decides_when_no_rule_matches(default: Effect) -> None:
    p = policy(("pay", 'tool == "pay"', "deny"), default=default)
    decision = p.decide(tool("lookup"))
    assert (decision.effect, decision.rule) == (default, None)
    assert "no policy rule matched" in decision.reason
    assert policy(default=default).decide(llm()).effect == default


def test_the_decision_payload_is_json_for_the_journal() -> None:
    p = policy(("no-pay", 'tool == "pay"', "deny"))
    decision = p.decide(tool("pay", {"amount": 5}))
    payload = decision.payload()
    assert json.loads(json.dumps(payload)) == payload
    assert payload == {
        "effect": "deny",
        "rule": "no-pay",
        "reason": "policy rule 'no-pay' denies this call",
        "policy": p.digest,
    }
    failed = policy(("strict", "args.amount > 1", "deny")).decide(tool("pay")).payload()
    assert failed["failed_closed"] is True and failed["errors"]


def test_the_digest_names_the_rule_set() -> None:
    a = policy(("r", 'tool == "pay"', "deny"))
    assert a.digest == policy(("r", 'tool == "pay"', "deny")).digest
    assert a.digest != policy(("r", 'tool == "pay"', "allow")).digest
    assert a.digest != policy(("r", 'tool == "pay"', "deny"), default="deny").digest
    assert a.decide(tool("pay")).policy == a.digest


# -- what rules can say -----------------------------------------------------------------------


def test_cel_over_nested_arguments() -> None:
    p = policy(
        ("big", 'tool == "pay" && args.amount > 100', "require_approval"),
        ("outside", '!args.to.endsWith("@acme.com")', "deny"),
        ("france", 'has(args.customer) && args.customer.address.country == "FR"', "deny"),
        ("bulk", "has(args.items) && args.items.exists(i, i.qty > 10)", "require_approval"),
    )
    assert p.decide(tool("pay", {"amount": 150, "to": "a@acme.com"})).rule == "big"
    assert p.decide(tool("pay", {"amount": 100.5, "to": "a@acme.com"})).rule == "big"
    assert p.decide(tool("pay", {"amount": 99, "to": "a@acme.com"})).rule is None
    assert p.decide(tool("mail", {"to": "x@evil.example"})).rule == "outside"
    customer = {"address": {"country": "FR", "city": "Lyon"}}
    assert p.decide(tool("ship", {"to": "a@acme.com", "customer": customer})).rule == "france"
    items = [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 12}]
    assert p.decide(tool("order", {"to": "a@acme.com", "items": items})).rule == "bulk"


def test_in_lists_and_maps() -> None:
    p = policy(
        ("money", 'tool in ["pay", "refund"]', "require_approval"),
        ("tenants", 'tenant in ["acme", "globex"] && kind == "llm"', "deny"),
        ("currency", 'has(args.currency) && !(args.currency in ["EUR", "USD"])', "deny"),
        ("tagged", 'has(args.tags) && "secret" in args.tags', "deny"),
        ("keyed", '"password" in args', "deny"),
    )
    assert p.decide(tool("refund")).rule == "money"
    assert p.decide(llm(tenant="globex")).rule == "tenants"
    assert p.decide(llm(tenant="initech")).rule is None
    assert p.decide(tool("convert", {"currency": "JPY"})).rule == "currency"
    assert p.decide(tool("convert", {"currency": "EUR"})).rule is None
    assert p.decide(tool("note", {"tags": ["a", "secret"]})).rule == "tagged"
    assert p.decide(tool("login", {"password": "x"})).rule == "keyed"


def test_an_llm_call_has_a_null_tool_and_empty_args() -> None:
    p = policy(
        ("no-tool", 'tool == null && size(args) == 0 && kind == "llm"', "require_approval"),
    )
    assert p.decide(llm()).rule == "no-tool"
    assert p.decide(tool("pay")).rule is None


def test_rules_over_model_params_principal_tenant_and_agent() -> None:
    p = policy(
        ("models", 'kind == "llm" && !(model in ["support", "openai:gpt-4.1-mini"])', "deny"),
        ("long", 'kind == "llm" && has(params.max_tokens) && params.max_tokens > 4000', "deny"),
        ("anon", 'principal == null && tenant == "bank"', "require_approval"),
        ("bot", 'agent == "intern" && kind == "tool"', "deny"),
        ("alice", 'principal == "alice"', "allow"),
    )
    assert p.decide(llm("anthropic:claude-opus-4")).rule == "models"
    assert p.decide(llm(params={"max_tokens": 8000})).rule == "long"
    assert p.decide(llm(params={"max_tokens": 100})).rule is None
    assert p.decide(tool("x", tenant="bank")).rule == "anon"
    assert p.decide(tool("x", tenant="bank", principal="alice")).rule == "alice"
    assert p.decide(tool("x", agent="intern")).rule == "bot"


@pytest.mark.parametrize(
    "when",
    [
        'size("ab") == 2',
        '"ab".contains("b") && "ab".startsWith("a") && "ab".endsWith("b")',
        '"AB".matches("(?i)^ab$")',
        'int("12") == 12 && uint(1) == 1u && double(1) == 1.0 && string(1) == "1"',
        'bytes("a") == b"a" && dyn(1) == 1 && type(1) == int',
        'duration("1h") > duration("59m")',
        'timestamp("2024-01-02T03:04:05Z").getFullYear() == 2024',
        'timestamp("2024-01-02T03:04:05Z").getMonth() == 0',
        'timestamp("2024-01-02T03:04:05Z").getDayOfYear() == 1',
        'timestamp("2024-01-02T03:04:05Z").getDayOfMonth() == 1',
        'timestamp("2024-01-02T03:04:05Z").getDate() == 2',
        'timestamp("2024-01-02T03:04:05Z").getDayOfWeek() == 2',
        'timestamp("2024-01-02T03:04:05Z").getHours() == 3',
        'timestamp("2024-01-02T03:04:05Z").getMinutes() == 4',
        'timestamp("2024-01-02T03:04:05Z").getSeconds() == 5',
        'timestamp("2024-01-02T03:04:05Z").getMilliseconds() == 0',
    ],
)
def test_every_function_the_load_check_accepts_exists(when: str) -> None:
    """The list of functions checked at load is ours; the binding must really have each."""
    decision = policy(("f", when, "deny")).decide(tool("t"))
    assert (decision.rule, decision.errors) == ("f", ()), decision.reason


def test_the_function_list_is_covered_by_the_test_above() -> None:
    source = Path(__file__).read_text()
    assert all(f"{name}(" in source for name in FUNCTIONS)


# -- failing closed ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "args", "error"),
    [
        ("args.amount > 100", {}, "no such key: 'amount'"),
        ("args.amount > 100", {"amount": "150"}, "No such overload"),
        ('args.to.endsWith("@acme.com")', {"to": None}, "endsWith() does not apply"),
        ("args.items[3] == 1", {"items": [1]}, "index out of bounds"),
        ("args.n / args.d > 1", {"n": 1, "d": 0}, "division by zero"),
    ],
)
@pytest.mark.parametrize("effect", ["deny", "require_approval"])
def test_an_evaluation_error_counts_as_matching_when_the_rule_stops_the_call(
    when: str, args: dict[str, Any], error: str, effect: Effect
) -> None:
    """Fail closed: a rule that cannot be evaluated never lets a call through unchecked."""
    p = policy(("strict", when, effect), ("later", "true", "allow"))
    decision = p.decide(tool("pay", args))
    assert (decision.effect, decision.rule, decision.failed_closed) == (effect, "strict", True)
    assert error in decision.reason and "'strict'" in decision.reason
    assert len(decision.errors) == 1 and decision.errors[0].startswith("rule 'strict': ")
    assert error in decision.errors[0]


def test_an_evaluation_error_never_lets_an_allow_rule_match() -> None:
    p = policy(
        ("vip", "args.customer.vip == true", "allow"),
        ("refunds", 'tool == "refund"', "require_approval"),
        default="deny",
    )
    held = p.decide(tool("refund", {"order": "A-1"}))
    assert (held.effect, held.rule, held.failed_closed) == ("require_approval", "refunds", False)
    assert held.errors == ("rule 'vip': no such key: 'customer'",)
    fallen = p.decide(tool("lookup"))
    assert (fallen.effect, fallen.rule) == ("deny", None)
    assert fallen.errors == ("rule 'vip': no such key: 'customer'",)
    assert p.decide(tool("refund", {"customer": {"vip": True}})).rule == "vip"


def test_a_method_on_an_llm_calls_null_tool_fails_closed_and_says_so() -> None:
    p = policy(("deletes", 'tool.startsWith("delete_")', "deny"))
    decision = p.decide(llm())
    assert (decision.effect, decision.failed_closed) == ("deny", True)
    assert "tool is null for this call" in decision.reason
    assert p.warnings == (
        "rule 'deletes' fails for every LLM call (no such overload: startsWith() does not "
        "apply to this value (tool is null for this call)): it counts as matching, so it "
        'denies every one. If it is about tools, start it with kind == "tool" &&',
    )
    guarded = policy(("deletes", 'kind == "tool" && tool.startsWith("delete_")', "deny"))
    assert guarded.warnings == () and guarded.decide(llm()).effect == "allow"


def test_a_result_that_is_not_a_boolean_is_an_error() -> None:
    p = policy(("amount", "args.amount", "deny"), ("name", "tool", "allow"))
    decision = p.decide(tool("pay", {"amount": 5}))
    assert (decision.effect, decision.failed_closed) == ("deny", True)
    assert "when must be true or false, but it gave int 5" in decision.reason
    assert any("rule 'name'" in w for w in policy(("name", "tenant", "allow")).warnings)


def test_arguments_cel_cannot_take_fail_closed() -> None:
    p = policy(("amount", 'tool == "pay" && size(args) > 100', "deny"))
    decision = p.decide(tool("pay", {"amount": 5, "when": object()}))
    assert (decision.effect, decision.failed_closed) == ("deny", True)
    assert "cannot be given to CEL" in decision.reason


def test_rules_get_only_the_argument_keys_they_read() -> None:
    """Arguments are converted for CEL only as far as rules read them (large ones are slow to
    convert); a rule sees exactly what it would in the whole map."""
    keyed = policy(("amount", 'tool == "pay" && args.amount > 100 && !has(args.to)', "deny"))
    unreadable = {"amount": 500, "blob": object()}
    assert keyed.decide(tool("pay", unreadable)).rule == "amount"
    assert keyed.decide(tool("pay", {"amount": 500, "to": "x"})).rule is None
    whole = policy(("amount", 'tool == "pay" && size(args) == 2 && args.amount > 1', "deny"))
    assert whole.decide(tool("pay", {"amount": 500, "to": "x"})).rule == "amount"


def test_decisions_from_many_threads_at_once() -> None:
    p = policy(("big", 'kind == "tool" && args.amount > 100', "deny"))
    results: list[tuple[int, str]] = []

    def decide_many() -> None:
        for amount in range(0, 400, 7):
            results.append((amount, p.decide(tool("pay", {"amount": amount})).effect))

    threads = [threading.Thread(target=decide_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4 * len(range(0, 400, 7))
    assert all(effect == ("deny" if amount > 100 else "allow") for amount, effect in results)


def test_a_subject_is_a_tool_call_or_an_llm_call() -> None:
    with pytest.raises(InvalidInput, match="needs the tool's name"):
        Subject(kind="tool", agent="a")
    with pytest.raises(InvalidInput, match="has no tool"):
        Subject(kind="llm", agent="a", tool="x")
    assert llm().values()["args"] == {} and tool("x").values()["model"] is None


# -- the guard index is exact -----------------------------------------------------------------


def guard(source: str) -> Guard:
    return guard_of(list(_tokens(source)))


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('kind == "tool" && tool.startsWith("x")', Guard(kinds=frozenset({"tool"}))),
        ("'llm' == kind", Guard(kinds=frozenset({"llm"}))),
        ('tool in ["a", "b",] && args.x', Guard(tools=frozenset({"a", "b"}))),
        (
            '(kind == "tool" && (tool == "a")) && args.x > 1',
            Guard(kinds=frozenset({"tool"}), tools=frozenset({"a"})),
        ),
        ('tool == "a" && tool == "b"', Guard(tools=frozenset())),
        ('"tool" == kind // a comment with "quotes" && ||\n && tool == "q"', None),
        ('tool == "a" || kind == "llm"', Guard()),
        ('kind == "tool" ? tool == "a" : true', Guard()),
        ('!(kind == "tool") && true', Guard()),
        ('args.kind == "tool"', Guard()),
        ('kind == b"tool"', Guard()),
        ('tool == "a\\"b"', Guard()),
        ('tenant == "x && kind == \\"llm\\"" && kind == "tool"', Guard(kinds=frozenset({"tool"}))),
        ('tenant == r"\\" && tool == "z"', Guard(tools=frozenset({"z"}))),
        ('tenant == """a "&&" b""" && tool == "z"', Guard(tools=frozenset({"z"}))),
    ],
)
def test_guards_come_only_from_top_level_conjuncts(source: str, expected: Guard | None) -> None:
    compile_expression(source)  # every case is valid CEL
    if expected is None:
        expected = Guard(kinds=frozenset({"tool"}), tools=frozenset({"q"}))
    assert guard(source) == expected


ATOMS = [
    'kind == "tool"',
    '"llm" == kind',
    'tool == "pay"',
    "tool == 'refund'",
    'tool in ["pay", "delete_account"]',
    'tool.startsWith("delete")',
    "args.amount > 100",
    'has(args.to) && args.to.endsWith("@acme.com")',
    'tenant == "acme"',
    'model == "support"',
    "principal == null",
    "params.max_tokens > 10",
    "size(args) > 1",
    '"to" in args',
    'args["amount"] == 500',
    'tenant == "&& tool == \\"pay\\""',
    "true",
    "false",
]
EXPRESSIONS = st.recursive(
    st.sampled_from(ATOMS),
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from([" && ", " || "]), inner).map("".join),
        inner.map(lambda e: f"({e})"),
        inner.map(lambda e: f"!({e})"),
        st.tuples(inner, inner, inner).map(lambda t: f"{t[0]} ? ({t[1]}) : {t[2]}"),
    ),
    max_leaves=5,
)
RULES = st.lists(
    st.tuples(
        EXPRESSIONS,
        st.sampled_from(["allow", "deny", "require_approval"]),
        st.integers(0, 3),
    ),
    max_size=8,
)
SUBJECTS = st.one_of(
    st.builds(
        tool,
        st.sampled_from(["pay", "refund", "delete_account", "lookup"]),
        st.sampled_from(
            [
                {},
                {"amount": 50},
                {"amount": 500, "to": "a@acme.com", "memo": "x" * 100},
                {"amount": "500"},
            ]
        ),
        tenant=st.sampled_from(["acme", "default"]),
    ),
    st.builds(
        llm,
        st.sampled_from(["support", "openai:gpt-4.1-mini"]),
        tenant=st.sampled_from(["acme", "default"]),
        params=st.sampled_from([{}, {"max_tokens": 100}]),
    ),
)


def reference(rules: Sequence[Rule], default: Effect, subject: Subject) -> tuple[str, str | None]:
    """Every rule evaluated in order on every call, with no index: what decide() must equal."""
    context = cel.Context(subject.values())
    ordered = sorted(enumerate(rules), key=lambda item: (-item[1].priority, item[0]))
    for _, rule in ordered:
        try:
            result = cel.compile(rule.when).execute(context)
        except Exception:
            matched = rule.effect != "allow"
        else:
            matched = result is True or (not isinstance(result, bool) and rule.effect != "allow")
        if matched:
            return rule.effect, rule.name
    return default, None


@settings(max_examples=400, deadline=None)
@given(RULES, st.sampled_from(["allow", "deny", "require_approval"]), st.lists(SUBJECTS))
def test_the_guard_index_decides_exactly_as_evaluating_every_rule(
    specs: list[tuple[str, Effect, int]], default: Effect, subjects: list[Subject]
) -> None:
    rules = [
        Rule(name=f"r{i}", when=when, effect=effect, priority=priority)
        for i, (when, effect, priority) in enumerate(specs)
    ]
    p = Policy(rules, default=default)
    for subject in subjects:
        decision = p.decide(subject)
        assert (decision.effect, decision.rule) == reference(rules, default, subject)


# -- configuration errors ---------------------------------------------------------------------


RULE = """
[[policy.rules]]
name = "no-deletes"
when = 'kind == "tool" && tool.startsWith("delete_")'
effect = "deny"
"""


def test_a_cel_syntax_error_names_the_file_the_rule_and_the_position(tmp_path: Path) -> None:
    message = config_error(
        tmp_path / "kernos.toml",
        RULE
        + """
[[policy.rules]]
name = "refunds"
when = '''
kind == "tool"
  && args.amount >> 100
'''
effect = "require_approval"
""",
    )
    lines = message.splitlines()
    assert lines[0].startswith(
        f'{tmp_path / "kernos.toml"}: policy.rules[1] ("refunds").when: CEL syntax error at '
        f"line 2, column 19: "
    )
    assert lines[1:] == ["      && args.amount >> 100", "                      ^"]


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (
            'name = "r"\nwhen = "true"\neffect = "block"',
            "policy.rules[1] (\"r\").effect: must be 'allow', 'deny' or 'require_approval', "
            "got 'block'",
        ),
        (
            'name = "r"\neffect = "deny"',
            'policy.rules[1] ("r").when: is required: the CEL condition of the rule, e.g. '
            "when = 'kind == \"tool\"'",
        ),
        ('when = "true"\neffect = "deny"', "policy.rules[1].name: is required"),
        (
            'name = "no-deletes"\nwhen = "true"\neffect = "deny"',
            'policy.rules[1] ("no-deletes").name: duplicate rule name; policy.rules[0] has it too',
        ),
        (
            'name = "r"\nwhen = "tols == \\"x\\""\neffect = "deny"',
            "policy.rules[1] (\"r\").when: unknown variable 'tols' (did you mean 'tool'?); the "
            "variables are: kind, principal, tenant, agent, tool, model, args, params",
        ),
        (
            'name = "r"\nwhen = "args.to.lowerAscii() == \\"x\\""\neffect = "deny"',
            "policy.rules[1] (\"r\").when: unknown function 'lowerAscii'",
        ),
        (
            'name = "r"\nwhen = "kind == \\"tools\\""\neffect = "deny"',
            'policy.rules[1] ("r").when: kind is "tool" or "llm", never \'tools\'',
        ),
        (
            'name = "r"\nwhen = "true"\neffect = "deny"\nprority = 5',
            "policy.rules[1] (\"r\").prority: unknown key (did you mean 'priority'?)",
        ),
        (
            'name = "r"\nwhen = "true"\neffect = "deny"\npriority = "high"',
            "policy.rules[1] (\"r\").priority: must be a whole number, got 'high'",
        ),
        ('name = ""\nwhen = "true"\neffect = "deny"', "policy.rules[1].name: must not be empty"),
        ('name = "r"\nwhen = " "\neffect = "deny"', 'policy.rules[1] ("r").when: is empty'),
    ],
)
def test_each_kind_of_mistake_is_named_with_the_file_and_the_rule(
    tmp_path: Path, rule: str, expected: str
) -> None:
    file = tmp_path / "kernos.toml"
    message = config_error(file, RULE + "\n[[policy.rules]]\n" + rule + "\n")
    assert message.startswith(f"{file}: {expected}"), message


def test_every_problem_is_reported_at_once_rule_by_rule(tmp_path: Path) -> None:
    file = tmp_path / "policy.toml"
    message = config_error(
        file,
        """
default = "block"
[[rules]]
name = "a"
when = "kind =="
effect = "forbid"
[[rules]]
name = "b"
when = "tool == "
effect = "deny"
""",
    )
    problems = [line for line in message.splitlines() if line.startswith(str(file))]
    assert [p.split(": ")[1] for p in problems] == [
        "default",
        'rules[0] ("a").effect',
        'rules[0] ("a").when',
        'rules[1] ("b").when',
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[policy]\ndefault = "never"', "policy.default: must be 'allow', 'deny' or"),
        ("[policy]\nrules = 5", "policy.rules: must be a list of [[policy.rules]] tables, got 5"),
        ("[policy]\nrules = [5]", "policy.rules[0]: must be a table with name, when and effect"),
        ("[policy]\ndefualt = 'deny'", "policy.defualt: unknown key (did you mean 'default'?)"),
        ("policy = 3", "policy: must be a table ([policy]), got 3"),
        ("[policy]\nfile = 3", "policy.file: must be a path, got 3"),
        (
            '[policy]\nfile = "p.toml"\ndefault = "deny"',
            'policy: with file = "p.toml" the rules and the default live in that file; move '
            "default there",
        ),
        ('[policy]\nfile = "nope.toml"', "policy.file: no such file"),
        ("[policy\n", "not valid TOML"),
    ],
)
def test_mistakes_in_the_policy_table(tmp_path: Path, text: str, expected: str) -> None:
    file = tmp_path / "kernos.toml"
    assert config_error(file, text).startswith(f"{file}: {expected}")


def test_a_policy_given_in_code_is_checked_the_same_way() -> None:
    with pytest.raises(ConfigError, match=r"<rules>: rules\[0\] \(\"x\"\)\.when: unknown"):
        policy(("x", "nope == 1", "deny"))
    with pytest.raises(ConfigError, match="<rules>: default: must be"):
        Policy([], default="maybe")  # type: ignore[arg-type]


# -- where rules are read from ----------------------------------------------------------------


POLICY_FILE = """
default = "require_approval"

[[rules]]
name = "reads"
priority = 10
when = 'kind == "tool" && tool.startsWith("get_")'
effect = "allow"
"""


def test_a_policy_file_named_by_kernos_toml_is_read_from_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write(tmp_path / "conf" / "kernos.toml", '[policy]\nfile = "rules/policy.toml"\n')
    write(tmp_path / "conf" / "rules" / "policy.toml", POLICY_FILE)
    monkeypatch.chdir(tmp_path)  # not the config's directory
    p = load_policy(env={"KERNOS_CONFIG": str(config)})
    assert p is not None
    assert p.source == str(tmp_path / "conf" / "rules" / "policy.toml")
    assert p.default == "require_approval"
    assert p.decide(tool("get_order")).rule == "reads"
    assert p.decide(tool("pay")).effect == "require_approval"
    absolute = write(tmp_path / "abs" / "kernos.toml", f'[policy]\nfile = "{p.source}"\n')
    assert load_policy(absolute, env={}) is not None


def test_errors_in_a_referenced_file_name_that_file(tmp_path: Path) -> None:
    config = write(tmp_path / "kernos.toml", '[policy]\nfile = "policy.toml"\n')
    referenced = write(tmp_path / "policy.toml", POLICY_FILE + '\n[[rules]]\nname = "x"\n')
    with pytest.raises(ConfigError) as caught:
        load_policy(config, env={})
    assert str(caught.value).startswith(f'{referenced}: rules[1] ("x").when: is required')
    write(referenced, RULE)
    with pytest.raises(ConfigError, match=r"policy\.toml: policy: a policy file holds"):
        load_policy(config, env={})


def test_rules_inline_in_kernos_toml_next_to_other_sections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "kernos.toml", '[routes]\nsupport = ["oa:gpt-4.1-mini"]\n' + RULE)
    monkeypatch.chdir(tmp_path)
    p = load_policy(env={})
    assert p is not None and p.source == "kernos.toml"
    assert p.decide(tool("delete_account")).effect == "deny"


def test_no_policy_is_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_policy(env={}) is None
    write(tmp_path / "kernos.toml", '[routes]\nsupport = ["oa:gpt-4.1-mini"]\n')
    assert load_policy(env={}) is None
    with pytest.raises(ConfigError, match="no such config file"):
        load_policy(tmp_path / "missing.toml", env={})


def test_a_policy_file_can_be_loaded_directly(tmp_path: Path) -> None:
    p = load_policy(write(tmp_path / "p.toml", POLICY_FILE), env={})
    assert p is not None and [r.name for r in p.rules] == ["reads"]


# -- replay on recorded history ---------------------------------------------------------------


REPLAY_RULES = """
[[policy.rules]]
name = "no-deletes"
priority = 100
when = 'kind == "tool" && tool.startsWith("delete_")'
effect = "deny"
reason = "deleting accounts needs a person"

[[policy.rules]]
name = "big-refunds"
when = 'kind == "tool" && tool == "issue_refund" && args.amount > 100'
effect = "require_approval"

[[policy.rules]]
name = "acme-models"
when = 'kind == "llm" && tenant == "acme" && model != "oa:gpt-4.1-mini"'
effect = "deny"
"""


def support_agent(registry: Registry) -> None:
    @kernos.tool
    def lookup_order(order_id: str) -> dict[str, Any]:
        """Find an order."""
        return {"id": order_id, "status": "shipped"}

    @kernos.tool
    def issue_refund(order_id: str, amount: float) -> str:
        """Refund part or all of an order."""
        return f"refunded {amount} on {order_id}"

    @kernos.tool
    def delete_account(account_id: int) -> str:
        """Close a customer's account."""
        raise RuntimeError("the account service refused: open orders")

    Agent(
        "support",
        model=OA,
        tools=[lookup_order, issue_refund, delete_account],
        registry=registry,
    )


CONVERSATIONS: list[tuple[str, str, dict[str, Any]]] = [
    ("default", "lookup_order", {"order_id": "A-1"}),
    ("acme", "issue_refund", {"order_id": "A-2", "amount": 500}),
    ("acme", "issue_refund", {"order_id": "A-3", "amount": 20}),
    ("default", "delete_account", {"account_id": 7}),
]


@asynccontextmanager
async def history(
    client: Client, registry: Registry, sim: SimServer
) -> AsyncIterator[list[kernos.Run]]:
    """Runs of a support agent, one tool call each, recorded by a real worker, one at a time
    (so that each run takes its own scripted replies)."""
    support_agent(registry)
    services = default_services(config_for(sim))
    done = []
    async with running_worker(client, registry, services=services):
        for tenant, name, arguments in CONVERSATIONS:
            sim.script("oa", Reply(tool_calls=(Call(name=name, arguments=arguments),)))
            sim.script("oa", Reply(text="done"))
            run = await client.start("support", f"please {name}", tenant=tenant)
            done.append(await client.wait(run.id, timeout=20))
    assert [r.state for r in done] == [RunState.COMPLETED] * len(CONVERSATIONS)
    yield done


async def test_replay_decides_every_recorded_call_with_the_new_rules(
    client: Client, registry: Registry, kernos_sim: SimServer, tmp_path: Path
) -> None:
    rules = load_policy(write(tmp_path / "kernos.toml", REPLAY_RULES), env={})
    assert rules is not None
    start = time.time() - 60
    async with history(client, registry, kernos_sim) as runs:
        report = await replay_policy(client, rules, since=start)
        nothing = await replay_policy(client, rules, since=time.time() + 60)
    assert (report.runs, report.tool_calls, report.llm_calls) == (4, 4, 8)
    assert [(t.rule, t.effect, t.calls) for t in report.tally] == [
        ("no-deletes", "deny", 1),
        ("big-refunds", "require_approval", 1),
        ("acme-models", "deny", 0),
        (None, "allow", 10),
    ]
    flagged = [
        (f.call.run_id, f.call.subject.tool, dict(f.call.subject.args)) for f in report.flagged
    ]
    assert flagged == [
        (runs[1].id, "issue_refund", {"order_id": "A-2", "amount": 500}),
        (runs[3].id, "delete_account", {"account_id": 7}),  # it failed: still a call asked for
    ]
    assert report.flagged[1].decision.reason == "deleting accounts needs a person"
    assert (nothing.runs, nothing.tool_calls, nothing.flagged) == (0, 0, ())


async def test_recorded_calls_are_the_subjects_the_policy_would_have_seen(
    client: Client, registry: Registry, kernos_sim: SimServer
) -> None:
    async with history(client, registry, kernos_sim) as runs:
        events = await client.journal(runs[1].id)
    calls = list(recorded_calls(runs[1], events))
    who = runs[1].principal  # who started the run (the OS user here)
    assert who is not None and who.startswith("user:")
    assert [c.subject for c in calls] == [
        Subject.for_llm(OA, agent="support", tenant="acme", principal=who),
        Subject.for_tool(
            "issue_refund",
            {"order_id": "A-2", "amount": 500},
            agent="support",
            tenant="acme",
            principal=who,
        ),
        Subject.for_llm(OA, agent="support", tenant="acme", principal=who),
    ]
    assert all(c.run_id == runs[1].id for c in calls)
    assert [c.seq for c in calls] == sorted(c.seq for c in calls)


def test_decisions_are_frozen_values() -> None:
    decision = Decision("deny", "r", "why")
    with pytest.raises(AttributeError):
        decision.effect = "allow"  # type: ignore[misc]
