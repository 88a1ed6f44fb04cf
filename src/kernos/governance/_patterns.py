"""What the redactor looks for: the always-on secret detectors and the optional ones a tenant
enables, each a regular expression, its gates, and the rule that turns a match into a marker.

A detector finds a secret in *decoded* text (a log line, a JSON string value) with ``pattern``;
``redact`` turns the match into its redacted form, or refuses it (``None``) when a check says it
is not a secret after all (a number that fails Luhn, an IBAN that fails mod 97, a type annotation
after ``token:``). What replaces a secret is the marker ``[REDACTED:<kind>]`` and nothing of the
secret itself: not even a provider's public prefix is kept, since the kind already says whose
key it was and a kept prefix is one more thing to get wrong. Context that is not secret stays
(``Authorization: Bearer [REDACTED:authorization]``, ``postgres://app:[REDACTED:url_password]@db``,
``password=[REDACTED:password]``) so that a redacted log still reads.

Gates keep the hot path cheap. A :class:`Gate` is a literal word followed by a short regex, and
a detector's gates match wherever its pattern could match: in the decoded text, and also in the
text of any JSON document holding that text as a string, provided the document spells no ASCII
character as ``\\u00XX`` and no ``/`` as ``\\/`` (the redactor checks both). That is why gates
have no boundaries (``\\nsk-...`` in JSON text has none before ``sk-`` although the decoded text
has) and why a word never contains ``"``, ``\\`` or ``/``. Gates run over the UTF-8 bytes of the
text with ASCII letters lowered; the redactor groups them by a pivot byte of each word, so
that a text in which that byte never occurs costs one ``memchr``.

Patterns are compiled with ``re.ASCII``: ``\\d`` is 0-9 and case-insensitive parts fold ASCII
letters only (a Kelvin sign never matches ``k``), as the gates' lowering does.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

#: every marker starts with this; a detector never rewrites text inside a marker
MARKER_OPEN: Final = "[REDACTED:"
#: the kinds a marker may name (custom pattern names are held to the same alphabet)
KIND_ALPHABET: Final = r"[A-Za-z0-9_.-]+"
MARKER_RE: Final = re.compile(r"\[REDACTED:" + KIND_ALPHABET + r"\]")
_FLAGS: Final = re.ASCII

#: the redacted form of a match in a text (the text as given, whatever the match ran on), or
#: None to leave the match as it is
Redact = Callable[[re.Match[str], str], str | None]
#: ASCII letters to lower case, and nothing else: a text and its folded copy have the same
#: length, so a match's positions in the copy are positions in the text
ASCII_FOLD: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def marker(kind: str) -> str:
    """The text that stands in for a secret of ``kind``: ``[REDACTED:openai_key]``."""
    return f"{MARKER_OPEN}{kind}]"


@dataclass(frozen=True, slots=True)
class Gate:
    """``word`` then ``follow`` (a regex), over the text's UTF-8 bytes with ASCII letters
    lowered: so ``word`` is lower case, and so are the letters ``follow`` names (``[a-z0-9]``
    for a case-sensitive pattern's ``[A-Z0-9]``: a gate may match more than its pattern, never
    less). A gate with an empty word is a bare regex, searched on its own, and may ask for the
    bytes as they are instead (``case_sensitive``)."""

    word: str
    follow: str = ""
    case_sensitive: bool = False


@dataclass(frozen=True, slots=True)
class Detector:
    """One kind of secret: how to find it, how to rule it in or out, and its gates."""

    kind: str
    pattern: re.Pattern[str]
    #: one of them matches wherever ``pattern`` could (see the module's docstring); None for a
    #: detector with no sound gate, which then runs on every text and makes ``json_text`` parse
    #: every document
    gates: tuple[Gate, ...] | None
    redact: Redact
    #: ``pattern`` is written in lower case and runs on the text with ASCII letters folded
    #: (ASCII_FOLD): a case-insensitive pattern that starts with literals, which ``re`` finds
    #: fast, where ``(?i:...)`` would be tried at every position
    folded: bool = False


# ---------------------------------------------------------------------------------------------
# How a match becomes a marker


def _group(m: re.Match[str], text: str, group: str | int = 0) -> str | None:
    """What ``group`` matched, taken from ``text`` (the match may have run on a folded copy)."""
    start, end = m.span(group)
    return None if start < 0 else text[start:end]


def _replace_group(m: re.Match[str], text: str, group: str | int, kind: str) -> str:
    """The match with only ``group`` replaced by the marker (the rest is context)."""
    start, end = m.span(group)
    return text[m.start() : start] + marker(kind) + text[end : m.end()]


def _secret_group(kind: str, check: Callable[[str], bool] | None = None) -> Redact:
    """Replace the group named ``secret`` (the whole match when there is none), if ``check``
    accepts it."""

    def redact(m: re.Match[str], text: str) -> str | None:
        group: str | int = "secret" if "secret" in m.re.groupindex else 0
        if check is not None and not check(text[m.start(group) : m.end(group)]):
            return None
        return _replace_group(m, text, group, kind)

    return redact


def _random_looking(token: str) -> bool:
    """At least two of lower case, upper case and digits: true of every generated key, false of
    prose like ``sk-this-is-not-a-key`` or ``Bearer authentication-required``."""
    classes = (
        any(c.islower() for c in token)
        + any(c.isupper() for c in token)
        + any(c.isdigit() for c in token)
    )
    return classes >= 2


def _basic_credentials(token: str) -> bool:
    """``Basic`` followed by base64 of ``user:password`` in printable text: what an HTTP Basic
    header holds, and what ``Basic usage`` or ``Basic Auth`` does not decode to."""
    try:
        decoded = base64.b64decode(token, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return ":" in decoded and decoded.isprintable()


# ---------------------------------------------------------------------------------------------
# Key names that say their value is a secret


#: name endings (ASCII-lowered) that make a JSON key or an assignment's name secret, by kind;
#: "ends with" so that max_tokens, token_count and api_key_env stay readable
SECRET_NAME_ENDINGS: Final[Mapping[str, tuple[str, ...]]] = {
    "password": ("password", "passwd", "passphrase"),
    "api_key": ("api_key", "api-key", "apikey"),
    "token": ("token",),
    "authorization": ("authorization",),
    "cookie": ("cookie",),
    "secret": (
        "secret",
        "secret_key",
        "secret-key",
        "secretkey",
        "access_key",
        "access-key",
        "accesskey",
        "private_key",
        "private-key",
        "privatekey",
        "credential",
        "credentials",
    ),
}
_ENDINGS: Final = tuple(
    (ending.encode(), kind) for kind, endings in SECRET_NAME_ENDINGS.items() for ending in endings
)
_ALL_ENDINGS: Final = tuple(ending for ending, _ in _ENDINGS)
_ALL_NAMES: Final = tuple(e for endings in SECRET_NAME_ENDINGS.values() for e in endings)


def secret_name_kind(name: str) -> str | None:
    """The kind of secret a key or variable called ``name`` holds (``"password"`` for
    ``DB_PASSWORD``, ``"token"`` for ``accessToken``), or None for an ordinary name.

    Only ASCII letters are folded, as the gates fold them, so that a name the gate cannot see
    is never classified secret.
    """
    lowered = name.encode("utf-8", "surrogatepass").lower()
    if not lowered.endswith(_ALL_ENDINGS):
        return None
    for ending, kind in _ENDINGS:
        if lowered.endswith(ending):
            return kind
    return None  # pragma: no cover - endswith(_ALL_ENDINGS) means one of them ends it


def _words(words: tuple[str, ...]) -> str:
    # longest first, so that "secret_key" is tried before "secret"
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


#: in a gate, what may stand between a name and its ":" or "=" in JSON text: closing quotes,
#: escaped or not, blanks, and a tab written "\t"
GATE_GAP: Final = r"""[\\"'`\st]*[:=]"""
#: the same in decoded text: an optional closing quote (escaped in JSON inside a string), blanks
_QUOTE: Final = r"""\\*["'`]"""
_SEPARATOR: Final = rf"(?:{_QUOTE})?[ \t]*(?P<sep>:=|=>|[:=])(?![=:])[ \t]*"
_BLANK_GATE: Final = r"(?: |\t|\\t)"


def _name_gates(names: tuple[str, ...]) -> tuple[Gate, ...]:
    return tuple(Gate(name, GATE_GAP) for name in names)


#: the gates of every secret name before a ":" or "=", for ``json_text``'s key check
NAME_GATES: Final = _name_gates(_ALL_NAMES)
#: the escapes that can hide a gate's word in JSON text (``\u0073k-`` is ``sk-``)
HIDING_ESCAPE_GATES: Final = (Gate("\\u00", "[0-7]"), Gate("\\/"))

# ---------------------------------------------------------------------------------------------
# Generic "name = value" assignments

_ASSIGNED_NAMES: Final = tuple(
    ending
    for kind, endings in SECRET_NAME_ENDINGS.items()
    if kind != "authorization"  # its own detector keeps the scheme (Bearer, Basic) readable
    for ending in endings
)
# folded (see Detector.folded): the names in lower case, and "[redacted:" for a marker
_ASSIGNMENT: Final = re.compile(
    rf"(?P<name>{_words(_ASSIGNED_NAMES)})(?![a-z0-9_]){_SEPARATOR}"
    r"(?:"
    # a quoted value, closed by the same quote (escaped quotes inside are part of it)
    rf"(?P<q>{_QUOTE})(?P<quoted>(?!\[redacted:)(?:(?!(?P=q))(?:\\.|[^\\\r\n]))+)(?:(?P=q)|\Z)"
    # or a bare one, which is not a call or an index (the code that fetches a secret)
    r"|(?P<bare>[^\s\"'`\\,;&<>(){}\[\]]++)(?![(\[])"
    r")",
    _FLAGS,
)
#: bare values that are not secrets: literals, and the types of annotations (``token: str``)
_NOT_VALUES: Final = frozenset({"null", "none", "nil", "true", "false", "undefined"})
_TYPE_NAMES: Final = frozenset(
    {"str", "string", "int", "bool", "bytes", "any", "object", "optional", "secretstr", "number"}
)
# ``os.environ``, ``settings.api_key``, ``$GITHUB_TOKEN``: where a secret comes from, not one
_REFERENCE: Final = re.compile(
    r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\$[A-Z_][A-Z0-9_]*", _FLAGS
)
# ``***``, ``xxxx``, ``<your token>``: already masked, or a placeholder
_MASKED: Final = re.compile(r"[*xX.]+|<[^<>]*>", _FLAGS)


def _redact_assignment(m: re.Match[str], text: str) -> str | None:
    kind = secret_name_kind(m["name"]) or "secret"
    quoted = _group(m, text, "quoted")
    if quoted is not None:
        if _MASKED.fullmatch(quoted):
            return None
        return _replace_group(m, text, "quoted", kind)
    value = _group(m, text, "bare") or ""
    lowered = value.lower()
    if lowered in _NOT_VALUES or (m["sep"] == ":" and lowered in _TYPE_NAMES):
        return None
    if _REFERENCE.fullmatch(value) or _MASKED.fullmatch(value):
        return None
    if secret_name_kind(value) is not None and value.replace("_", "").isalnum():
        return None  # password=password, api_key = api_key: a variable, not a value
    return _replace_group(m, text, "bare", kind)


# ---------------------------------------------------------------------------------------------
# Always-on detectors


def _detector(
    kind: str,
    pattern: str,
    gates: tuple[Gate, ...],
    check: Callable[[str], bool] | None = None,
    *,
    folded: bool = False,
) -> Detector:
    compiled = re.compile(pattern, _FLAGS)
    return Detector(kind, compiled, gates, _secret_group(kind, check), folded=folded)


def _gates(*words: str, follow: str = "") -> tuple[Gate, ...]:
    return tuple(Gate(word, follow) for word in words)


def _token(prefix: str, rest: str, boundary: str = "A-Za-z0-9_-") -> str:
    """A token that starts with ``prefix`` where no token character stands before it. The
    boundary is checked after the prefix, so that the pattern starts with a literal, which
    ``re`` finds fast; a lookbehind first would be tried at every position."""
    literal = re.escape(prefix)
    return f"{literal}(?<![{boundary}]{literal}){rest}"


ALWAYS_ON_DETECTORS: Final[tuple[Detector, ...]] = (
    # PEM blocks first: their base64 body could contain anything. A block cut short (no END
    # line) is redacted to its last line of base64 or of headers (Proc-Type: 4,ENCRYPTED),
    # whether its lines end in newlines or, in text holding JSON, in "\n" escapes.
    _detector(
        "private_key",
        r"-----BEGIN[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----"
        r"(?:(?s:.*?)-----END[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----"
        r"|(?:(?:\r?\n|\\r?\\n)(?:[A-Za-z0-9+/=]+|[A-Za-z-]+: [^\r\n\\]*))*)",
        _gates("private key"),
    ),
    _detector(
        "anthropic_key",
        _token("sk-ant-", "[A-Za-z0-9_-]{20,}"),
        _gates("sk-ant-", follow="[a-z0-9_-]{20}"),
    ),
    _detector(
        "openai_key",
        _token("sk-", "(?!ant-)[A-Za-z0-9_-]{20,}"),
        _gates("sk-", follow="[a-z0-9_-]{20}"),
        _random_looking,
    ),
    _detector(
        "aws_access_key",
        _token("A", "(?:3T[A-Z0-9]|KIA|SIA|BIA|CCA)[A-Z0-9]{16}(?![A-Za-z0-9])", "A-Za-z0-9"),
        _gates("akia", "asia", "abia", "acca", "a3t", follow="[a-z0-9]{16}"),
    ),
    _detector(
        "aws_secret_key",
        r"secret_?access_?key(?![a-z0-9_])" + _SEPARATOR + rf"(?:{_QUOTE})?"
        r"(?P<secret>[a-z0-9/+]{40})(?![a-z0-9/+=])",
        _name_gates(
            ("secretaccesskey", "secret_accesskey", "secretaccess_key", "secret_access_key")
        ),
        folded=True,
    ),
    _detector(
        "github_token",
        _token("gh", "[pousr]_[A-Za-z0-9]{36,}", "A-Za-z0-9_")
        + "|"
        + _token("github_pat_", "[A-Za-z0-9_]{22,}", "A-Za-z0-9_"),
        _gates("ghp_", "gho_", "ghu_", "ghs_", "ghr_", follow="[a-z0-9]{36}")
        + _gates("github_pat_"),
    ),
    _detector(
        "slack_token",
        _token("xox", "[abposr]-[A-Za-z0-9-]{10,}"),
        _gates("xox", follow="[abposr]-"),
    ),
    _detector(
        "slack_webhook",
        r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/]+",
        _gates("hooks.slack.com"),
    ),
    _detector(
        "stripe_key",
        r"[rs](?<![A-Za-z0-9_][rs])k_(?:live|test)_[A-Za-z0-9]{16,}",
        _gates("sk_live_", "rk_live_", "sk_test_", "rk_test_"),
    ),
    _detector(
        "google_api_key",
        _token("AIza", "[A-Za-z0-9_-]{35}(?![A-Za-z0-9_-])"),
        _gates("aiza", follow="[a-z0-9_-]{35}"),
    ),
    _detector(
        "jwt",
        _token("eyJ", r"[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"),
        _gates("eyj", follow=r"[a-z0-9_-]{5,}\."),
    ),
    # The value of an Authorization header, whatever its scheme; the scheme stays readable.
    _detector(
        "authorization",
        # (Proxy-Authorization too: "-" is no name character)
        _token("authorization", "(?![a-z0-9_])", "a-z0-9_") + _SEPARATOR + rf"(?:{_QUOTE})?"
        r"(?>(?:(?:bearer|basic|token|bot|digest|negotiate|apikey)[ \t]+)?)"
        r"(?P<secret>(?!\[redacted:)[^\s\"'`\\,;]+)",
        _name_gates(("authorization",)),
        folded=True,
    ),
    _detector(
        "bearer_token",
        r"[Bb](?<![A-Za-z0-9_-][Bb])(?i:earer)[ \t]+(?P<secret>[A-Za-z0-9._~+/-]{16,}=*)",
        (Gate("bearer", _BLANK_GATE),),
        _random_looking,  # so not folded: the check needs the token's case
    ),
    _detector(
        "basic_auth",
        r"[Bb](?<![A-Za-z0-9_-][Bb])(?i:asic)[ \t]+"
        r"(?P<secret>[A-Za-z0-9+/]{4,}={0,2})(?![A-Za-z0-9+/=])",
        (Gate("basic", _BLANK_GATE),),
        _basic_credentials,
    ),
    # scheme://user:password@host: the password only
    _detector(
        "url_password",
        r"://[^\s:/?#@\[\]\"'`<>\\]*:(?P<secret>(?!\[REDACTED:)[^\s/?#@\"'`<>\\]+)@",
        (Gate("@"),),
    ),
    Detector("secret", _ASSIGNMENT, _name_gates(_ASSIGNED_NAMES), _redact_assignment, folded=True),
)

