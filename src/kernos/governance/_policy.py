"""Access policy: declarative rules that allow, deny or require approval for each tool and LLM
call, decided before the call is made (guarantee 6).

Rules live in ``kernos.toml``, or in a file that it names::

    [policy]
    default = "allow"                  # the effect when no rule matches (allow, deny, require_approval)
    # file = "policy.toml"             # or: the rules (and default) are in this file, whose
                                       # top level holds `default` and [[rules]] tables

    [[policy.rules]]
    name = "no-deletes"                # unique: decisions, the journal and the audit name it
    priority = 100                     # higher first; equal priorities keep the file's order
    when = 'kind == "tool" && tool.startsWith("delete_")'
    effect = "deny"
    reason = "deleting accounts needs a person"   # optional: shown to the model and in the audit

``when`` is a CEL expression over ``kind`` (``"tool"`` or ``"llm"``), ``principal`` (who started
the run, or null), ``tenant``, ``agent``, ``tool`` (null for an LLM call), ``model`` (the route as
the agent named it, or null for a tool call), ``args`` (the tool's arguments; ``{}`` for an LLM
call) and ``params`` (an LLM call's options such as ``max_tokens``; ``{}`` for a tool call). The
first matching rule in priority order decides.

**Failing closed.** An expression that cannot be evaluated for a call (a missing key, a type
error, a method called on null) counts as *matching* when its rule denies or requires approval,
and as *not matching* when it allows: an error never lets through a call that a working rule
would have stopped, and never silently allows. Such a decision names the rule and carries the
error in its reason and ``errors``, so the journal and the audit show it; ``kernos policy check``
warns about rules that fail for every LLM call (usually a missing ``kind == "tool" &&``).

Everything is checked at load, where a mistake is cheap: unknown keys and effects, a missing
``when``, duplicate names, CEL syntax (with line and column), unknown variables and functions.
One ``ConfigError`` names the file, the rule and what is wrong, one line per problem.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

from kernos.errors import ConfigError, InvalidInput
from kernos.gateway import find_config_file, problem_reason, read_config_file

from ._cel import (
    KINDS,
    MAPS,
    Expression,
    ExpressionError,
    binding,
    compile_expression,
    describe_error,
)
from ._cel import null_hint as _null_hint

Effect = Literal["allow", "deny", "require_approval"]
Kind = Literal["tool", "llm"]

EFFECTS: Final[tuple[Effect, ...]] = ("allow", "deny", "require_approval")

#: the bucket key of a tool that no rule names
_OTHER_TOOL: Final = "\x00other"


@dataclass(frozen=True, slots=True, kw_only=True)
class Subject:
    """What a decision is about: one tool call or one LLM call, as the kernel is about to make
    it. ``args`` and ``params`` are read, never changed; their values are JSON of whatever
    shape a tool's schema or a model's options allow, hence ``Any``."""

    kind: Kind
    agent: str
    tenant: str = "default"
    #: who started the run (an API key's or a person's name); None when not known
    principal: str | None = None
    #: the tool's name; None for an LLM call
    tool: str | None = None
    #: the route or provider:model the agent asked for; None for a tool call
    model: str | None = None
    #: the tool's arguments; empty for an LLM call
    args: Mapping[str, Any] = field(default_factory=dict)
    #: the LLM call's options (max_tokens, temperature, ...); empty for a tool call
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind == "tool" and not self.tool:
            raise InvalidInput("a policy subject of kind 'tool' needs the tool's name")
        if self.kind == "llm" and self.tool is not None:
            raise InvalidInput("a policy subject of kind 'llm' has no tool (tool=None)")
        if self.kind not in KINDS:
            raise InvalidInput(f"a policy subject's kind is 'tool' or 'llm', not {self.kind!r}")

    @classmethod
    def for_tool(
        cls,
        tool: str,
        args: Mapping[str, Any],
        *,
        agent: str,
        tenant: str = "default",
        principal: str | None = None,
    ) -> Subject:
        """The subject of a call of ``tool`` with ``args``."""
        return cls(
            kind="tool", tool=tool, args=args, agent=agent, tenant=tenant, principal=principal
        )

    @classmethod
    def for_llm(
        cls,
        model: str,
        *,
        agent: str,
        tenant: str = "default",
        principal: str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> Subject:
        """The subject of an LLM call on ``model`` (a route, or provider:model)."""
        return cls(
            kind="llm",
            model=model,
            params=params or {},
            agent=agent,
            tenant=tenant,
            principal=principal,
        )

    def values(self) -> dict[str, Any]:
        """The CEL variables of this call, by name (JSON values)."""
        return {
            "kind": self.kind,
            "principal": self.principal,
            "tenant": self.tenant,
            "agent": self.agent,
            "tool": self.tool,
            "model": self.model,
            "args": self.args,
            "params": self.params,
        }


@dataclass(frozen=True, slots=True)
class Decision:
    """What the policy decided for one call, and why.

    ``rule`` is the deciding rule's name, or None when no rule matched and the default
    applied. ``reason`` is worded for the model and the audit. ``errors`` lists the rules that
    could not be evaluated on the way, and ``failed_closed`` says the deciding rule was one of
    them (see "failing closed" above). ``policy`` is the digest of the rule set that decided, so
    that an audit can tell two versions of a file apart.
    """

    effect: Effect
    rule: str | None
    reason: str
    errors: tuple[str, ...] = ()
    policy: str = ""
    failed_closed: bool = False

    @property
    def allowed(self) -> bool:
        return self.effect == "allow"

    def payload(self) -> dict[str, Any]:
        """The decision as a journal event's JSON payload (``Event.payload``'s type)."""
        data: dict[str, Any] = {
            "effect": self.effect,
            "rule": self.rule,
            "reason": self.reason,
            "policy": self.policy,
        }
        if self.errors:
            data["errors"] = list(self.errors)
        if self.failed_closed:
            data["failed_closed"] = True
        return data


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """One rule as written: see the module's docstring for what each field means."""

    name: str
    when: str
    effect: Effect
    priority: int = 0
    reason: str | None = None


