"""CEL for policy rules: compile once, check what an expression refers to, find its guards.

Expressions are compiled and evaluated by the ``cel`` crate (Rust) through the
``common-expression-language`` binding: the fastest faithful CEL we measured from Python
(about 0.5 µs per rule evaluated, plus about 10 µs to convert a call's variables; see
``benchmarks/governance.py``). This module adds what a policy needs on top:

- **Checks at load.** The binding has no type checker, so a misspelt variable or a function it
  lacks would only show at the first call it decides. :func:`compile_expression` rejects both,
  with the position of a syntax error and the names that are known.
- **Guards.** A rule written ``kind == "tool" && tool == "send_money" && ...`` is false for
  every other call whatever the rest says: in CEL, ``false && x`` is false even when ``x`` is an
  error. :class:`Guard` holds what such top-level conjuncts require, so a policy evaluates only
  the rules that can match a call. This is exact, never a heuristic: a conjunct is a guard only
  when it has one of the few shapes :func:`guard_of` recognises, and anything else is evaluated.
- **Keys read.** Converting a call's arguments for CEL costs about 3 µs per nested map, so 50 KB
  of them cost milliseconds. An expression that reads ``args`` only as ``args.key`` or
  ``args["key"]`` sees exactly the same through a map of just those keys (an absent key stays
  absent): :attr:`Expression.keys` lists them, and the policy converts no more.

Deviations of the ``cel`` crate from the CEL specification that a policy author may meet (all
found by trying them): ``size()`` of a string counts UTF-8 bytes, not code points; an integer
beyond 64 bits in the arguments becomes a double; the extension libraries of cel-go (strings
such as ``lowerAscii``, math, sets, lists, optional) and two-variable comprehensions are not
available (``matches("(?i)...")`` does case-insensitive matching). Everything else that a rule
is likely to use, including heterogeneous numeric comparison (``args.amount > 100.5`` on an
int), ``in`` on lists and maps, ``has()``, the macros and error absorption by ``&&``/``||``,
behaves as the specification says.
"""

from __future__ import annotations

import difflib
import importlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import cel

#: the variables a rule's ``when`` may use (DESIGN.md: principal, tenant, agent, tool, model and
#: arguments; ``kind`` tells a tool call from an LLM call, ``params`` holds an LLM call's options)
VARIABLES: Final = ("kind", "principal", "tenant", "agent", "tool", "model", "args", "params")

#: the variables that are maps of the call's own data, converted for CEL only as far as read
MAPS: Final = ("args", "params")

#: what ``kind`` may be: a tool call or an LLM call
KINDS: Final = ("tool", "llm")

#: named functions of the ``cel`` crate's standard library (operators are checked by the parser)
FUNCTIONS: Final = frozenset(
    {
        "size",
        "contains",
        "startsWith",
        "endsWith",
        "matches",
        "int",
        "uint",
        "double",
        "string",
        "bytes",
        "timestamp",
        "duration",
        "dyn",
        "type",
        "getFullYear",
        "getMonth",
        "getDayOfYear",
        "getDayOfMonth",
        "getDate",
        "getDayOfWeek",
        "getHours",
        "getMinutes",
        "getSeconds",
        "getMilliseconds",
    }
)

#: macros whose first argument binds a variable (``args.items.all(x, x > 0)``)
_COMPREHENSIONS: Final = frozenset({"all", "exists", "exists_one", "map", "filter"})
#: type names an expression may compare ``type(x)`` with
_TYPE_NAMES: Final = frozenset(
    {"bool", "int", "uint", "double", "string", "bytes", "list", "map", "null_type", "type"}
)
_POSITION = re.compile(r"<input>:(\d+):(\d+): (?:Syntax error: )?(.*)")
_INNER_MESSAGE = re.compile(r'msg: "([^"]*)"')
_UNDEFINED = re.compile(r"Undefined variable or function: '([^']*)'")


def binding() -> ModuleType:
    """The ``cel`` module, imported on first use: importing it loads the binding's own command
    line (typer, rich, prompt_toolkit, ~0.1 s), which only a process that compiles rules should
    pay for."""
    return importlib.import_module("cel")


