"""Redaction: secrets and personal data replaced by ``[REDACTED:<kind>]`` before anything is
stored or exported (DESIGN.md, "Oversight and governance").

API keys, tokens, private keys and passwords are always redacted, for every tenant; personal
data (e-mail addresses, card numbers, phone numbers, IBANs, IPv4 addresses) and custom regexes
when the ``[redaction]`` table of ``kernos.toml`` enables them::

    [redaction]
    patterns = ["email", "card"]                 # for every tenant
    [redaction.tenants.acme]                     # replaces each key it sets, for acme
    patterns = ["email", "card", "phone"]
    custom = { employee_id = "EMP-\\\\d{6}" }

Guarantees:

- A secret is replaced by its marker and nothing of it is kept (see ``_patterns``); the text
  around it is kept, so a redacted log still reads.
- Idempotent: redacting redacted text changes nothing, and a marker is never rewritten, by the
  built-in patterns or by a custom regex that happens to match it.
- Pure: no I/O, no state, no clock; a ``Redactor`` is immutable and safe to share between
  threads and tasks.
- Cheap when there is nothing to find, which is nearly always: before any pattern runs, the
  gates (see ``_patterns``) scan the text's bytes, most of them with a single ``memchr``; a
  text they leave shut is returned as it is (``benchmarks/redaction.py`` measures it).

It is a best effort at what patterns can recognise: a secret with no recognisable shape, in a
value whose name says nothing (``{"note": "the code is hunter2"}``), is not found.
"""

from __future__ import annotations

import bisect
import difflib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails, PydanticCustomError

from kernos.errors import ConfigError
from kernos.gateway import find_config_file, problem_reason, read_config_file
from kernos.governance._patterns import (
    ALWAYS_ON_DETECTORS,
    ALWAYS_ON_PATTERNS,
    ASCII_FOLD,
    HIDING_ESCAPE_GATES,
    KIND_ALPHABET,
    MARKER_OPEN,
    MARKER_RE,
    NAME_GATES,
    OPTIONAL_DETECTORS,
    OPTIONAL_PATTERNS,
    Detector,
    Gate,
    custom_detector,
    marker,
    secret_name_kind,
)

__all__ = [
    "ALWAYS_ON_PATTERNS",
    "OPTIONAL_PATTERNS",
    "RedactionConfig",
    "Redactor",
    "TenantRedaction",
    "redactor_from_config",
]

#: redaction passes before giving up on a fixed point (each pass only shrinks the unredacted
#: text, so a handful always suffices; see Redactor.text)
_MAX_PASSES: Final = 8
_CUSTOM_NAME: Final = re.compile(KIND_ALPHABET)

# ---------------------------------------------------------------------------------------------
# Configuration


def _invalid(message: str, *path: str | int) -> PydanticCustomError:
    """A validation error worded for the person editing kernos.toml (the gateway's shape, so
    that its ``problem_reason`` words it); ``path`` continues pydantic's location."""
    return PydanticCustomError("kernos", "{message}", {"message": message, "path": path})