@dataclass(frozen=True, slots=True, eq=False)
class _Compiled:
    rule: Rule
    expression: Expression
    #: the decision when the rule matches (made once: decide() returns it as it is)
    matched: Decision


@dataclass(frozen=True, slots=True, eq=False)
class _Bucket:
    """The rules that can match calls of one kind and tool, in decision order."""

    rules: tuple[_Compiled, ...]
    #: the variables they read: a call's context holds only these...
    variables: frozenset[str]
    #: ...and of these maps (args, params) only these keys, when no rule reads more of them
    projections: tuple[tuple[str, frozenset[str]], ...]


class Policy:
    """A compiled rule set: :meth:`decide` one call at a time, from any thread.

    Build it with :func:`load_policy` from kernos.toml, or directly from :class:`Rule` objects.
    Expressions are compiled once, here; a problem raises ``ConfigError`` listing every rule
    that has one. ``source`` names where the rules came from in messages, and ``location`` how
    the list of rules is called there (``policy.rules`` in kernos.toml).
    """

    def __init__(
        self,
        rules: Sequence[Rule],
        *,
        default: Effect = "allow",
        source: str = "<rules>",
        location: str = "rules",
    ) -> None:
        if default not in EFFECTS:
            raise ConfigError(
                f"{source}: default: must be 'allow', 'deny' or 'require_approval', got {default!r}"
            )
        self.source = source
        self.default: Effect = default
        self.digest = _digest(rules, default)
        compiled, problems = _compile(list(enumerate(rules)), source, location, self.digest)
        if problems:
            raise _config_error(problems)
        #: the rules in decision order: priority, highest first, then the file's order
        self.rules: tuple[Rule, ...] = tuple(c.rule for c in compiled)
        self._default_decision = Decision(
            default, None, _default_reason(default), policy=self.digest
        )
        self._buckets = _index(compiled)
        self._binding = binding()
        self.warnings: tuple[str, ...] = tuple(self._lint(compiled))

    def __repr__(self) -> str:
        return f"<Policy {self.source} {len(self.rules)} rule(s) default={self.default}>"

    def decide(self, subject: Subject) -> Decision:
        """The first matching rule's decision, or the default's. Never raises for what a rule
        does with the call (see "failing closed" in the module docstring)."""
        bucket = self._buckets.get((subject.kind, subject.tool))
        if bucket is None:
            bucket = self._buckets[(subject.kind, _OTHER_TOOL)]
        if not bucket.rules:
            return self._default_decision
        values = subject.values()
        context: Any = None
        failure = ""
        try:
            given = {name: values[name] for name in bucket.variables}
            for name, keys in bucket.projections:
                whole = given[name]
                given[name] = {key: whole[key] for key in keys if key in whole}
            context = self._binding.Context(given)
        except Exception as exc:  # the binding raises ValueError, TypeError, ... for a value
            failure = f"the call's values cannot be given to CEL: {describe_error(exc)}"
        errors: list[str] = []
        for compiled in bucket.rules:
            error = failure
            if not error:
                try:
                    result = compiled.expression.program.execute(context)
                except Exception as exc:  # each evaluation error is data: see failing closed
                    error = describe_error(exc) + _null_hint(compiled.expression, values)
                else:
                    if result is True:
                        return _with_errors(compiled.matched, errors)
                    if result is False:
                        continue
                    error = f"when must be true or false, but it gave {_show(result)}"
            errors.append(f"rule {compiled.rule.name!r}: {error}")
            if compiled.rule.effect != "allow":
                return _failed_closed(compiled, error, errors, self.digest)
        return _with_errors(self._default_decision, errors)

    def _lint(self, compiled: Sequence[_Compiled]) -> list[str]:
        """Rules that fail for every LLM call: each such call they deny (or hold for approval)."""
        probe = Subject.for_llm("any-route", agent="any-agent")
        values = probe.values()
        context = self._binding.Context(values)
        warnings = []
        for c in compiled:
            if not c.expression.guard.admits("llm", None):
                continue
            try:
                result = c.expression.program.execute(context)
            except Exception as exc:  # the same evaluation decide() does, on a sample call
                problem = describe_error(exc) + _null_hint(c.expression, values)
            else:
                if isinstance(result, bool):
                    continue
                problem = f"when gives {_show(result)}, not true or false"
            consequence = {
                "allow": "never matches one, so it never allows one",
                "deny": "counts as matching, so it denies every one",
                "require_approval": "counts as matching, so it holds every one for approval",
            }[c.rule.effect]
            warnings.append(
                f"rule {c.rule.name!r} fails for every LLM call ({problem}): it {consequence}. "
                f'If it is about tools, start it with kind == "tool" &&'
            )
        return warnings