class ExpressionError(Exception):
    """What is wrong with an expression, worded for the person who wrote it; the message may
    have more lines: the source line and a caret under the position."""


@dataclass(frozen=True, slots=True)
class Guard:
    """What a call must be for an expression to possibly be true; ``None`` requires nothing.

    ``kinds`` and ``tools`` come from top-level conjuncts ``kind == "..."``, ``tool == "..."``
    and ``tool in ["...", ...]`` (either side of ``==``). An LLM call's ``tool`` is null, which
    equals no string, so a ``tools`` guard also excludes every LLM call.
    """

    kinds: frozenset[str] | None = None
    tools: frozenset[str] | None = None

    def admits(self, kind: str, tool: str | None) -> bool:
        if self.kinds is not None and kind not in self.kinds:
            return False
        return self.tools is None or tool in self.tools

    def __and__(self, other: Guard) -> Guard:
        return Guard(_meet(self.kinds, other.kinds), _meet(self.tools, other.tools))


def _meet(a: frozenset[str] | None, b: frozenset[str] | None) -> frozenset[str] | None:
    if a is None:
        return b
    return a if b is None else a & b


@dataclass(frozen=True, slots=True, eq=False)
class Expression:
    """A compiled, checked CEL expression: compile once at load, evaluate per call."""

    source: str
    program: cel.Program
    #: the policy variables it reads (a call's context needs only these)
    variables: frozenset[str]
    guard: Guard
    #: for ``args`` and ``params``: the keys it reads, or None when it may read the whole map
    #: (so that a call's large arguments are converted for CEL only as far as rules look)
    keys: Mapping[str, frozenset[str] | None]


def compile_expression(source: str) -> Expression:
    """Compile ``source``; ``ExpressionError`` for a syntax error (with line, column and a
    caret), an unknown variable or an unknown function, naming what is known."""
    if not source.strip():
        raise ExpressionError('is empty: write a CEL condition, e.g. kind == "tool"')
    try:
        program = binding().compile(source)
    except ValueError as exc:
        raise ExpressionError(_syntax_error(source, str(exc))) from None
    tokens = list(_tokens(source))
    bound = _comprehension_variables(tokens)
    names = set(program.variables()) - bound
    unknown = sorted(names - set(VARIABLES) - _TYPE_NAMES)
    if unknown:
        raise ExpressionError(_unknown("variable", unknown, VARIABLES))
    missing = sorted(f for f in program.functions() if f[:1].isalpha() and f not in FUNCTIONS)
    if missing:
        raise ExpressionError(
            _unknown("function", missing, sorted(FUNCTIONS))
            + '; for a case-insensitive match use matches("(?i)...")'
        )
    _check_kinds(tokens)
    keys = {name: _keys_read(tokens, name, bound) for name in MAPS}
    return Expression(source, program, frozenset(names & set(VARIABLES)), guard_of(tokens), keys)


def _keys_read(tokens: list[_Token], name: str, bound: set[str]) -> frozenset[str] | None:
    """The keys of map variable ``name`` the expression reads, when it reads it only as
    ``name.key`` or ``name["key"]``; None when it may see more of it (``size(args)``,
    ``"k" in args``, ``args.all(...)``), which then gets the whole map."""
    if name in bound:
        return None
    keys = set()
    for i, token in enumerate(tokens):
        if token.kind != "ident" or token.text != name or (i and tokens[i - 1].text == "."):
            continue
        after = [t.text for t in tokens[i + 1 : i + 4]] + ["", "", ""]
        if after[0] == "." and tokens[i + 2].kind == "ident" and after[2] != "(":
            keys.add(after[1])
            continue
        value = _string_value(tokens[i + 2]) if after[0] == "[" and after[2] == "]" else None
        if value is None:
            return None
        keys.add(value)
    return frozenset(keys)