def _check_patterns(names: tuple[str, ...]) -> tuple[str, ...]:
    for index, name in enumerate(names):
        if name in OPTIONAL_DETECTORS:
            continue
        if name in ALWAYS_ON_PATTERNS:
            raise _invalid(
                f"{name!r} is always redacted and needs no entry; list only optional "
                f"patterns ({', '.join(OPTIONAL_PATTERNS)})",
                index,
            )
        close = difflib.get_close_matches(name, OPTIONAL_PATTERNS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise _invalid(
            f"unknown pattern {name!r} ({hint}the patterns are: {', '.join(OPTIONAL_PATTERNS)}; "
            f"for anything else add a regex under custom)",
            index,
        )
    return tuple(dict.fromkeys(names))


def _check_custom(custom: dict[str, str]) -> dict[str, str]:
    for name, source in custom.items():
        if not _CUSTOM_NAME.fullmatch(name):
            raise _invalid(
                "a custom pattern's name is written into [REDACTED:<name>], so it may use only "
                "letters, digits, '_', '.' and '-'",
                name,
            )
        if name in OPTIONAL_DETECTORS or name in ALWAYS_ON_PATTERNS:
            raise _invalid(
                f"{name!r} is the name of a built-in pattern; pick another name for this regex "
                f"(or list {name!r} under patterns if it is the built-in one you want)",
                name,
            )
        try:
            compiled = re.compile(source)
        except re.error as exc:
            raise _invalid(f"not a valid regular expression: {exc}", name) from None
        if compiled.fullmatch(""):
            raise _invalid(
                f"the regular expression {source!r} matches the empty string, so it would "
                f"redact nothing everywhere; make it require at least one character",
                name,
            )
    return custom


class _Model(BaseModel):
    # not strict, so that a TOML list becomes a tuple; pydantic's lax mode still refuses a
    # string for a list and a number for a string, which is what a typo produces
    model_config = ConfigDict(frozen=True, extra="forbid")


class TenantRedaction(_Model):
    """A ``[redaction.tenants.NAME]`` table: what one tenant redacts beyond the always-on
    secrets. Each key it sets replaces the ``[redaction]`` table's for that tenant; a key it
    leaves out is inherited."""

    #: optional patterns to enable (see OPTIONAL_PATTERNS); None: those of [redaction]
    patterns: tuple[str, ...] | None = None
    #: name -> regex, each match replaced by [REDACTED:name]; None: those of [redaction]
    custom: dict[str, str] | None = None

    @field_validator("patterns")
    @classmethod
    def _patterns(cls, names: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return None if names is None else _check_patterns(names)

    @field_validator("custom")
    @classmethod
    def _custom(cls, custom: dict[str, str] | None) -> dict[str, str] | None:
        return None if custom is None else _check_custom(custom)


class RedactionConfig(_Model):
    """The ``[redaction]`` table of ``kernos.toml``: optional patterns and custom regexes for
    every tenant, and per-tenant tables that replace them. The always-on secret patterns are
    not configurable: nothing here can turn them off."""

    #: optional patterns enabled for every tenant (see OPTIONAL_PATTERNS)
    patterns: tuple[str, ...] = ()
    #: name -> regex, for every tenant; each match is replaced by [REDACTED:name]
    custom: dict[str, str] = Field(default_factory=dict)
    #: tenant -> what it redacts instead
    tenants: dict[str, TenantRedaction] = Field(default_factory=dict)

    @field_validator("patterns")
    @classmethod
    def _patterns(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        return _check_patterns(names)

    @field_validator("custom")
    @classmethod
    def _custom(cls, custom: dict[str, str]) -> dict[str, str]:
        return _check_custom(custom)

    @classmethod
    def from_table(cls, table: object, *, source: str = "kernos.toml") -> RedactionConfig:
        """The configuration in a parsed ``[redaction]`` table, or ``ConfigError`` with one
        line per problem, each naming ``source``, the dotted key and what is wrong."""
        if not isinstance(table, Mapping):
            raise ConfigError(f"{source}: redaction: must be a table, got {type(table).__name__}")
        try:
            return cls.model_validate(table)
        except ValidationError as exc:
            problems = "\n".join(f"{source}: {_describe(error)}" for error in exc.errors())
            raise ConfigError(problems) from None


def _describe(error: ErrorDetails) -> str:
    loc = ("redaction", *error["loc"], *error.get("ctx", {}).get("path", ()))
    if error["type"] == "extra_forbidden":
        reason = _unknown_key(loc)
    else:
        reason = problem_reason(error, loc)
    return f"{_dotted(loc)}: {reason}"


def _unknown_key(loc: tuple[str | int, ...]) -> str:
    tenant = len(loc) == 4 and loc[1] == "tenants"
    allowed = ["custom", "patterns"] if tenant else ["custom", "patterns", "tenants"]
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    if close:
        return f"unknown key (did you mean {close[0]!r}?)"
    return f"unknown key (the keys here are: {', '.join(allowed)})"


def _dotted(loc: tuple[str | int, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z0-9_-]+", part):
            text += f".{part}" if text else part
        else:
            text += f'."{part}"'
    return text


def redactor_from_config(
    path: str | Path | None = None, env: Mapping[str, str] = os.environ
) -> Redactor:
    """The redactor ``kernos.toml``'s ``[redaction]`` table asks for, read from ``path``, else
    the file ``KERNOS_CONFIG`` names, else ``./kernos.toml`` (as every section of the file is
    found); the always-on secret patterns alone when there is no file or no table.

    Raises ``ConfigError`` naming the file and key when the table is wrong: an unknown pattern
    (listing the known ones), a regex that does not compile (with its error), a typo'd key.
    """
    file = find_config_file(path, env)
    if file is None:
        return Redactor()
    data = read_config_file(file)
    if "redaction" not in data:
        return Redactor()
    return Redactor(RedactionConfig.from_table(data["redaction"], source=str(file)))


# ---------------------------------------------------------------------------------------------
# The redactor


#: where a gate's word is pivoted: at its first byte in this order. Rare bytes first (a text
#: without them costs a memchr), then k, a, g and c, which most words share: fewer groups beat
#: rarer pivots (the always-on gates in 8 groups scan a clean 752-byte event in 3.7 µs on a
#: loaded machine; pivoted on each word's rarest byte, in 14 groups, in 6.3 µs)
_PIVOT_ORDER: Final = "@+=\\jxkagczqvwyb_-fpmu:/.ldhrsniote0123456789 "


def _pivot(word: str) -> int:
    """The index of the byte where ``word``'s gate starts looking (see _PIVOT_ORDER)."""

    def rank(index: int) -> int:
        position = _PIVOT_ORDER.find(word[index])
        return len(_PIVOT_ORDER) if position < 0 else position

    return min(range(len(word)), key=rank)


def _encoded(text: str) -> tuple[bytes, bytes]:
    """What gates scan: the text's UTF-8, and the same with ASCII letters lowered, and only
    those (``str.lower`` would turn a Kelvin sign into ``k``, which no pattern matches)."""
    raw = text.encode("utf-8", "surrogatepass")
    return raw, raw.lower()


class _GateSet:
    """Gates compiled for speed: one regex per pivot byte, searched only when that byte occurs
    (``bytes.__contains__`` finds it with one ``memchr``).

    Python's ``re`` has no multi-pattern search: an alternation of twenty words costs about as
    much as twenty searches, and a pattern that starts with a character class tests every byte.
    A pattern that starts with a literal byte is fast, so each gate is rewritten to start at a
    pivot byte of its word (see _PIVOT_ORDER) and to check the bytes before it with a lookbehind;
    gates that share the
    pivot share one regex, and those that share what follows the pivot share a branch:
    ``k(?:en(?<=token)|ey(?:(?<=api_key)|(?<=secret_key)))`` for ``token``, ``api_key`` and
    ``secret_key`` (each then followed by what says a value is assigned to it).
    """

    __slots__ = ("bare", "grouped")

    grouped: tuple[tuple[bytes, re.Pattern[bytes]], ...]
    bare: tuple[tuple[re.Pattern[bytes], bool], ...]

    def __init__(self, gates: tuple[Gate, ...]) -> None:
        # pivot -> (after the pivot, follow) -> the words' bytes up to and including the pivot
        tree: dict[str, dict[tuple[str, str], set[str]]] = {}
        bare: dict[tuple[str, bool], None] = {}
        for gate in gates:
            if not gate.word:
                bare[gate.follow, gate.case_sensitive] = None
                continue
            index = _pivot(gate.word)
            branches = tree.setdefault(gate.word[index], {})
            branches.setdefault((gate.word[index + 1 :], gate.follow), set()).add(
                gate.word[: index + 1]
            )
        grouped = []
        for pivot in sorted(tree, key=_PIVOT_ORDER.find):
            alternatives = []
            for (after, follow), heads in sorted(tree[pivot].items()):
                # the bytes after the pivot first: re skips an alternative whose first literal
                # does not match at once, but must run a lookbehind to know it fails
                behind = ""
                if all(len(head) > 1 for head in heads):  # else one word starts at the pivot
                    words = sorted(head + after for head in heads)
                    behind = "|".join(f"(?<={re.escape(word)})" for word in words)
                    behind = f"(?:{behind})" if len(words) > 1 else behind
                follow = f"(?:{follow})" if "|" in follow else follow
                alternatives.append(f"{re.escape(after)}{behind}{follow}")
            source = f"{re.escape(pivot)}(?:{'|'.join(alternatives)})"
            grouped.append((pivot.encode(), re.compile(source.encode())))
        self.grouped = tuple(grouped)
        self.bare = tuple((re.compile(follow.encode()), cs) for follow, cs in bare)

    def search(self, raw: bytes, lowered: bytes) -> bool:
        """Whether any gate matches: ``raw`` is the text's UTF-8, ``lowered`` the same with
        ASCII letters lowered (see :func:`_encoded`)."""
        for pivot, regex in self.grouped:
            if pivot in lowered and regex.search(lowered):
                return True
        return any(regex.search(raw if cs else lowered) for regex, cs in self.bare)

    def opened(self, raw: bytes, lowered: bytes) -> _GateSet | None:
        """The gates of this set that match (None when none does). What opens in a part of
        the text opened in the whole, so these are all a part needs to be checked against."""
        grouped = tuple(
            (pivot, regex)
            for pivot, regex in self.grouped
            if pivot in lowered and regex.search(lowered)
        )
        bare = tuple((regex, cs) for regex, cs in self.bare if regex.search(raw if cs else lowered))
        if not grouped and not bare:
            return None
        subset = object.__new__(_GateSet)
        subset.grouped, subset.bare = grouped, bare
        return subset


class _Rules:
    """One tenant's detectors, in the order they run, and the gates that skip them."""

    __slots__ = (
        "detector_gates",
        "detectors",
        "hiding_gates",
        "json_gates",
        "kinds",
        "text_gates",
        "ungated",
    )

    def __init__(self, detectors: tuple[Detector, ...], kinds: tuple[str, ...]) -> None:
        self.detectors = detectors
        self.kinds = kinds
        self.detector_gates = tuple(
            None if d.gates is None else _GateSet(d.gates) for d in detectors
        )
        gates = tuple(gate for d in detectors for gate in d.gates or ())
        self.ungated = any(d.gates is None for d in detectors)
        self.text_gates = _GateSet(gates)
        # JSON also has the values of secret-named keys redacted, and escapes that can hide a
        # gate's word from a scan of the text
        self.json_gates = _GateSet((*gates, *NAME_GATES))
        self.hiding_gates = _GateSet(HIDING_ESCAPE_GATES)

    def open_json(self, text: str) -> _GateSet | None:
        """The gates that open on JSON text, and so the only ones its strings can open (None:
        none can); all of them when an escape could hide what opens a gate."""
        raw, lowered = _encoded(text)
        if self.hiding_gates.search(raw, lowered):
            return self.json_gates
        return self.json_gates.opened(raw, lowered)

    @classmethod
    def build(cls, patterns: tuple[str, ...], custom: Mapping[str, str]) -> _Rules:
        detectors = (
            *ALWAYS_ON_DETECTORS,
            *(OPTIONAL_DETECTORS[name] for name in patterns),
            *(custom_detector(name, re.compile(source)) for name, source in custom.items()),
        )
        return cls(detectors, (*ALWAYS_ON_PATTERNS, *patterns, *custom))


class Redactor:
    """Replaces secrets and personal data by ``[REDACTED:<kind>]`` in text and JSON.

    ``Redactor()`` redacts the always-on secrets only; ``Redactor(config)`` adds the optional
    and custom patterns that ``config`` enables for every tenant, and :meth:`for_tenant` gives
    the redactor of one tenant. Build one at start (see :func:`redactor_from_config`) and pass
    it down: construction compiles every pattern. When there is nothing to redact, the very
    object passed in is returned.
    """

    __slots__ = ("_default", "_rules", "_tenants")

    _rules: _Rules
    _tenants: Mapping[str, Redactor]
    _default: Redactor

    def __init__(self, config: RedactionConfig | None = None) -> None:
        config = config or RedactionConfig()
        self._rules = _Rules.build(config.patterns, config.custom)
        self._default = self
        tenants: dict[str, Redactor] = {}
        for name, table in config.tenants.items():
            rules = _Rules.build(
                config.patterns if table.patterns is None else table.patterns,
                config.custom if table.custom is None else table.custom,
            )
            tenants[name] = self._sibling(rules)
        self._tenants = tenants
        for tenant in tenants.values():
            tenant._tenants = tenants

    def _sibling(self, rules: _Rules) -> Redactor:
        other = object.__new__(Redactor)
        other._rules = rules
        other._default = self
        other._tenants = {}
        return other

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kinds this redactor may write into markers: the always-on ones, then this
        tenant's optional patterns and custom regexes."""
        return self._rules.kinds

    def for_tenant(self, tenant: str | None) -> Redactor:
        """The redactor of ``tenant``: the always-on secrets plus what its
        ``[redaction.tenants.NAME]`` table enables, or the ``[redaction]`` table's patterns for a
        tenant without one (and for ``None``)."""
        if tenant is None:
            return self._default
        return self._tenants.get(tenant, self._default)

    def text(self, s: str) -> str:
        """``s`` with every secret this redactor knows replaced by its marker; ``s`` itself when
        there is none.

        Detectors run one after the other, and again until a pass changes nothing, so that the
        result is a fixed point: redacting it again returns it unchanged (a marker can make a
        neighbour recognisable, ``10.0.0.1sk-...`` once the address is gone). Each pass only
        replaces text outside markers, so this ends after a few passes.
        """
        if self._rules.text_gates.search(*_encoded(s)):
            result = _redact(self._rules, s)
            return s if result == s else result
        return self._ungated_text(s)

    def _ungated_text(self, s: str) -> str:
        """``text`` for a string no gate opens: only the detectors without one can match it."""
        rules = self._rules
        if not rules.ungated:
            return s
        result = s
        for detector, gates in zip(rules.detectors, rules.detector_gates, strict=True):
            if gates is None:
                result = _apply(detector, result)
        if result == s:
            return s
        return _redact(rules, result)  # what it replaced may have made a neighbour a secret

    # Any: JSON-shaped data of any structure goes in, and the same structure comes out.
    def json(self, value: Any) -> Any:
        """``value`` (dicts, lists, tuples, strings, numbers, booleans, None) with every string
        redacted as :meth:`text` does, keys included, and the whole value of every key whose
        name says it holds a secret (``password``, ``api_key``, ``authorization``, ``token``,
        ``client_secret``, ``accessToken``, ...; not ``max_tokens``) replaced by its marker,
        unless that value is None, a boolean or ``""``, which hold no secret.

        Returns ``value`` itself when nothing was redacted, and otherwise new containers on the
        path to each change (the input is never modified). Other objects are returned as they
        are: pass the JSON form of a model, not the model. Two keys that redact to the same
        text collapse into one, the later winning.
        """
        # json.dumps walks the value in C, and the gates then scan its text once: far cheaper
        # than gating each string from Python, and nearly every value is clean
        try:
            opened = self._opened(value)
        except (TypeError, ValueError, RecursionError):  # not JSON throughout
            return self._walk(value, self._rules.json_gates)
        if opened is None and not self._rules.ungated:
            return value
        return self._walk(value, opened)

    # Any: as for json
    def _opened(self, value: Any) -> _GateSet | None:
        """The gates that open on ``value``'s JSON text; json.dumps's errors when it is not
        JSON throughout."""
        return self._rules.open_json(json.dumps(value, separators=(",", ":")))

    def json_text(self, text: str) -> str:
        """The JSON document ``text`` redacted as :meth:`json` redacts its parsed value: the
        result is valid JSON, and parses to ``json(json.loads(text))``.

        This is the store's fast path, since an event is encoded once anyway: a document with
        nothing to redact comes back as the very string passed in after one scan of its text;
        one that may hold a secret is parsed, redacted and encoded again, compactly (and with
        non-ASCII characters unescaped unless ``text`` was all ASCII). A tenant with a custom
        regex has every document parsed: an arbitrary regex has no gate.

        ``text`` must be a JSON document (Python's dialect: NaN and Infinity are accepted); a
        ``ValueError`` is raised when it is not, but only when it has to be parsed, so this is
        no validator.
        """
        opened = self._rules.open_json(text)
        if opened is None and not self._rules.ungated:
            return text
        value = json.loads(text)
        redacted = self._walk(value, opened)
        if redacted is value:
            return text
        return json.dumps(redacted, ensure_ascii=text.isascii(), separators=(",", ":"))

    # Any: as for json
    def _walk(self, value: Any, gates: _GateSet | None) -> Any:
        """``value`` with its strings and keys redacted and the values of secret-named keys
        replaced, where ``gates`` are all the gates that can open in it (None: none can, and
        only the detectors without a gate may find something)."""
        if isinstance(value, str):
            return self._string(value, gates)
        if isinstance(value, dict):
            return self._dict(value, gates)
        if isinstance(value, list | tuple):
            items = [self._child(item, gates) for item in value]
            if all(new is old for new, old in zip(items, value, strict=True)):
                return value
            return items if isinstance(value, list) else tuple(items)
        return value

    def _dict(self, value: dict[Any, Any], gates: _GateSet | None) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        changed = False
        for key, item in value.items():
            new_key, new_item = key, item
            if isinstance(key, str):
                new_key = self._string(key, gates)
                kind = secret_name_kind(key)
                new_item = self._child(item, gates) if kind is None else _whole_value(kind, item)
            else:
                new_item = self._child(item, gates)
            changed = changed or new_key is not key or new_item is not item
            out[new_key] = new_item
        return out if changed else value

    # Any: as for json
    def _child(self, value: Any, gates: _GateSet | None) -> Any:
        """A container is gated again on its own, as ``json`` gates a whole value: in a large
        document most of it is clean, and walking it string by string from Python costs far
        more than encoding it in C."""
        if gates is not None and isinstance(value, dict | list | tuple):
            try:
                gates = self._opened(value)
            except (TypeError, ValueError, RecursionError):
                pass  # not JSON throughout: keep the gates of the whole
        return self._walk(value, gates)

    def _string(self, s: str, gates: _GateSet | None) -> str:
        if gates is not None and gates.search(*_encoded(s)):
            result = _redact(self._rules, s)
            return s if result == s else result
        return self._ungated_text(s)


def _whole_value(kind: str, value: object) -> object:
    """What a secret-named key's value becomes: its marker, whatever its type, except for the
    values that cannot hold a secret and for a marker already there."""
    if value is None or isinstance(value, bool) or value == "":
        return value
    if isinstance(value, str) and MARKER_RE.fullmatch(value):
        return value
    return marker(kind)


def _redact(rules: _Rules, text: str) -> str:
    """Passes of every detector over ``text`` until one changes nothing."""
    for _ in range(_MAX_PASSES):
        redacted = _one_pass(rules, text)
        if redacted == text:
            break
        text = redacted
    return text


def _one_pass(rules: _Rules, text: str) -> str:
    # Gates are checked against the text as the pass found it. What an earlier detector of the
    # pass replaces becomes a marker, which opens no gate that was shut; and if it did, the next
    # pass would see it, since _redact repeats passes until one changes nothing.
    raw, lowered = _encoded(text)
    for detector, gates in zip(rules.detectors, rules.detector_gates, strict=True):
        if gates is None or gates.search(raw, lowered):
            text = _apply(detector, text)
    return text


def _apply(detector: Detector, text: str) -> str:
    """``text`` with every match of ``detector`` that lies outside the markers redacted."""
    haystack = text.translate(ASCII_FOLD) if detector.folded else text
    starts: list[int] = []
    ends: list[int] = []
    if MARKER_OPEN in text:
        for m in MARKER_RE.finditer(text):
            starts.append(m.start())
            ends.append(m.end())
    pieces: list[str] = []
    done = 0
    for m in detector.pattern.finditer(haystack):
        start, end = m.span()
        if start == end:
            continue
        if starts:
            # the last marker that starts before this match ends must end before it starts
            index = bisect.bisect_left(starts, end) - 1
            if index >= 0 and ends[index] > start:
                continue
        redacted = detector.redact(m, text)
        if redacted is not None:
            pieces += (text[done:start], redacted)
            done = end
    if not pieces:
        return text
    pieces.append(text[done:])
    return "".join(pieces)