def _with_errors(decision: Decision, errors: list[str]) -> Decision:
    if not errors:
        return decision
    return Decision(decision.effect, decision.rule, decision.reason, tuple(errors), decision.policy)


def _failed_closed(compiled: _Compiled, error: str, errors: list[str], digest: str) -> Decision:
    rule = compiled.rule
    outcome = "denied" if rule.effect == "deny" else "held for a person's approval"
    reason = (
        f"policy rule {rule.name!r} could not be evaluated ({error}); a rule that fails counts "
        f"as matching when it denies or requires approval, so this call is {outcome}"
    )
    return Decision(rule.effect, rule.name, reason, tuple(errors), digest, failed_closed=True)


def _default_reason(default: Effect) -> str:
    what = {
        "allow": "allow the call",
        "deny": "deny the call",
        "require_approval": "ask a person to approve the call",
    }[default]
    return f"no policy rule matched; the default is to {what}"


def _matched_reason(rule: Rule) -> str:
    if rule.reason:
        return rule.reason
    what = {
        "allow": "allows this call",
        "deny": "denies this call",
        "require_approval": "requires a person's approval for this call",
    }[rule.effect]
    return f"policy rule {rule.name!r} {what}"


def _show(value: object) -> str:
    text = json.dumps(value, default=repr) if not isinstance(value, str) else repr(value)
    return f"{type(value).__name__} {text[:60]}"


def _digest(rules: Sequence[Rule], default: Effect) -> str:
    """A short hash of what decides: the rules as written and the default."""
    data = {
        "default": default,
        "rules": [[r.name, r.priority, r.when, r.effect, r.reason] for r in rules],
    }
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


#: a problem with a rule set: the index of the rule it is about (-1: the set), and the message
_Problem = tuple[int, str]


def _compile(
    rules: Sequence[tuple[int, Rule]], source: str, location: str, digest: str
) -> tuple[list[_Compiled], list[_Problem]]:
    """The rules (with their places in the file) compiled, in decision order, and every
    problem found."""
    problems: list[_Problem] = []
    compiled: list[tuple[int, _Compiled]] = []
    first: dict[str, int] = {}
    for index, rule in rules:
        where = f"{source}: {_where(location, index, rule.name)}"
        if rule.name in first:
            problems.append(
                (
                    index,
                    f"{where}.name: duplicate rule name; {location}[{first[rule.name]}] has it "
                    f"too (decisions, the journal and the audit name rules: each needs its own)",
                )
            )
        first.setdefault(rule.name, index)
        if rule.effect not in EFFECTS:
            problems.append(
                (
                    index,
                    f"{where}.effect: must be 'allow', 'deny' or 'require_approval', got "
                    f"{rule.effect!r}",
                )
            )
            continue
        try:
            expression = compile_expression(rule.when)
        except ExpressionError as exc:
            problems.append((index, f"{where}.when: {exc}"))
            continue
        matched = Decision(rule.effect, rule.name, _matched_reason(rule), policy=digest)
        compiled.append((index, _Compiled(rule, expression, matched)))
    compiled.sort(key=lambda item: (-item[1].rule.priority, item[0]))
    return [c for _, c in compiled], problems