def _check_kinds(tokens: list[_Token]) -> None:
    """``kind == "tools"`` is valid CEL that is never true: a typo that would silently switch
    a rule off, so it is an error."""
    for i in range(len(tokens) - 2):
        a, op, b = tokens[i : i + 3]
        if op.text not in ("==", "!="):
            continue
        if b.kind == "ident":
            a, b = b, a
        if a.text != "kind" or a.kind != "ident" or (i > 0 and tokens[i - 1].text == "."):
            continue
        value = _string_value(b)
        if value is not None and value not in KINDS:
            raise ExpressionError(
                f'kind is "tool" or "llm", never {value!r}: compare it with one of those'
            )


def _unknown(what: str, names: list[str], known: tuple[str, ...] | list[str]) -> str:
    parts = []
    for name in names:
        close = difflib.get_close_matches(name, known, n=1)
        parts.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    plural = "s" if len(names) > 1 else ""
    return f"unknown {what}{plural} {', '.join(parts)}; the {what}s are: {', '.join(known)}"


def _syntax_error(source: str, message: str) -> str:
    """The binding's parse error as one line plus the source line with a caret under the
    position (the binding's own rendering repeats the whole source, however long)."""
    found = _POSITION.search(message)
    if found is None:
        return f"CEL syntax error: {message}"
    line, column, text = int(found[1]), int(found[2]), found[3].strip()
    inner = _INNER_MESSAGE.search(text)
    if inner is not None:  # e.g. OtherError(ParseError { ... msg: "Recursion limit ..." })
        text = inner[1]
    lines = source.splitlines() or [""]
    excerpt = lines[min(line, len(lines)) - 1]
    caret = column - 1
    if len(excerpt) > 100:  # a window around the position
        start = max(0, min(caret - 50, len(excerpt) - 100))
        excerpt, caret = excerpt[start : start + 100], caret - start
    return (
        f"CEL syntax error at line {line}, column {column}: {text}\n"
        f"    {excerpt}\n    {' ' * max(caret, 0)}^"
    )


# -- tokens ---------------------------------------------------------------------------------------
#
# Just enough of CEL's lexical grammar to find top-level operators and literals: string literals
# (all quote styles and prefixes), comments, identifiers, operators and brackets. It runs only on
# expressions the binding has parsed, and anything it does not understand yields no guard.

