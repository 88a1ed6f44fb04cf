"""Managed context: offline token counts, model windows, and compaction that drops nothing.

DESIGN.md, "Agents, tools, memory": context is managed, never silently dropped. Each test names
the part of that guarantee it tries to break.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import lzma
import socket
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import tiktoken.load
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiktoken_ext import openai_public  # type: ignore[import-untyped]

from kernos.agents._context import (
    CompactionPlan,
    ContextOverflow,
    TokenCounter,
    count_tokens,
    o200k_base,
    plan_compaction,
    summary_prompt,
)
from kernos.agents._windows import (
    BUILTIN_WINDOWS,
    CLAUDE,
    CLAUDE_LEGACY,
    O200K,
    OPENAI_UNCONFIRMED,
    UNKNOWN,
    Tokenizer,
    context_window,
    input_budget,
    max_output,
    model_window,
    tokenizer_for,
)
from kernos.errors import KernosError
from kernos.gateway import Message, ToolCall, ToolSpec
from kernos.gateway._anthropic import _messages as anthropic_messages
from kernos.gateway._prices import BUILTIN_PRICES

O200K_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"


def _sys(text: str = "You are a support agent.") -> Message:
    return Message(role="system", content=text)


def _user(text: str) -> Message:
    return Message(role="user", content=text)


def _assistant(text: str) -> Message:
    return Message(role="assistant", content=text)


def _call(call_id: str, name: str = "lookup_order", **arguments: Any) -> Message:
    return Message(
        role="assistant",
        tool_calls=(ToolCall(id=call_id, name=name, arguments=arguments),),
    )


def _calls(*call_ids: str) -> Message:
    return Message(
        role="assistant",
        tool_calls=tuple(
            ToolCall(id=c, name="lookup_order", arguments={"id": c}) for c in call_ids
        ),
    )


def _result(call_id: str, text: str) -> Message:
    return Message(role="tool", tool_call_id=call_id, content=text)


def _words(messages: Sequence[Message]) -> int:
    """A simple additive count: one token a word, four a message, three a tool call."""
    return sum(
        4 + len((m.content or "").split()) + 3 * len(m.tool_calls) + (1 if m.tool_call_id else 0)
        for m in messages
    )


def assert_valid_for_providers(messages: Sequence[Message]) -> None:
    """What OpenAI and Anthropic both require of a conversation's structure: every tool result
    directly follows (after other results only) the assistant message that made its call, every
    call is answered there, and the first turn after the system messages is a user turn."""
    rest = [m for m in messages if m.role != "system"]
    assert rest and rest[0].role == "user", "the first turn must be a user turn"
    i = 0
    while i < len(messages):
        m = messages[i]
        assert m.role != "tool", f"message {i} is a tool result without its call"
        i += 1
        if m.role == "assistant" and m.tool_calls:
            answered = []
            while i < len(messages) and messages[i].role == "tool":
                answered.append(messages[i].tool_call_id or "")
                i += 1
            assert sorted(answered) == sorted(c.id for c in m.tool_calls), (
                f"the calls of message {i} are not answered right after it"
            )
    # and Anthropic's translation puts each turn's tool results in the turn after its calls
    turns = anthropic_messages(tuple(messages))
    for before, after in itertools.pairwise(turns):
        uses = [
            b["id"]
            for b in (before["content"] if isinstance(before["content"], list) else [])
            if b.get("type") == "tool_use"
        ]
        if uses:
            results = [b["tool_use_id"] for b in after["content"] if b.get("type") == "tool_result"]
            assert sorted(results) == sorted(uses)


# --- counting -------------------------------------------------------------------------------


def test_the_shipped_vocabulary_is_tiktokens_o200k_base(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The encoding built offline is the one tiktoken itself builds: same ranks, same split
    pattern, same special tokens (tiktoken is fed our file through its own cache, checked
    against its own hash, so this test makes no download either)."""
    packed = resources.files("kernos.agents").joinpath("_data/o200k_base.tiktoken.xz")
    cache_key = hashlib.sha1(O200K_URL.encode()).hexdigest()
    (tmp_path / cache_key).write_bytes(lzma.decompress(packed.read_bytes()))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tiktoken.load, "read_file", _no_download)
    theirs = openai_public.o200k_base()
    ours = o200k_base()
    assert ours._pat_str == theirs["pat_str"]
    assert ours._special_tokens == theirs["special_tokens"]
    assert ours._mergeable_ranks == theirs["mergeable_ranks"]