#: the kinds that are always redacted, for every tenant (the last six are those of secret names)
ALWAYS_ON_PATTERNS: Final = tuple(
    dict.fromkeys([*(d.kind for d in ALWAYS_ON_DETECTORS[:-1]), *SECRET_NAME_ENDINGS])
)

# ---------------------------------------------------------------------------------------------
# Optional detectors (personal data), enabled per tenant


def _luhn(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _card_number(candidate: str) -> bool:
    digits = re.sub(r"[^0-9]", "", candidate)
    return 13 <= len(digits) <= 19 and _luhn(digits)


def _iban(candidate: str) -> bool:
    """ISO 13616: 15 to 34 characters whose rearranged digits are 1 modulo 97."""
    compact = candidate.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _longest_valid_prefix(kind: str, check: Callable[[str], bool], separators: str) -> Redact:
    """Redact the longest prefix of the match, cut at a separator, that ``check`` accepts.

    A regex cannot know where a card number or an IBAN ends when more digits follow after a
    space ("4111 1111 1111 1111 2024"); the checksum can.
    """

    def redact(m: re.Match[str], text: str) -> str | None:
        found = text[m.start() : m.end()]
        cuts = [len(found)] + [i for i in range(len(found) - 1, 0, -1) if found[i] in separators]
        for cut in cuts:
            if check(found[:cut]):
                return marker(kind) + found[cut:]
        return None

    return redact


def _digits_between(low: int, high: int) -> Callable[[str], bool]:
    def check(candidate: str) -> bool:
        return low <= sum(c.isdigit() for c in candidate) <= high

    return check


_OCTET: Final = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"

OPTIONAL_DETECTORS: Final[Mapping[str, Detector]] = {
    "email": _detector(
        "email",
        r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
        r"\.[A-Za-z]{2,}(?![A-Za-z0-9-])",
        (Gate("@"),),
    ),
    # 13-19 digits, spaces or dashes between them, Luhn-checked; issuers' first digits are
    # 2-6, which leaves out epoch-millisecond timestamps (1...) and most order numbers
    "card": Detector(
        "card",
        re.compile(
            r"(?<![A-Za-z0-9_.+])[2-6][0-9](?:[ -]?[0-9]){11,17}(?![A-Za-z0-9_]|\.[0-9])", _FLAGS
        ),
        # the boundary again, in each of its forms in JSON text (see iban)
        (
            Gate(
                "",
                r"[2-6](?:(?<![a-z0-9_.+][2-6])|(?<=\\[nrtbf][2-6])|(?<=\\u[0-9a-f]{4}[2-6]))"
                r"[0-9](?:[ -]?[0-9]){11}",
            ),
        ),
        _longest_valid_prefix("card", _card_number, " -"),
    ),
    # E.164-ish: a "+", a country code and 8-15 digits in all, with the usual separators
    "phone": _detector(
        "phone",
        r"(?<![A-Za-z0-9_+])\+[1-9](?:[ .()-]{0,2}[0-9]){7,14}(?![0-9])",
        (Gate("+", "[1-9]"),),
        _digits_between(8, 15),
    ),
    "iban": Detector(
        "iban",
        re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}(?![A-Za-z0-9])", _FLAGS),
        # Two capitals and two digits occur in most ULIDs, so the gate keeps the boundary, in
        # every form it takes in JSON text: a byte that is not alphanumeric (or none), or the
        # end of an escape. It starts at the digits, which are rarer than letters.
        (
            Gate(
                "",
                r"[0-9](?<=[A-Z]{2}[0-9])(?:(?<![A-Za-z0-9][A-Z]{2}[0-9])"
                r"|(?<=\\[nrtbf][A-Z]{2}[0-9])|(?<=\\u[0-9a-fA-F]{4}[A-Z]{2}[0-9]))[0-9]",
                case_sensitive=True,
            ),
        ),
        _longest_valid_prefix("iban", _iban, " "),
    ),
    "ipv4": _detector(
        "ipv4",
        rf"(?<![0-9.]){_OCTET}(?:\.{_OCTET}){{3}}(?![0-9]|\.[0-9])",
        (Gate(".", r"(?<=[0-9]\.)[0-9]{1,3}\.[0-9]{1,3}\.[0-9]"),),
    ),
}

#: the names a tenant may enable under ``patterns``
OPTIONAL_PATTERNS: Final = tuple(OPTIONAL_DETECTORS)


def custom_detector(kind: str, pattern: re.Pattern[str]) -> Detector:
    """A detector for a custom regex from the config: the whole match is the secret. It has no
    gate (nothing sound can be derived from an arbitrary regex), so it runs on every text."""
    return Detector(kind, pattern, None, _secret_group(kind))