def _config_error(problems: list[_Problem]) -> ConfigError:
    """One error listing every problem, one line each (as a compiler does), rule by rule."""
    return ConfigError("\n".join(text for _, text in sorted(problems, key=lambda p: p[0])))


def _where(location: str, index: int, name: object) -> str:
    """``policy.rules[2] ("no-deletes")``: a rule by its place and, when it has one, its name."""
    label = f" ({json.dumps(name)})" if isinstance(name, str) and name else ""
    return f"{location}[{index}]{label}"


def _projections(
    rules: Sequence[_Compiled], variables: frozenset[str]
) -> tuple[tuple[str, frozenset[str]], ...]:
    """The maps the rules read only key by key, with the keys: a call's 50 KB of arguments
    costs milliseconds to convert for CEL, the two keys a rule looks at microseconds. A rule
    sees exactly what it would see in the whole map (a key that is absent stays absent)."""
    projections = []
    for name in MAPS:
        keys = [c.expression.keys[name] for c in rules]
        if name in variables and all(k is not None for k in keys):
            projections.append((name, frozenset().union(*(k for k in keys if k is not None))))
    return tuple(projections)


def _index(compiled: Sequence[_Compiled]) -> dict[tuple[str, str | None], _Bucket]:
    """The candidate rules for every kind of call, by the tool names rules' guards mention; a
    tool no guard mentions gets the rules without a tool guard."""
    tools: set[str | None] = {None, _OTHER_TOOL}
    for c in compiled:
        tools |= c.expression.guard.tools or set()
    buckets = {}
    for kind in KINDS:
        for tool in tools:
            if (kind == "llm") != (tool is None):
                continue
            named = None if tool == _OTHER_TOOL else tool
            rules = tuple(
                c
                for c in compiled
                if c.expression.guard.admits(kind, named)
                and (tool != _OTHER_TOOL or c.expression.guard.tools is None)
            )
            variables = frozenset().union(*(c.expression.variables for c in rules))
            buckets[(kind, tool)] = _Bucket(rules, variables, _projections(rules, variables))
    return buckets


# -- loading from kernos.toml -----------------------------------------------------------------


