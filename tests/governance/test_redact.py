"""Redaction: secrets and personal data never reach the database, logs or exports (DESIGN.md,
"Oversight and governance": redaction before anything is stored or exported).

Every always-on pattern is tried on realistic samples in prose, in JSON-ish text and as JSON
values; a corpus of ordinary text (ULIDs, UUIDs, digests, base64, code, usage counts) must come
back untouched; per-tenant patterns are checked with their checksums; and property tests hold
``json_text`` to ``json`` (valid JSON in, valid JSON out, the same redaction) on documents
whose escapes try to hide secrets, and every redaction to being a fixed point.

Fake secrets are built by concatenation, so that no secret-looking literal sits in the repo
for a secret scanner to flag.
"""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kernos.errors import ConfigError
from kernos.governance._patterns import (
    ALWAYS_ON_DETECTORS,
    OPTIONAL_DETECTORS,
    Gate,
    secret_name_kind,
)
from kernos.governance._redact import (
    ALWAYS_ON_PATTERNS,
    OPTIONAL_PATTERNS,
    RedactionConfig,
    Redactor,
    TenantRedaction,
    _apply,
    _encoded,
    _GateSet,
    _whole_value,
    redactor_from_config,
)

ALWAYS = Redactor()
EVERYTHING = Redactor(RedactionConfig(patterns=OPTIONAL_PATTERNS))


def fake(*parts: str) -> str:
    """A fake secret, joined here so that the source never holds it in one piece."""
    return "".join(parts)


B62 = "Xb7dE2fGh9JkL4mNp6QrS8tUv1WxY3zA5cD0eFgH2jK4"

# kind -> samples; each is a secret as it appears in the wild (the whole string is the secret)
SECRETS: dict[str, list[str]] = {
    "openai_key": [
        fake("sk-", "proj-", B62, "_", B62[:20], "-", B62[:30]),
        fake("sk-", "svcacct-", B62),
        fake("sk-", B62[:48]),
    ],
    "anthropic_key": [
        fake("sk-", "ant-", "api03-", B62, B62, "-", B62[:5], "AA"),
        fake("sk-", "ant-", "admin01-", B62[:40]),
    ],
    "aws_access_key": [fake("AK", "IA", "IOSFODNN7EXAMPLE"), fake("AS", "IA", "Y34FZKBOKMUTVV7A")],
    "github_token": [
        fake("gh", "p_", B62[:36]),
        fake("gh", "o_", B62[:36]),
        fake("gh", "s_", B62[1:37]),
        fake("github", "_pat_", "11ABCDEFG0", B62[:12], "_", B62[:59]),
    ],
    "slack_token": [
        fake("xo", "xb-", "2636789012-1234567890123-", B62[:24]),
        fake("xo", "xp-", "1234567890-", B62[:20]),
    ],
    "slack_webhook": [fake("https://hooks.", "slack.com/services/", "T0001/B0002/", B62[:24])],
    "stripe_key": [fake("sk", "_live_", B62[:24]), fake("rk", "_live_", B62[2:30])],
    "google_api_key": [fake("AI", "za", "SyD-", B62[:31])],
    "jwt": [
        fake(
            "eyJ",
            "hbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9",
            ".eyJ",
            "zdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkphbmUifQ",
            ".",
            "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
        )
    ],
    "private_key": [
        fake("-----BEGIN ", "RSA PRIVATE KEY-----\nMIIEow", B62, "\n", B62, "\n-----END ")
        + "RSA PRIVATE KEY-----",
        fake("-----BEGIN ", "OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1r", B62, "\n", B62)
        + "\n-----END OPENSSH PRIVATE KEY-----",
        fake("-----BEGIN ", "PRIVATE KEY-----\nMIIEv", B62, "\n", B62),  # cut short
    ],
}