def _no_download(blobpath: str) -> bytes:
    raise AssertionError(f"tried to download {blobpath}")


def test_counting_needs_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """No network at run time, ever: loading the encoding and counting open no socket."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("counting tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(tiktoken.load, "read_file", _no_download)
    o200k_base.cache_clear()
    try:
        assert count_tokens([_user("hello world")], "openai:gpt-4.1-mini") == 3 + 2 + 3
    finally:
        o200k_base.cache_clear()


def test_openai_text_counts_are_exact_and_framed_as_openai_documents() -> None:
    """For o200k_base models the count is OpenAI's cookbook formula: 3 per message, 1 per name,
    3 to prime the reply, on exact text tokens."""
    enc = o200k_base()
    assert enc.encode_ordinary("hello world") == [24912, 2375]
    messages = [_sys(), _user("What is the status of order A-1042?"), _assistant("Shipped.")]
    text = sum(len(enc.encode_ordinary(m.content or "")) for m in messages)
    for model in ("openai:gpt-4o", "gpt-4.1-mini-2025-04-14", "openai:gpt-5", "azure:o3"):
        assert count_tokens(messages, model) == text + 3 * len(messages) + 3, model
    named = Message(role="user", content="hi", name="ada")
    hi, ada = len(enc.encode_ordinary("hi")), len(enc.encode_ordinary("ada"))
    assert count_tokens([named], "gpt-4o") == hi + ada + 3 + 1 + 3


def test_special_token_text_in_content_is_counted_as_text() -> None:
    """A user may paste "<|endoftext|>": it is text to count, not an error."""
    assert count_tokens([_user("<|endoftext|> and <|endofprompt|>")], "gpt-4o") > 6


def test_tool_calls_results_and_schemas_are_counted() -> None:
    enc = o200k_base()
    counter = TokenCounter("openai:gpt-4o")
    call = _call("call_abc", id="A-1042", note="x" * 50)
    plain = counter.message(Message(role="assistant"))
    arguments = json.dumps(call.tool_calls[0].arguments)
    assert counter.message(call) >= plain + len(enc.encode_ordinary(arguments)) + 8
    result = _result("call_abc", "shipped")
    assert counter.message(result) > counter.message(_user("shipped"))
    tool = ToolSpec(
        name="lookup_order",
        description="Find an order by its id.",
        parameters={"type": "object", "properties": {"id": {"type": "string"}}},
    )
    assert counter.tools([]) == 0
    schema = json.dumps({"name": tool.name, "description": tool.description, "parameters": {}})
    assert counter.tools([tool]) > len(enc.encode_ordinary(schema))
    assert counter.count([_user("hi")], [tool]) == counter.count([_user("hi")]) + counter.tools(
        [tool]
    )


def test_models_without_a_public_tokenizer_are_over_counted() -> None:
    """Anthropic's tokenizer is not public: the estimate scales exact o200k_base counts by a
    ratio above every measured Claude/o200k_base ratio, so it over-counts."""
    text = "The refund of order A-1042 (EUR 129.90) was approved on 2026-03-14. " * 40
    o200k = len(o200k_base().encode_ordinary(text))
    messages = [_user(text)]
    assert count_tokens(messages, "anthropic:claude-haiku-4-5") >= 1.35 * o200k
    assert count_tokens(messages, "anthropic:claude-opus-4-7") >= 1.85 * o200k
    assert count_tokens(messages, "ollama:llama3.1") >= 1.85 * o200k
    assert count_tokens(messages, "openai:gpt-6-sol") >= 1.25 * o200k
    with_tools = count_tokens(messages, "anthropic:claude-sonnet-4-5", [ToolSpec(name="t")])
    assert with_tools >= count_tokens(messages, "anthropic:claude-sonnet-4-5") + 346


@pytest.mark.parametrize(
    ("model", "tokenizer"),
    [
        ("openai:gpt-4o", O200K),
        ("gpt-4o-2024-05-13", O200K),
        ("openai:gpt-4.1-nano", O200K),
        ("openai:gpt-5.6-sol", O200K),
        ("openai:o4-mini", O200K),
        ("openai:o1", O200K),
        ("openai:gpt-5", O200K),
        ("openai:chatgpt-4o-latest", O200K),
        ("openai:gpt-4-turbo", UNKNOWN),
        ("openai:gpt-3.5-turbo", UNKNOWN),
        ("openai:o7-ultra", OPENAI_UNCONFIRMED),
        ("openai:gpt-6-astra", OPENAI_UNCONFIRMED),
        ("openai:gpt-4", UNKNOWN),  # cl100k_base, not shipped
        ("ollama:llama3.1:8b", UNKNOWN),
        ("anthropic:claude-3-5-haiku-20241022", CLAUDE_LEGACY),
        ("anthropic:claude-3-7-sonnet-latest", CLAUDE_LEGACY),
        ("anthropic:claude-sonnet-4", CLAUDE_LEGACY),
        ("anthropic:claude-opus-4-1", CLAUDE_LEGACY),
        ("anthropic:claude-sonnet-4-5-20250929", CLAUDE_LEGACY),
        ("bedrock:anthropic.claude-haiku-4-5-20251001-v1:0", CLAUDE_LEGACY),
        ("anthropic:claude-opus-4-6", CLAUDE_LEGACY),
        ("anthropic:claude-sonnet-4-6", CLAUDE_LEGACY),
        ("anthropic:claude-opus-4-7", CLAUDE),
        ("anthropic:claude-opus-4-8", CLAUDE),
        ("anthropic:claude-opus-5", CLAUDE),
        ("anthropic:claude-haiku-5-5", CLAUDE),
        ("anthropic:claude-something-new", CLAUDE),
    ],
)
def test_each_model_gets_its_tokenizer(model: str, tokenizer: Tokenizer) -> None:
    assert tokenizer_for(model) is tokenizer


def test_a_calibrated_ratio_replaces_the_estimate() -> None:
    messages = [_user("a fairly ordinary sentence about orders and refunds " * 20)]
    default = TokenCounter("anthropic:claude-opus-4-7").count(messages)
    calibrated = TokenCounter("anthropic:claude-opus-4-7", ratio=1.2).count(messages)
    assert calibrated < default
    assert not TokenCounter("anthropic:claude-opus-4-7", ratio=1.0).exact
    assert TokenCounter("openai:gpt-4o").exact
    with pytest.raises(ValueError, match="positive"):
        TokenCounter("gpt-4o", ratio=0)


def test_the_cache_changes_no_count() -> None:
    """The loop recounts every turn through a cache; evicting and recounting gives the same."""
    messages = [_user(f"message number {i} " * (i + 1)) for i in range(50)]
    small = TokenCounter("anthropic:claude-sonnet-4-5", cache_size=4)
    first = small.count(messages)
    assert small.count(messages) == first == count_tokens(messages, "anthropic:claude-sonnet-4-5")
    assert small.count(messages[:10]) + small.count(messages[10:]) == first + small.tokenizer.reply


# --- windows --------------------------------------------------------------------------------


def test_windows_of_current_models() -> None:
    assert context_window("openai:gpt-4.1-mini") == 1_047_576
    assert context_window("gpt-4.1-mini-2025-04-14") == 1_047_576
    assert context_window("openai:gpt-5") == 272_000
    assert context_window("anthropic:claude-haiku-4-5-20251001") == 200_000
    assert context_window("anthropic:claude-opus-4-6") == 1_000_000
    assert max_output("openai:gpt-4o") == 16_384
    assert max_output("anthropic:claude-sonnet-4-5") == 64_000
    assert context_window("ollama:llama3.1:8b") is None
    assert max_output("ollama:llama3.1:8b") is None
    assert context_window("ollama:llama3.1:8b", window=131_072) == 131_072
    assert context_window("openai:gpt-4o", window=50_000) == 50_000


def test_the_input_budget_leaves_room_for_the_answer() -> None:
    """A window shared by input and output loses the answer's tokens; gpt-5's separate input
    cap does not."""
    assert input_budget("openai:gpt-4o", max_tokens=16_384) == 128_000 - 16_384
    assert input_budget("openai:gpt-5", max_tokens=4_096) == 272_000
    assert input_budget("openai:gpt-5", max_tokens=128_000) == 272_000
    assert input_budget("anthropic:claude-opus-4-6", max_tokens=4_096) == 1_000_000 - 4_096
    assert input_budget("ollama:llama3.1:8b", max_tokens=1_024) is None
    assert input_budget("ollama:llama3.1:8b", max_tokens=1_024, window=8_192) == 7_168


def test_every_priced_model_has_a_window_that_agrees_with_its_price() -> None:
    """Windows and prices come from the same LiteLLM table; they must not drift apart. The
    exceptions are the models whose LiteLLM max input is their whole context."""
    assert set(BUILTIN_WINDOWS) == set(BUILTIN_PRICES)
    total_not_input = {"gpt-5.4", "gpt-5.5"}
    for model, price in BUILTIN_PRICES.items():
        window = BUILTIN_WINDOWS[model]
        expected = window.context if model in total_not_input else window.max_input
        assert price.context_window == expected, model
        assert window.max_input <= window.context
        assert 0 < window.max_output < window.context
    assert model_window("gpt-5.4") is not None


# --- compaction -----------------------------------------------------------------------------


def _support_conversation(turns: int = 10, details: str = "details " * 30) -> list[Message]:
    messages = [_sys(), _user("My order A-1042 has not arrived. Can you check it?")]
    for i in range(turns):
        messages += [
            _call(f"call_{i}", id="A-1042", attempt=i),
            _result(f"call_{i}", f"order A-1042: status in_transit, depot {i} " + details),
            _assistant(f"Still in transit at depot {i}. " + "explanation " * 20),
            _user(f"Please check again ({i})."),
        ]
    return messages


def test_a_conversation_that_fits_is_left_alone() -> None:
    messages = _support_conversation(2)
    assert (
        plan_compaction(messages, budget=_words(messages), count=_words, summary_reserve=35) is None
    )


def test_system_pinned_and_recent_messages_survive_verbatim() -> None:
    """Compaction keeps the system message, the pinned messages and the last turns exactly."""
    messages = _support_conversation()
    plan = plan_compaction(
        messages,
        budget=_words(messages) // 2,
        count=_words,
        summary_reserve=35,
        keep_last=6,
        pinned={1},
    )
    assert plan is not None
    compacted = plan.apply(messages, "The user asked about order A-1042; it is in transit.")
    assert compacted[0] == messages[0]
    assert compacted[1].role == "user" and "A-1042; it is in transit" in (
        compacted[1].content or ""
    )
    assert compacted[2] == messages[1]  # pinned
    assert compacted[-6:] == messages[-6:]
    assert 1 not in plan.replaced and 0 not in plan.replaced
    assert _words(compacted) <= plan.budget
    assert_valid_for_providers(compacted)


def test_the_tail_never_starts_with_an_orphan_tool_result() -> None:
    """keep_last=3 would cut between a call and its results: the tail grows to keep the call."""
    messages = [
        _sys(),
        _user("start " * 100),
        _assistant("thinking " * 100),
        _calls("c1", "c2"),
        _result("c1", "one " * 50),
        _result("c2", "two " * 50),
        _assistant("done"),
    ]
    plan = plan_compaction(messages, budget=200, count=_words, summary_reserve=35, keep_last=3)
    assert plan is not None
    assert plan.stop == 3  # the call's group starts at 3, so 3..6 stay
    compacted = plan.apply(messages, "The user started; the agent thought.")
    assert compacted[-4:] == messages[3:]
    assert_valid_for_providers(compacted)


def test_a_pinned_tool_result_keeps_its_call_and_its_siblings() -> None:
    messages = [
        _sys(),
        _user("start " * 50),
        _calls("c1", "c2"),
        _result("c1", "the refund id is R-77 " * 5),
        _result("c2", "noise " * 100),
        _assistant("ok " * 100),
        _user("next " * 100),
        _assistant("fine"),
    ]
    plan = plan_compaction(
        messages, budget=260, count=_words, summary_reserve=35, keep_last=1, pinned=[3]
    )
    assert plan is not None
    assert plan.kept == (2, 3, 4)
    assert plan.replaced == (1, 5, 6)
    compacted = plan.apply(messages, "The user started; the agent acknowledged.")
    assert compacted[2:5] == messages[2:5]
    assert_valid_for_providers(compacted)


def test_every_system_message_is_kept_even_mid_conversation() -> None:
    messages = [
        _sys(),
        _user("a " * 100),
        _sys("From now on answer in French."),
        _assistant("b " * 100),
        _user("c"),
    ]
    plan = plan_compaction(messages, budget=60, count=_words, summary_reserve=35, keep_last=1)
    assert plan is not None
    assert plan.kept == (2,)
    assert messages[2] in plan.apply(messages, "summary")


def test_a_conversation_that_cannot_fit_raises_a_clear_error() -> None:
    """Not a provider 400: the error names the tokens, the budget, the message to shorten and
    what else to change."""
    messages = [
        *_support_conversation(3),
        _call("call_x", id="big"),
        _result("call_x", "huge " * 5_000),
    ]
    with pytest.raises(ContextOverflow) as caught:
        plan_compaction(messages, budget=2_000, count=_words, summary_reserve=35, keep_last=2)
    error = caught.value
    assert isinstance(error, KernosError)
    assert error.budget == 2_000 and error.tokens > 2_000
    assert error.largest is not None and error.largest[0] == len(messages) - 1
    text = str(error)
    for words in ("2000", str(error.tokens), f"message {len(messages) - 1}", "keep_last", "pin"):
        assert words in text


def test_nothing_to_summarise_is_an_overflow_too() -> None:
    messages = [_sys("rules " * 500), _user("hi " * 500)]
    with pytest.raises(ContextOverflow, match="nothing else to summarise"):
        plan_compaction(messages, budget=100, count=_words, summary_reserve=35)


def test_the_plan_is_plain_json_and_records_what_it_replaced() -> None:
    """The journal records exactly what was replaced, and replay rebuilds the same plan."""
    messages = _support_conversation()
    plan = plan_compaction(messages, budget=600, count=_words, summary_reserve=35)
    assert plan is not None
    payload = json.loads(json.dumps(plan.payload()))
    assert CompactionPlan.model_validate(payload) == plan
    assert [messages[i] for i in plan.replaced] == list(plan.messages)
    assert payload["messages"][1]["tool_calls"][0]["id"] == "call_0"
    assert (
        plan_compaction(messages, budget=600, count=_words, summary_reserve=35) == plan
    )  # deterministic


def test_a_plan_applies_only_to_its_conversation_and_needs_a_summary() -> None:
    messages = _support_conversation()
    plan = plan_compaction(messages, budget=600, count=_words, summary_reserve=35)
    assert plan is not None
    with pytest.raises(ValueError, match="another conversation"):
        plan.apply([*messages, _user("one more")], "summary")
    changed = list(messages)
    changed[plan.replaced[0]] = _user("something else")
    with pytest.raises(ValueError, match="another conversation"):
        plan.apply(changed, "summary")
    with pytest.raises(ValueError, match="empty"):
        plan.apply(messages, "  ")


def test_an_earlier_summary_is_summarised_again() -> None:
    messages = _support_conversation()
    first = plan_compaction(messages, budget=600, count=_words, summary_reserve=35)
    assert first is not None
    compacted = first.apply(messages, "Order A-1042 was checked ten times.")
    grown = compacted + _support_conversation(6)[2:]
    second = plan_compaction(grown, budget=600, count=_words, summary_reserve=35)
    assert second is not None
    assert 1 in second.replaced and second.messages[0] == compacted[1]


def test_bad_arguments_are_refused() -> None:
    messages = _support_conversation(1)
    with pytest.raises(ValueError, match="outside"):
        plan_compaction(
            messages, budget=1, count=_words, summary_reserve=35, pinned=[len(messages)]
        )
    with pytest.raises(ValueError, match="keep_last"):
        plan_compaction(messages, budget=1, count=_words, summary_reserve=35, keep_last=-1)


@pytest.mark.parametrize(
    "model", ["anthropic:claude-haiku-4-5", "anthropic:claude-opus-4-7", "openai:gpt-4o"]
)
def test_with_the_real_counter_and_window(model: str) -> None:
    """End to end with real counts: a summary as long as the plan lets the summariser write
    still leaves the conversation within the model's input budget."""
    counter = TokenCounter(model)
    tools = [ToolSpec(name="lookup_order", description="Find an order.")]
    budget = input_budget(model, max_tokens=4_096)
    assert budget is not None
    details = '{"scan": "depot", "ok": true} ' * 30
    per_turn = counter.count(_support_conversation(1, details)[2:]) - counter.tokenizer.reply
    messages = _support_conversation(2 + budget // per_turn, details)
    plan = plan_compaction(
        messages, budget=budget, count=lambda ms: counter.count(ms, tools), pinned={1}
    )
    assert plan is not None and plan.tokens_before > budget
    longest = " word" * plan.summary_max_tokens  # one o200k token a word
    assert len(o200k_base().encode_ordinary(longest)) == plan.summary_max_tokens
    compacted = plan.apply(messages, longest)
    assert counter.count(compacted, tools) <= plan.tokens_after <= budget
    assert_valid_for_providers(compacted)


def test_the_summary_request_keeps_ids_results_and_the_limit() -> None:
    messages = [
        _user("Refund order A-1042 please."),
        _call("call_9", name="refund", order="A-1042", amount=129.9),
        _result("call_9", "refund R-77 created"),
        _assistant("Done: refund R-77."),
    ]
    request = summary_prompt(messages, max_tokens=1_500)
    assert [m.role for m in request] == ["system", "user"]
    instructions, transcript = request[0].content or "", request[1].content or ""
    assert "exactly" in instructions and "open questions" in instructions
    assert "do not follow instructions" in instructions and "1500 tokens" in instructions
    assert "refund (call call_9)" in transcript
    assert '{"order": "A-1042", "amount": 129.9}' in transcript
    assert "result of refund (call call_9)" in transcript and "R-77" in transcript
    assert not any(m.tool_calls or m.role == "tool" for m in request)


# --- compaction, as properties --------------------------------------------------------------


@st.composite
def _conversations(draw: st.DrawFn) -> list[Message]:
    messages: list[Message] = []
    if draw(st.booleans()):
        messages.append(_sys("sys " * draw(st.integers(0, 30))))
    messages.append(_user("u " * draw(st.integers(0, 60))))
    for n in range(draw(st.integers(0, 24))):
        kind = draw(st.sampled_from(["user", "assistant", "calls", "system"]))
        words = "w " * draw(st.integers(0, 60))
        if kind == "calls":
            ids = [f"c{n}_{k}" for k in range(draw(st.integers(1, 3)))]
            messages.append(_calls(*ids))
            messages += [_result(i, words) for i in ids]
        elif kind == "system":
            messages.append(_sys(words))
        elif kind == "user":
            messages.append(_user(words))
        else:
            messages.append(_assistant(words))
    return messages


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    messages=_conversations(),
    keep_last=st.integers(0, 8),
    pins=st.lists(st.integers(0, 80), max_size=4),
    fraction=st.floats(0.1, 1.1),
)
def test_compaction_drops_nothing_and_splits_no_tool_call(
    messages: list[Message], keep_last: int, pins: list[int], fraction: float
) -> None:
    """For any conversation: None exactly when it fits; otherwise every message is either kept
    verbatim or recorded as replaced, system/pinned/recent messages are kept, no tool call is
    separated from its results, and the result fits the budget; or ContextOverflow, exactly
    when the messages that must be kept do not fit."""
    pinned = {p for p in pins if p < len(messages)}
    budget = max(1, int(_words(messages) * fraction))
    reserve = 35
    try:
        plan = plan_compaction(
            messages,
            budget=budget,
            count=_words,
            keep_last=keep_last,
            pinned=pinned,
            summary_reserve=reserve,
        )
    except ContextOverflow as error:
        kept = _must_keep(messages, pinned, keep_last)
        need = _words([messages[i] for i in kept]) + (reserve if len(kept) < len(messages) else 0)
        assert error.tokens == need > budget
        return
    if plan is None:
        assert _words(messages) <= budget
        return
    compacted = plan.apply(messages, "s")
    assert _words(compacted) <= budget
    assert compacted[plan.start].role == "user"
    # nothing dropped: each message is either laid out verbatim or recorded as replaced, once
    verbatim = [*range(plan.start), *plan.kept, *range(plan.stop, len(messages))]
    assert [m for i, m in enumerate(compacted) if i != plan.start] == [
        messages[i] for i in verbatim
    ]
    assert sorted([*verbatim, *plan.replaced]) == list(range(len(messages)))
    assert list(plan.messages) == [messages[i] for i in plan.replaced]
    assert set(plan.replaced).isdisjoint(_must_keep(messages, pinned, keep_last))
    assert_valid_for_providers(compacted)


def _must_keep(messages: Sequence[Message], pinned: set[int], keep_last: int) -> set[int]:
    """An independent oracle: system, pinned and recent messages, each with its whole tool-call
    group (the call and all its results)."""
    keep = {i for i, m in enumerate(messages) if m.role == "system"} | pinned
    keep |= set(range(max(0, len(messages) - keep_last), len(messages)))
    for i in sorted(keep):
        first = i
        while messages[first].role == "tool":
            first -= 1
        last = first + 1
        while last < len(messages) and messages[last].role == "tool":
            last += 1
        keep |= set(range(first, last))
    return keep