_TOKEN = re.compile(
    r"""
    (?P<space>\s+|//[^\n]*)
  | (?P<string>(?:[rR][bB]?|[bB][rR])(?:\"\"\".*?\"\"\"|'''.*?'''|"[^"\n]*"|'[^'\n]*')
              |[bB]?(?:\"\"\"(?:\\.|[^\\])*?\"\"\"|'''(?:\\.|[^\\])*?'''
                      |"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<number>[0-9][0-9A-Za-z_.]*(?:[eE][+-]?[0-9]+)?)
  | (?P<op>&&|\|\||==|!=|<=|>=|[-+*/%<>!?:.,()\[\]{}])
    """,
    re.VERBOSE | re.DOTALL,
)
_SIMPLE_STRING = re.compile(r"""r?(?:"([^"\\\n]*)"|'([^'\\\n]*)')""", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str
    text: str


def _tokens(source: str) -> Iterator[_Token]:
    position = 0
    while position < len(source):
        found = _TOKEN.match(source, position)
        if found is None:
            yield _Token("other", source[position])
            position += 1
            continue
        position = found.end()
        kind = found.lastgroup or "other"
        if kind != "space":
            yield _Token(kind, found.group())


def _comprehension_variables(tokens: list[_Token]) -> set[str]:
    """Names bound by ``.all(x, ...)``, ``.exists(x, ...)`` and the other macros."""
    bound = set()
    for i in range(len(tokens) - 4):
        dot, macro, paren, name, comma = tokens[i : i + 5]
        if (
            dot.text == "."
            and macro.text in _COMPREHENSIONS
            and paren.text == "("
            and name.kind == "ident"
            and comma.text == ","
        ):
            bound.add(name.text)
    return bound


def guard_of(tokens: list[_Token]) -> Guard:
    """What the top-level conjuncts of an expression require of ``kind`` and ``tool``."""
    guard = Guard()
    for conjunct in _conjuncts(tokens):
        guard = guard & _guard_of_conjunct(conjunct)
    return guard


def _conjuncts(tokens: list[_Token]) -> list[list[_Token]]:
    """The operands of a top-level ``a && b && ...``, parenthesised ones opened up; the whole
    expression as one operand when its top level has ``||`` or ``?:`` (they bind looser)."""
    while _wrapped(tokens):
        tokens = tokens[1:-1]
    parts: list[list[_Token]] = [[]]
    depth = 0
    for token in tokens:
        if token.text in ("(", "[", "{"):
            depth += 1
        elif token.text in (")", "]", "}"):
            depth -= 1
        elif depth == 0 and token.text in ("||", "?"):
            return [tokens]
        elif depth == 0 and token.text == "&&":
            parts.append([])
            continue
        parts[-1].append(token)
    if len(parts) == 1:
        return parts
    return [inner for part in parts for inner in _conjuncts(part)]


def _wrapped(tokens: list[_Token]) -> bool:
    """Whether the first token's ``(`` closes at the last token."""
    if len(tokens) < 2 or tokens[0].text != "(" or tokens[-1].text != ")":
        return False
    depth = 0
    for i, token in enumerate(tokens):
        if token.text in ("(", "[", "{"):
            depth += 1
        elif token.text in (")", "]", "}"):
            depth -= 1
            if depth == 0 and i < len(tokens) - 1:
                return False
    return True


def _guard_of_conjunct(tokens: list[_Token]) -> Guard:
    texts = [t.text for t in tokens]
    if len(tokens) == 3 and texts[1] == "==":
        left, right = tokens[0], tokens[2]
        if right.kind == "ident":
            left, right = right, left
        value = _string_value(right)
        if left.kind == "ident" and value is not None:
            if left.text == "kind":
                return Guard(kinds=frozenset({value}))
            if left.text == "tool":
                return Guard(tools=frozenset({value}))
    if len(tokens) >= 5 and texts[:3] == ["tool", "in", "["] and texts[-1] == "]":
        values = _string_list(tokens[3:-1])
        if values is not None:
            return Guard(tools=frozenset(values))
    return Guard()


def _string_list(tokens: list[_Token]) -> list[str] | None:
    """The values of ``"a", "b", ...`` (a trailing comma allowed), or None for anything else."""
    values = []
    for i, token in enumerate(tokens):
        if i % 2 == 1:
            if token.text != ",":
                return None
            continue
        value = _string_value(token)
        if value is None:
            return None
        values.append(value)
    return values


def _string_value(token: _Token) -> str | None:
    """A string literal's value when it has no escapes (and is not bytes); otherwise None."""
    if token.kind != "string":
        return None
    found = _SIMPLE_STRING.fullmatch(token.text)
    if found is None:
        return None
    return found[1] if found[1] is not None else found[2]


def describe_error(exc: Exception) -> str:
    """An evaluation error in one short sentence (the binding's messages go on with advice
    written for Python programmers)."""
    if isinstance(exc, KeyError):
        return f"no such key: {exc.args[0]!r}" if exc.args else "no such key"
    text = (str(exc).strip() or type(exc).__name__).partition(". ")[0].rstrip(".")
    undefined = _UNDEFINED.fullmatch(text)
    if undefined is not None and undefined[1] in FUNCTIONS:
        # the binding's word for a function called on a value of the wrong type (or null)
        return f"no such overload: {undefined[1]}() does not apply to this value"
    return text


def null_hint(expression: Expression, values: Mapping[str, object]) -> str:
    """`` (tool is null for this call)`` when the expression reads a variable that is null here:
    the usual cause of an error such as calling ``startsWith`` on an LLM call's tool."""
    nulls = [name for name in sorted(expression.variables) if values.get(name, 0) is None]
    if not nulls:
        return ""
    verb = "is" if len(nulls) == 1 else "are"
    return f" ({' and '.join(nulls)} {verb} null for this call)"