# kind -> (text, what must disappear): secrets known by their context, not their shape
IN_CONTEXT: dict[str, list[tuple[str, str]]] = {
    "aws_secret_key": [
        (fake("aws_secret_access_key = ", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"), "wJalrXUtn"),
        (fake('"SecretAccessKey": "', "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKE", '"'), "wJalr"),
    ],
    "authorization": [
        (fake("Authorization: Bearer ", "abc.DEF-ghi_", B62[:10]), "abc.DEF"),
        (fake("curl -H 'Authorization: Basic ", "dXNlcjpwYXNzd29yZA==", "' https://x"), "dXNlc"),
        (fake('{"authorization": "Token ', "tok_", B62[:20], '"}'), "tok_"),
        (fake("proxy-authorization=", "opaque", B62[:8]), "opaque"),
    ],
    "bearer_token": [(fake("send it as Bearer ", B62[:32], " please"), B62[:32])],
    "basic_auth": [(fake("header: Basic ", "YWRtaW46aHVudGVyMg=="), "YWRta")],
    "url_password": [
        (fake("postgresql://app:", "s3cr3t-Pa55", "@db.internal:5432/kernos"), "s3cr3t"),
        (fake("redis://:", "hunter2", "@cache:6379/0"), "hunter2"),
        (fake("https://bob:", "p%40ss", "@example.com/x"), "p%40ss"),
    ],
    "password": [
        (fake("password=", "hunter2"), "hunter2"),
        (fake("DB_PASSWORD: '", "correct horse battery", "'"), "correct horse"),
        (fake('{"passwd": "', 'p@ss\\"word', '"}'), "p@ss"),
        (fake("--password=", "Tr0ub4dor&3"), "Tr0ub4dor"),
        (fake('{\\"password\\": \\"', "nested-json-secret", '\\"}'), "nested-json"),
    ],
    "token": [
        (fake("https://example.com/reset?access_token=", "abc123XYZ", "&next=/"), "abc123"),
        (fake("GITHUB_TOKEN=", "anything-goes-42"), "anything-goes"),
        (fake("accessToken := '", "opaque-value", "'"), "opaque-value"),
    ],
    "api_key": [
        (fake("api_key = '", "k-", "123456", "'"), "123456"),
        (fake("{'x-api-key': '", "zzz", "top", "'}"), "zzztop"),
    ],
    "secret": [
        (fake("client_secret: ", "shh-", "9f8e7d"), "9f8e7d"),
        (fake('"private_key": "', "MII", "Bxyz", '"'), "MIIBxyz"),
    ],
}

# ordinary text that looks a little like a secret and must come back untouched
ORDINARY: list[str] = [
    "01M8AW487QK7AGXCB4E9W9RRAR",
    "01M8AW487QK7AGXCB4E9W9RRAR:42",
    "run 01J9ZQ3V5N8M2K4H6G7F0E1D2C step 17 of 01J9ZQ3V5N8M2K4H6G7F0E1D2C:17",
    "550e8400-e29b-41d4-a716-446655440000",
    "6fa459ea-ee8a-3ca4-894e-db77e160355e",
    "commit 9fceb02d0ae598e95dc970b74767f19372d61af8",
    "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    base64.b64encode(b"The quick brown fox jumps over the lazy dog, twice over.").decode(),
    base64.urlsafe_b64encode(b"just some ordinary bytes that are not a secret at all").decode(),
    '{"type":"llm_called","usage":{"input_tokens":1250,"output_tokens":312},"max_tokens":1024}',
    '{"idempotency_key": "01M8AW487QK7AGXCB4E9W9RRAR:3", "token_count": 5, "tokens": [1, 2]}',
    'api_key_env = "OPENAI_API_KEY"',
    "The password must be at least 12 characters. Keep your API key secret!",
    "Tokens are counted per model; the secret to speed is caching.",
    "Use the Authorization header with a bearer token from the login endpoint.",
    "def login(token: str, password: Optional[str] = None) -> bool:",
    "    password = os.environ['DB_PASSWORD']",
    "    token = request.headers.get('Authorization')",
    "    api_key = settings.api_key or getpass()",
    "    if password == expected: return check_token(token)",
    "    self.token = token",
    "password: str = Field(..., min_length=12)",
    "export OPENAI_API_KEY=$OPENAI_API_KEY",
    'secret_name = "prod/db"; password_hash = hashlib.sha256(b).hexdigest()',
    "task-runner-with-a-long-descriptive-name and disk-usage-report-2024-01",
    "sk-this-is-not-a-real-key-at-all-just-words",
    "Basic usage: see the README. Basic Auth is optional.",
    "Bearer authentication-required-for-this-endpoint",
    "ASIA PACIFIC region, AKIA is a name",
    "model openai:gpt-4.1-mini at https://api.openai.com/v1/chat/completions",
    "timestamps 1732601234567 and 1732601234.567, version 3.11.7, port 5432",
    "price 129.50 EUR; order 2024-11-26T03:40:09Z; ratio 0.4111111111111111",
    "[REDACTED:openai_key] stays [REDACTED:password] as it is",
]
# ordinary for the always-on patterns, though an e-mail pattern would take the addresses
ORDINARY_BUT_ADDRESSES = [
    "user@localhost is not a URL with a password; neither is git@github.com:org/repo.git",
    "ssh://git@github.com:22/org/repo.git and https://bob@example.com/ have no password",
]


# ---------------------------------------------------------------------------------------------
# Always-on patterns


@pytest.mark.parametrize(
    ("kind", "secret"), [(kind, s) for kind, samples in SECRETS.items() for s in samples]
)
def test_each_always_on_pattern_is_redacted_in_prose_json_and_values(
    kind: str, secret: str
) -> None:
    """Guarantee: API-key and token patterns are always redacted, for every tenant, wherever
    the secret sits: in prose, in JSON text, as a JSON value, as a key."""
    marker = f"[REDACTED:{kind}]"
    prose = f"The key is {secret}, keep it safe."
    assert ALWAYS.text(prose) == f"The key is {marker}, keep it safe."
    document = json.dumps({"note": f"use {secret}", "items": [secret]})
    assert json.loads(ALWAYS.json_text(document)) == {"note": f"use {marker}", "items": [marker]}
    assert ALWAYS.json({secret: 1}) == {marker: 1}
    for tenant in (None, "anyone"):
        assert secret not in EVERYTHING.for_tenant(tenant).text(prose)


@pytest.mark.parametrize(
    ("kind", "text", "secret"),
    [(kind, text, secret) for kind, samples in IN_CONTEXT.items() for text, secret in samples],
)
def test_secrets_known_by_their_context_are_redacted_and_the_context_kept(
    kind: str, text: str, secret: str
) -> None:
    """Guarantee: headers, URLs with credentials and ``name = value`` assignments lose the
    secret and keep what says what it was, so that a redacted log still reads."""
    redacted = ALWAYS.text(text)
    assert secret not in redacted
    assert f"[REDACTED:{kind}]" in redacted
    name = re.split(r"[=:\s]", text.strip("{'\"\\"), maxsplit=1)[0]
    assert name.strip("'\"\\") in redacted


def test_the_marker_keeps_nothing_of_the_secret() -> None:
    """Decision: not even a provider's public prefix is kept; the kind says whose key it was."""
    for kind, samples in SECRETS.items():
        for secret in samples:
            redacted = ALWAYS.text(f"x {secret} y")
            assert redacted == f"x [REDACTED:{kind}] y"


def test_every_always_on_kind_has_a_sample() -> None:
    covered = set(SECRETS) | set(IN_CONTEXT)
    assert covered == set(ALWAYS_ON_PATTERNS) - {"cookie"}
    assert ALWAYS.json({"Cookie": "session=abc"}) == {"Cookie": "[REDACTED:cookie]"}


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_text_is_returned_untouched(text: str) -> None:
    """Guarantee: false positives stay rare: ULIDs, UUIDs, digests, run keys, base64 of
    ordinary text, code that handles secrets and prose about them come back as they were (the
    very object, with every optional pattern enabled too)."""
    for redactor in (ALWAYS, EVERYTHING):
        assert redactor.text(text) is text
        document = json.dumps({"text": text})
        assert redactor.json_text(document) is document


@pytest.mark.parametrize("text", ORDINARY_BUT_ADDRESSES)
def test_addresses_without_a_password_are_kept_unless_emails_are_redacted(text: str) -> None:
    assert ALWAYS.text(text) is text
    assert "[REDACTED:email]" in EVERYTHING.text(text)


def test_a_secret_next_to_a_redacted_one_is_found_on_the_next_pass() -> None:
    """The result is a fixed point: removing an address makes the key beside it a token."""
    key = fake("sk-", B62[:30])
    text = f"10.0.0.1{key}"
    assert EVERYTHING.text(text) == "[REDACTED:ipv4][REDACTED:openai_key]"


# ---------------------------------------------------------------------------------------------
# Optional patterns, per tenant

CARDS = [
    fake("4111 1111 ", "1111 1111"),
    fake("5500-0000-", "0000-0004"),
    fake("3782 822463 ", "10005"),
    fake("6011000990", "139424"),
    fake("4222222", "222222"),  # 13 digits
]


@pytest.mark.parametrize("card", CARDS)
def test_card_numbers_that_pass_luhn_are_redacted(card: str) -> None:
    redactor = Redactor(RedactionConfig(patterns=("card",)))
    assert redactor.text(f"card {card}, exp 12/29") == "card [REDACTED:card], exp 12/29"


def test_card_numbers_that_fail_luhn_or_have_the_wrong_length_are_kept() -> None:
    redactor = Redactor(RedactionConfig(patterns=("card",)))
    for text in (
        fake("4111 1111 ", "1111 1112"),
        fake("4111111111", "11111111111"),  # 21 digits
        "411111111111",  # 12 digits
        "1732601234567 (epoch ms)",
    ):
        assert redactor.text(text) == text


def test_a_card_number_followed_by_more_digits_is_cut_where_luhn_says() -> None:
    redactor = Redactor(RedactionConfig(patterns=("card",)))
    assert redactor.text(fake("4111 1111 1111 ", "1111 202")) == "[REDACTED:card] 202"


IBANS = [
    fake("DE89 3704 ", "0044 0532 0130 00"),
    fake("GB82WEST", "12345698765432"),
    fake("FR14 2004 1010 ", "0505 0001 3M02 606"),
]


@pytest.mark.parametrize("iban", IBANS)
def test_ibans_that_pass_mod_97_are_redacted(iban: str) -> None:
    redactor = Redactor(RedactionConfig(patterns=("iban",)))
    assert redactor.text(f"IBAN: {iban}.") == "IBAN: [REDACTED:iban]."
    assert redactor.text(f"IBAN {iban} THANKS") == "IBAN [REDACTED:iban] THANKS"


def test_ibans_that_fail_mod_97_and_ulids_are_kept() -> None:
    redactor = Redactor(RedactionConfig(patterns=("iban",)))
    for text in (fake("DE89 3704 ", "0044 0532 0130 01"), "01M8AW487QK7AGXCB4E9W9RRAR"):
        assert redactor.text(text) == text


@pytest.mark.parametrize(
    ("kind", "text", "expected"),
    [
        ("email", "write to jane.doe+kernos@example.co.uk.", "write to [REDACTED:email]."),
        ("phone", "call +1 (555) 123-4567 now", "call [REDACTED:phone] now"),
        ("phone", "call +44 20 7946 0958", "call [REDACTED:phone]"),
        ("phone", "+49 30 1234 (too short: +4930 12)", "[REDACTED:phone] (too short: +4930 12)"),
        (
            "ipv4",
            "from 192.168.0.17:8080 and 10.0.0.1.",
            "from [REDACTED:ipv4]:8080 and [REDACTED:ipv4].",
        ),
        ("ipv4", "not 256.1.1.1 nor 1.2.3.4.5", "not 256.1.1.1 nor 1.2.3.4.5"),
    ],
)
def test_personal_data_patterns(kind: str, text: str, expected: str) -> None:
    assert Redactor(RedactionConfig(patterns=(kind,))).text(text) == expected


def test_optional_patterns_apply_only_to_the_tenants_that_enable_them() -> None:
    """Guarantee: configurable patterns per tenant; the always-on ones for every tenant."""
    config = RedactionConfig(
        patterns=("email",),
        tenants={
            "acme": TenantRedaction(
                patterns=("email", "phone"), custom={"employee_id": r"EMP-\d{6}"}
            ),
            "quiet": TenantRedaction(patterns=()),
        },
    )
    root = Redactor(config)
    key = fake("sk-", B62[:30])
    text = f"jane@example.com +1 555 123 4567 EMP-123456 {key}"
    assert root.text(text) == "[REDACTED:email] +1 555 123 4567 EMP-123456 [REDACTED:openai_key]"
    assert root.for_tenant(None) is root
    assert root.for_tenant("unknown") is root
    acme = root.for_tenant("acme")
    assert acme.text(text) == (
        "[REDACTED:email] [REDACTED:phone] [REDACTED:employee_id] [REDACTED:openai_key]"
    )
    quiet = root.for_tenant("quiet")
    assert quiet.text(text) == "jane@example.com +1 555 123 4567 EMP-123456 [REDACTED:openai_key]"
    # a tenant's redactor leads to its siblings and to the default, as the root does
    assert acme.for_tenant("quiet") is quiet and acme.for_tenant(None) is root
    assert acme.kinds[-2:] == ("phone", "employee_id")


# ---------------------------------------------------------------------------------------------
# JSON


def test_values_of_secret_named_keys_are_redacted_whatever_they_are() -> None:
    """Guarantee: a value whose key says it is a secret is redacted whole, whatever its type;
    None, booleans and "" hold no secret and are kept."""
    value = {
        "password": "hunter2",
        "DB_PASSWORD": 1234,
        "api_key": {"nested": "thing"},
        "Authorization": "Bearer x",
        "accessToken": ["a", "b"],
        "client_secret": 3.5,
        "X-Api-Key": "k",
        "refresh_token": None,
        "token": True,
        "secret": "",
        "max_tokens": 100,
        "token_count": 3,
        "api_key_env": "OPENAI_API_KEY",
        "idempotency_key": "01M8AW487QK7AGXCB4E9W9RRAR:3",
        "tokens": [1, 2],
    }
    assert ALWAYS.json(value) == {
        "password": "[REDACTED:password]",
        "DB_PASSWORD": "[REDACTED:password]",
        "api_key": "[REDACTED:api_key]",
        "Authorization": "[REDACTED:authorization]",
        "accessToken": "[REDACTED:token]",
        "client_secret": "[REDACTED:secret]",
        "X-Api-Key": "[REDACTED:api_key]",
        "refresh_token": None,
        "token": True,
        "secret": "",
        "max_tokens": 100,
        "token_count": 3,
        "api_key_env": "OPENAI_API_KEY",
        "idempotency_key": "01M8AW487QK7AGXCB4E9W9RRAR:3",
        "tokens": [1, 2],
    }


def test_nested_json_is_redacted_without_touching_the_input() -> None:
    key = fake("gh", "p_", B62[:36])
    value: dict[str, Any] = {
        "run": "01M8AW487QK7AGXCB4E9W9RRAR",
        "steps": [
            {"tool": "http", "args": {"headers": {"Authorization": f"token {key}"}}},
            {"tool": "shell", "output": ("ok", f"pushed with {key}")},
            {"tool": "noop", "output": {"n": 1}},
        ],
    }
    snapshot = json.dumps(value)
    redacted = ALWAYS.json(value)
    assert json.dumps(value) == snapshot
    assert redacted["steps"][0]["args"]["headers"]["Authorization"] == "[REDACTED:authorization]"
    assert redacted["steps"][1]["output"] == ("ok", "pushed with [REDACTED:github_token]")
    assert redacted["steps"][2] is value["steps"][2]  # clean branches are shared, not copied
    assert key not in json.dumps(redacted)


def test_clean_values_come_back_as_the_same_object() -> None:
    value = {"a": [1, "two", {"three": 3.0, "four": None}], "b": (True, "x")}
    assert ALWAYS.json(value) is value
    assert EVERYTHING.json(value) is value
    assert ALWAYS.json("plain") == "plain"
    odd = object()
    assert ALWAYS.json({"x": odd})["x"] is odd  # not JSON: walked, and kept as it is


def test_json_text_keeps_a_clean_document_and_reencodes_a_dirty_one() -> None:
    clean = '{\n  "a": "b",\n  "c": [1, 2]\n}'
    assert ALWAYS.json_text(clean) is clean
    dirty = '{"note": "caf\\u00e9 ' + fake("sk-", B62[:30]) + '", "n": NaN}'
    out = ALWAYS.json_text(dirty)
    assert out == '{"note":"caf\\u00e9 [REDACTED:openai_key]","n":NaN}'
    unicode = '{"note": "café ' + fake("sk-", B62[:30]) + '"}'
    assert ALWAYS.json_text(unicode) == '{"note":"café [REDACTED:openai_key]"}'
    with pytest.raises(ValueError):
        ALWAYS.json_text('{"note": "' + fake("sk-", B62[:30]))


def test_json_text_sees_through_escapes_that_spell_a_secret() -> None:
    """Guarantee: an escape cannot smuggle a secret past the gates: \\u0073k- is sk-."""
    key = fake("sk-", B62[:30])
    spelled = "".join(f"\\u{ord(c):04x}" for c in key[:3]) + key[3:]
    for document in (
        '{"k": "' + spelled + '"}',
        '{"url": "https:\\/\\/bob:' + "hunter2" + '@example.com"}',
        '{"pass\\u0077ord": "x"}',
        '{"a": "\\n' + key + '"}',
    ):
        out = ALWAYS.json_text(document)
        assert json.loads(out) == ALWAYS.json(json.loads(document)) != json.loads(document)


# ---------------------------------------------------------------------------------------------
# Property tests: json_text against json, fixed points

FRAGMENTS = [
    *(s for samples in SECRETS.values() for s in samples),
    *(text for samples in IN_CONTEXT.values() for text, _ in samples),
    *ORDINARY[:12],
    "password",
    "token",
    "Authorization",
    "api_key",
    "Bearer ",
    "://",
    "@",
    ":",
    "=",
    '"',
    "'",
    "\\",
    "\n",
    "\t",
    "/",
    "é",
    "\u212a",  # Kelvin sign, which str.lower() turns into k
    "\x00",
    "[REDACTED:",
    "]",
    "[REDACTED:email]",
    "jane@example.com",
    fake("4111 1111 ", "1111 1111"),
    fake("DE89 3704 ", "0044 0532 0130 00"),
    "+1 555 123 4567",
    "10.0.0.1",
    "EMP-123456",
]
texts = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=8)), max_size=6).map(
    "".join
)
keys = st.one_of(
    st.sampled_from(["password", "token", "Authorization", "max_tokens", "note", "x-api-key"]),
    texts,
)
json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False),
        texts,
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=4)
    ),
    max_leaves=12,
)
TENANTS = Redactor(
    RedactionConfig(
        tenants={
            "all": TenantRedaction(patterns=OPTIONAL_PATTERNS),
            "custom": TenantRedaction(custom={"employee_id": r"EMP-\d{6}", "word": "REDACTED"}),
        }
    )
)
REDACTORS = [ALWAYS, TENANTS.for_tenant("all"), TENANTS.for_tenant("custom")]