class _RuleTable(BaseModel):
    """A ``[[policy.rules]]`` table as written; strict: TOML has real types."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    name: str = Field(min_length=1)
    when: str
    effect: Effect
    priority: int = 0
    reason: str | None = None


_POLICY_KEYS: Final = ("default", "rules", "file")


def load_policy(
    path: str | Path | None = None, env: Mapping[str, str] = os.environ
) -> Policy | None:
    """The policy of ``path``, else of the file ``KERNOS_CONFIG`` names, else of
    ``./kernos.toml``; None when that file has no ``[policy]`` (or there is no file).

    ``path`` may also name a policy file itself (``default`` and ``[[rules]]`` at its top
    level), as ``kernos policy check FILE`` does. A ``[policy] file = "..."`` is read relative
    to kernos.toml's directory. Every problem raises ``ConfigError`` naming the file, the rule
    and what is wrong.
    """
    file = find_config_file(path, env)
    if file is None:
        return None
    data = read_config_file(file)
    if "policy" in data:
        table = data["policy"]
        if not isinstance(table, Mapping):
            raise ConfigError(f"{file}: policy: must be a table ([policy]), got {_kind(table)}")
        return _from_config(file, dict(table))
    if "rules" in data or "default" in data:
        return _from_table(file, data, location="")
    return None


def _from_config(file: Path, table: dict[str, Any]) -> Policy:
    """``[policy]`` of kernos.toml: the rules themselves, or a reference to a policy file."""
    reference = table.get("file")
    if reference is None:
        return _from_table(file, table, location="policy")
    if not isinstance(reference, str) or not reference:
        raise ConfigError(f"{file}: policy.file: must be a path, got {_kind(reference)}")
    others = sorted(set(table) - {"file"})
    if others:
        raise ConfigError(
            f"{file}: policy: with file = {json.dumps(reference)} the rules and the default "
            f"live in that file; move {', '.join(others)} there"
        )
    referenced = Path(reference)
    if not referenced.is_absolute():
        referenced = file.parent / referenced
    if not referenced.exists():
        raise ConfigError(
            f"{file}: policy.file: no such file {referenced} (a relative path is read from "
            f"the directory of {file.name})"
        )
    data = read_config_file(referenced)
    if "policy" in data:
        raise ConfigError(
            f"{referenced}: policy: a policy file holds `default` and [[rules]] tables at its "
            f"top level, not under [policy] (it is named by {file}'s [policy] file)"
        )
    return _from_table(referenced, data, location="")


def _from_table(file: Path, table: Mapping[str, Any], *, location: str) -> Policy:
    """A policy table (``[policy]``, or a policy file's top level) validated and compiled."""
    prefix = f"{location}." if location else ""
    problems: list[_Problem] = [
        (-1, f"{file}: {prefix}{key}: {_unknown_key(key, _POLICY_KEYS)}")
        for key in table
        if key not in _POLICY_KEYS
    ]
    default = table.get("default", "allow")
    if default not in EFFECTS:
        problems.append(
            (
                -1,
                f"{file}: {prefix}default: must be 'allow', 'deny' or 'require_approval', got "
                f"{_kind(default)}",
            )
        )
    raw_rules = table.get("rules", [])
    rules_at = f"{prefix}rules"
    if not isinstance(raw_rules, list):
        problems.append(
            (
                -1,
                f"{file}: {rules_at}: must be a list of [[{rules_at}]] tables, got {_kind(raw_rules)}",
            )
        )
        raw_rules = []
    rules: list[tuple[int, Rule]] = []
    for index, raw in enumerate(raw_rules):
        where = f"{file}: {_where(rules_at, index, _name_of(raw))}"
        rule, found = _rule(raw, where)
        problems += [(index, text) for text in found]
        if rule is not None:
            rules.append((index, rule))
        elif isinstance(raw, Mapping) and isinstance(raw.get("when"), str):
            problems += [(index, f"{where}.when: {text}") for text in _when_problems(raw["when"])]
    if problems:  # with what compiling the others finds: every problem at once
        problems += _compile(rules, str(file), rules_at, "")[1]
        raise _config_error(problems)
    return Policy([r for _, r in rules], default=default, source=str(file), location=rules_at)


def _when_problems(when: str) -> list[str]:
    """What is wrong with a ``when``, for a rule that has other problems too."""
    try:
        compile_expression(when)
    except ExpressionError as exc:
        return [str(exc)]
    return []


def _rule(raw: object, where: str) -> tuple[Rule | None, list[str]]:
    if not isinstance(raw, Mapping):
        return None, [f"{where}: must be a table with name, when and effect, got {_kind(raw)}"]
    try:
        table = _RuleTable.model_validate(raw)
    except ValidationError as exc:
        return None, [_rule_problem(where, error) for error in exc.errors()]
    if not table.name.strip():
        return None, [f"{where}.name: must not be blank"]
    rule = Rule(
        name=table.name,
        when=table.when,
        effect=table.effect,
        priority=table.priority,
        reason=table.reason,
    )
    return rule, []


def _rule_problem(where: str, error: ErrorDetails) -> str:
    loc = error["loc"]
    key = str(loc[0]) if loc else ""
    if error["type"] == "extra_forbidden":
        reason = _unknown_key(key, tuple(_RuleTable.model_fields))
    elif error["type"] == "string_too_short":
        reason = "must not be empty"
    elif error["type"] == "missing" and key == "when":
        reason = "is required: the CEL condition of the rule, e.g. when = 'kind == \"tool\"'"
    else:
        reason = problem_reason(error, loc)
    return f"{where}.{key}: {reason}" if key else f"{where}: {reason}"


def _unknown_key(key: str, allowed: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    if close:
        return f"unknown key (did you mean {close[0]!r}?)"
    return f"unknown key (the keys here are: {', '.join(allowed)})"


def _name_of(raw: object) -> object:
    return raw.get("name") if isinstance(raw, Mapping) else None


def _kind(value: object) -> str:
    """A value as the user wrote it in TOML, short."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return repr(value)