def reference_text(redactor: Redactor, text: str) -> str:
    """What ``text`` must redact to: every detector applied, no gate consulted, until a pass
    changes nothing. The fast paths are held to this."""
    while True:
        before = text
        for detector in redactor._rules.detectors:
            text = _apply(detector, text)
        if text == before:
            return text


def reference_json(redactor: Redactor, value: Any) -> Any:
    """What ``json`` must return, walking every string with :func:`reference_text`."""
    if isinstance(value, str):
        return reference_text(redactor, value)
    if isinstance(value, list):
        return [reference_json(redactor, item) for item in value]
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            kind = secret_name_kind(key)
            redacted = _whole_value(kind, item) if kind else reference_json(redactor, item)
            out[reference_text(redactor, key)] = redacted
        return out
    return value


def encode(value: Any, escapes: list[bool]) -> str:
    """JSON text of ``value`` with some characters escaped needlessly, as other encoders do
    (``\\u0073`` for s, ``\\/`` for /), chosen by ``escapes`` in turn."""
    choice = iter(escapes * 1000)
    if isinstance(value, dict):
        items = (f"{encode(k, escapes)}: {encode(v, escapes)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(encode(v, escapes) for v in value) + "]"
    if not isinstance(value, str):
        return json.dumps(value)
    out = []
    for char in value:
        if next(choice, False) and char.isascii():
            out.append("\\/" if char == "/" and next(choice, False) else f"\\u{ord(char):04x}")
        else:
            out.append(json.dumps(char, ensure_ascii=False)[1:-1])
    return '"' + "".join(out) + '"'


@settings(max_examples=400, deadline=None)
@given(
    value=json_values,
    redactor=st.sampled_from(REDACTORS),
    style=st.sampled_from(["compact", "ascii", "indent", "escaped"]),
    escapes=st.lists(st.booleans(), min_size=1, max_size=7),
)
@example(value={"k": fake("sk-", B62[:30])}, redactor=ALWAYS, style="escaped", escapes=[True])
def test_json_text_is_valid_json_equal_to_the_structured_redaction(
    value: Any, redactor: Redactor, style: str, escapes: list[bool]
) -> None:
    """Guarantee: ``json_text`` turns valid JSON into valid JSON, equal to ``json`` of the
    parsed document, however the document was encoded."""
    if style == "compact":
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    elif style == "ascii":
        text = json.dumps(value)
    elif style == "indent":
        text = json.dumps(value, indent=2, ensure_ascii=False)
    else:
        text = encode(value, escapes)
    out = redactor.json_text(text)
    parsed = json.loads(text)
    assert json.loads(out) == redactor.json(parsed) == reference_json(redactor, parsed)


@settings(max_examples=400, deadline=None)
@given(text=texts, redactor=st.sampled_from(REDACTORS))
def test_redaction_is_idempotent_and_markers_are_never_rewritten(
    text: str, redactor: Redactor
) -> None:
    """Guarantee: redacting twice is redacting once, and every marker of the first pass (or
    of the input) is still there, unchanged, after the second."""
    once = redactor.text(text)
    assert once == reference_text(redactor, text)
    assert redactor.text(once) == once
    markers = re.findall(r"\[REDACTED:[A-Za-z0-9_.-]+\]", text)
    for marker in markers:
        assert once.count(marker) >= text.count(marker)


@settings(max_examples=200, deadline=None)
@given(value=json_values, redactor=st.sampled_from(REDACTORS))
def test_structured_redaction_is_idempotent(value: Any, redactor: Redactor) -> None:
    once = redactor.json(value)
    assert redactor.json(once) == once


@settings(max_examples=300, deadline=None)
@given(text=texts)
def test_the_gates_open_wherever_a_detector_matches(text: str) -> None:
    """What makes the fast path sound: a text that no gate opens is one no detector matches
    (checked against every detector's pattern directly)."""
    raw, lowered = _encoded(text)
    for detector in (*ALWAYS_ON_DETECTORS, *OPTIONAL_DETECTORS.values()):
        assert detector.gates is not None
        if any(detector.pattern.finditer(text)):
            assert _GateSet(detector.gates).search(raw, lowered), (detector.kind, text)


def test_gates_are_grouped_by_pivot_with_their_lookbehinds() -> None:
    gates = _GateSet((Gate("token", ":"), Gate("api_key", ":"), Gate("xox"), Gate("", "[0-9]")))
    assert gates.search(*_encoded("TOKEN:")) and gates.search(*_encoded("x api_key:"))
    assert not gates.search(*_encoded("tokens: api_keys: idempotency_key:"))
    assert gates.search(*_encoded("xox")) and gates.search(*_encoded("7"))


def test_a_custom_regex_never_rewrites_a_marker() -> None:
    """Guarantee: markers are never re-redacted, even by a custom regex that matches them."""
    redactor = Redactor(RedactionConfig(custom={"word": "REDACTED|openai"}))
    key = fake("sk-", B62[:30])
    assert redactor.text(f"{key} openai") == "[REDACTED:openai_key] [REDACTED:word]"


# ---------------------------------------------------------------------------------------------
# Configuration


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "kernos.toml"
    path.write_text(text, encoding="utf-8")
    return path


def config_error(tmp_path: Path, text: str) -> str:
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        redactor_from_config(path, env={})
    message = str(caught.value)
    assert message.startswith(f"{path}: redaction")
    return message


def test_the_config_file_enables_patterns_per_tenant(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
[providers.local]
kind = "openai"
[redaction]
patterns = ["email", "card"]                 # for every tenant
[redaction.tenants.acme]
patterns = ["email", "card", "phone"]
custom = { employee_id = "EMP-\\\\d{6}" }
""",
    )
    redactor = redactor_from_config(path, env={})
    assert redactor.text("jane@example.com") == "[REDACTED:email]"
    assert redactor.text("EMP-123456 +1 555 123 4567") == "EMP-123456 +1 555 123 4567"
    acme = redactor.for_tenant("acme")
    assert acme.text("EMP-123456 +1 555 123 4567") == "[REDACTED:employee_id] [REDACTED:phone]"


def test_without_a_file_or_a_table_only_the_always_on_patterns_apply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert redactor_from_config(env={}).kinds == ALWAYS.kinds
    write_config(tmp_path, "[routes]\n")
    assert redactor_from_config(env={}).kinds == ALWAYS.kinds
    other = tmp_path / "other.toml"
    other.write_text('[redaction]\npatterns = ["ipv4"]\n', encoding="utf-8")
    assert redactor_from_config(env={"KERNOS_CONFIG": os.fspath(other)}).kinds[-1] == "ipv4"
    with pytest.raises(ConfigError, match="no such config file"):
        redactor_from_config(tmp_path / "missing.toml", env={})


def test_an_unknown_pattern_is_named_with_the_known_ones(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[redaction]\npatterns = ["email", "emial"]\n')
    assert "redaction.patterns[1]: unknown pattern 'emial' (did you mean 'email'?" in message
    assert f"the patterns are: {', '.join(OPTIONAL_PATTERNS)};" in message
    message = config_error(tmp_path, '[redaction.tenants.acme]\npatterns = ["jwt"]\n')
    assert "redaction.tenants.acme.patterns[0]: 'jwt' is always redacted" in message


def test_a_bad_regex_is_named_with_its_error(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[redaction.tenants.acme]\ncustom = { emp = "EMP-(\\\\d" }\n')
    assert "redaction.tenants.acme.custom.emp: not a valid regular expression: " in message
    assert "missing ), unterminated subpattern" in message
    message = config_error(tmp_path, '[redaction]\ncustom = { any = "x*" }\n')
    assert "redaction.custom.any: the regular expression 'x*' matches the empty string" in message
    message = config_error(tmp_path, '[redaction]\ncustom = { "a b" = "x" }\n')
    assert 'redaction.custom."a b": a custom pattern\'s name' in message
    message = config_error(tmp_path, '[redaction]\ncustom = { email = "x" }\n')
    assert "redaction.custom.email: 'email' is the name of a built-in pattern" in message


def test_typos_and_wrong_types_are_named(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[redaction]\npatern = ["email"]\n')
    assert "redaction.patern: unknown key (did you mean 'patterns'?)" in message
    message = config_error(tmp_path, "[redaction.tenants.acme]\ntenants = {}\n")
    assert "redaction.tenants.acme.tenants: unknown key (the keys here are: custom, patterns)" in (
        message
    )
    message = config_error(tmp_path, '[redaction]\npatterns = "email"\n')
    assert "redaction.patterns: must be a list, got 'email'" in message
    message = config_error(tmp_path, "[redaction]\ncustom = { emp = 5 }\n")
    assert "redaction.custom.emp: must be a string, got 5" in message
    message = config_error(tmp_path, 'redaction = "all"\n')
    assert message == f"{tmp_path / 'kernos.toml'}: redaction: must be a table, got str"
