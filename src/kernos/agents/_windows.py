"""What a model can hold: its context window and output limit, and how its tokens are counted.

Memory compacts a conversation before it reaches the model's window (DESIGN.md, "Agents, tools,
memory"), so the window must be known before the provider answers 400. The built-in table holds
current OpenAI and Anthropic models; a caller with better knowledge (``[prices]`` in
``kernos.toml``, a local model) passes the window explicitly and the table is not consulted.

Token counting runs offline: OpenAI publishes its tokenizer (``o200k_base``, shipped inside
kernos), Anthropic does not. For a model whose tokenizer is not public, counts are o200k_base
counts scaled by a *ratio* chosen to over-count: compacting a little early costs a summary, a
count that is too low costs a failed call.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final


@dataclass(frozen=True, slots=True)
class ModelWindow:
    """The limits of one request to a model, in the model's own tokens.

    ``context`` is what input and output may total; ``max_input`` is the most input a request
    may carry whatever it asks for in output (smaller than ``context`` where the provider caps
    input separately, as OpenAI does for ``gpt-5``: 272,000 of 400,000); ``max_output`` is the
    most a single answer may generate.
    """

    context: int
    max_input: int
    max_output: int

    def input_budget(self, max_tokens: int) -> int:
        """The most input tokens a request may carry when it asks for ``max_tokens`` of output."""
        return min(self.max_input, self.context - max_tokens)


def _w(context: int, max_output: int, max_input: int | None = None) -> ModelWindow:
    return ModelWindow(context=context, max_input=max_input or context, max_output=max_output)


_GPT5: Final = _w(400_000, 128_000, 272_000)
_GPT5_LONG: Final = _w(1_050_000, 128_000, 922_000)
_CLAUDE_1M: Final = _w(1_000_000, 128_000)
_CLAUDE_200K: Final = _w(200_000, 64_000)

#: Windows by undated model name, from the same source as the gateway's price table: LiteLLM's
#: model_prices_and_context_window.json in litellm 1.110.2 (1.77.5 for the retired Anthropic
#: models), checked 2026-11-26. Where it differs from LiteLLM:
#:
#: - gpt-5.4 and gpt-5.5: LiteLLM lists 1,050,000 as max input, but that is the whole context;
#:   OpenAI documents 922,000 input + 128,000 output, the split LiteLLM gives gpt-5.6-*.
#: - claude-3-7-sonnet: 64,000 output (LiteLLM's 128,000 needs a beta header kernos doesn't send);
#:   claude-sonnet-4: a 200,000 window (LiteLLM's 1,000,000 needs a beta header too).
#:
#: Anthropic's window holds input and output together; so does OpenAI's, except where
#: ``max_input`` is smaller.
BUILTIN_WINDOWS: Final[Mapping[str, ModelWindow]] = MappingProxyType(
    {
        # OpenAI
        "gpt-6-astra": _GPT5_LONG,
        "gpt-6.1-sol": _GPT5_LONG,
        "gpt-6-sol": _GPT5_LONG,
        "gpt-6.1-terra": _GPT5_LONG,
        "gpt-6-luna": _GPT5_LONG,
        "gpt-5.6-sol": _GPT5_LONG,
        "gpt-5.6-terra": _GPT5_LONG,
        "gpt-5.6-luna": _GPT5_LONG,
        "gpt-5.5": _GPT5_LONG,
        "gpt-5.4": _GPT5_LONG,
        "gpt-5.4-mini": _GPT5,
        "gpt-5.4-nano": _GPT5,
        "gpt-5.2": _GPT5,
        "gpt-5.2-pro": _GPT5,
        "gpt-5.1": _GPT5,
        "gpt-5": _GPT5,
        "gpt-5-mini": _GPT5,
        "gpt-5-nano": _GPT5,
        "gpt-5-chat": _w(128_000, 16_384),
        "gpt-4.1": _w(1_047_576, 32_768),
        "gpt-4.1-mini": _w(1_047_576, 32_768),
        "gpt-4.1-nano": _w(1_047_576, 32_768),
        "gpt-4o": _w(128_000, 16_384),
        "gpt-4o-2024-05-13": _w(128_000, 4_096),
        "gpt-4o-mini": _w(128_000, 16_384),
        "o3": _w(200_000, 100_000),
        "o4-mini": _w(200_000, 100_000),
        "o3-mini": _w(200_000, 100_000),
        "o1": _w(200_000, 100_000),
        # Anthropic
        "claude-opus-5-5": _CLAUDE_1M,
        "claude-opus-5": _CLAUDE_1M,
        "claude-fable-5-1": _CLAUDE_1M,
        "claude-fable-5": _CLAUDE_1M,
        "claude-mythos-5-1": _CLAUDE_1M,
        "claude-mythos-5": _CLAUDE_1M,
        "claude-sonnet-5-5": _CLAUDE_1M,
        "claude-sonnet-5": _CLAUDE_1M,
        "claude-haiku-5-5": _CLAUDE_1M,
        "claude-opus-4-8": _CLAUDE_1M,
        "claude-opus-4-7": _CLAUDE_1M,
        "claude-opus-4-6": _CLAUDE_1M,
        "claude-sonnet-4-6": _CLAUDE_1M,
        "claude-opus-4-5": _CLAUDE_200K,
        "claude-sonnet-4-5": _CLAUDE_200K,
        "claude-haiku-4-5": _CLAUDE_200K,
        "claude-opus-4-1": _w(200_000, 32_000),
        "claude-opus-4": _w(200_000, 32_000),
        "claude-sonnet-4": _CLAUDE_200K,
        "claude-3-7-sonnet": _CLAUDE_200K,
        "claude-3-5-haiku": _w(200_000, 8_192),
    }
)

# OpenAI dates its snapshots "-2025-04-14", Anthropic "-20250929"; both alias "-latest".
_SNAPSHOT = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|latest)$")


def model_name(model: str) -> str:
    """The model part of ``provider:model`` (``openai:gpt-4.1-mini`` → ``gpt-4.1-mini``); a
    bare name, which must then not contain a colon, is returned unchanged."""
    return model.partition(":")[2] if ":" in model else model


def model_window(model: str) -> ModelWindow | None:
    """The built-in limits of ``model`` (``provider:model`` or bare, dated or not), or ``None``
    when the table does not know it."""
    name = model_name(model)
    return BUILTIN_WINDOWS.get(name) or BUILTIN_WINDOWS.get(_SNAPSHOT.sub("", name))


def context_window(model: str, *, window: int | None = None) -> int | None:
    """The most input tokens a request to ``model`` may carry: ``window`` when the caller gives
    one (it knows better: a configured override, a local model), else the built-in table's;
    ``None`` when neither knows."""
    if window is not None:
        return window
    known = model_window(model)
    return None if known is None else known.max_input


def max_output(model: str) -> int | None:
    """The most tokens one answer of ``model`` may generate, or ``None`` when unknown."""
    known = model_window(model)
    return None if known is None else known.max_output


def input_budget(model: str, *, max_tokens: int, window: int | None = None) -> int | None:
    """The most input tokens a request may carry while leaving ``max_tokens`` for the answer.

    A ``window`` given by the caller is taken as shared by input and output (the safe reading
    when nothing says otherwise). ``None`` when the window is unknown: the caller must then
    supply one, since compaction needs a limit to compact against.
    """
    if window is not None:
        return window - max_tokens
    known = model_window(model)
    return None if known is None else known.input_budget(max_tokens)


@dataclass(frozen=True, slots=True)
class Tokenizer:
    """How a model's input tokens are counted from o200k_base counts.

    ``ratio`` is model tokens per o200k_base token (1.0 when o200k_base *is* the model's
    tokenizer, ``exact``); the overheads are in model tokens: per message (role and framing),
    per tool call in an assistant message, once when tools are offered (the provider's own tool
    instructions) and once for the reply's priming.
    """

    name: str
    ratio: float
    exact: bool
    per_message: int
    per_call: int
    tools_preamble: int
    per_tool: int
    reply: int


#: OpenAI's models since gpt-4o. Overheads from OpenAI's cookbook ("How to count tokens with
#: tiktoken"): 3 per message, 3 to prime the reply, and for tools 7 per function and 12 in all.
#: Tool schemas are counted as their JSON, which takes more tokens than the TypeScript-like form
#: OpenAI renders them in; tool calls as their name, id and JSON arguments plus 8.
O200K: Final = Tokenizer(
    name="o200k_base",
    ratio=1.0,
    exact=True,
    per_message=3,
    per_call=8,
    tools_preamble=12,
    per_tool=7,
    reply=3,
)

#: An OpenAI model tiktoken does not name yet (gpt-6*). Every OpenAI chat model since gpt-4o
#: uses o200k_base; the margin covers a successor vocabulary a quarter less efficient.
OPENAI_UNCONFIRMED: Final = Tokenizer(
    name="o200k_base, unconfirmed",
    ratio=1.25,
    exact=False,
    per_message=4,
    per_call=10,
    tools_preamble=15,
    per_tool=9,
    reply=4,
)

#: Claude 3 to Claude Opus 4.6 and Sonnet 4.6, whose tokenizer is not public. Measured against
#: GPT-4o's o200k_base (Claude 3.5 Sonnet, 2024): English +16 %, maths +21 %, Python +30 %;
#: 1.35 covers those with a margin. Tools add Anthropic's documented tool-use system prompt
#: (346 tokens on Claude 4 models) plus a margin.
CLAUDE_LEGACY: Final = Tokenizer(
    name="claude (estimate)",
    ratio=1.35,
    exact=False,
    per_message=7,
    per_call=15,
    tools_preamble=400,
    per_tool=10,
    reply=3,
)

#: Claude Opus 4.7 and later (4.8, the 5 generation), whose newer tokenizer Anthropic says takes
#: 1.0-1.35x the tokens of the previous one; measured with Anthropic's count_tokens at up to
#: 1.47x on English technical text, 1.29-1.39x on code, about 1.0x on CJK and Cyrillic. Over
#: o200k_base that is up to 1.16 x 1.47 = 1.71 for English and 1.30 x 1.39 = 1.81 for code, so
#: 1.85. Also used for Claude models not known to be older.
CLAUDE: Final = Tokenizer(
    name="claude 4.7+ (estimate)",
    ratio=1.85,
    exact=False,
    per_message=10,
    per_call=20,
    tools_preamble=600,
    per_tool=15,
    reply=4,
)

#: Any other model (a local model, an OpenAI model with an older vocabulary such as gpt-4's
#: cl100k_base): nothing is known, so the most conservative ratio. Pass ``ratio=`` to the
#: counter when the model's tokenizer is known to be more efficient.
UNKNOWN: Final = Tokenizer(
    name="unknown (estimate)",
    ratio=1.85,
    exact=False,
    per_message=10,
    per_call=20,
    tools_preamble=100,
    per_tool=15,
    reply=5,
)

#: the largest ratio of any estimate: what a length in unknown tokens may grow to when counted
LARGEST_RATIO: Final = max(
    t.ratio for t in (O200K, OPENAI_UNCONFIRMED, CLAUDE_LEGACY, CLAUDE, UNKNOWN)
)

_DATED = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8})(?=$|[-@:])")
_CLAUDE_BEFORE_4_7 = re.compile(
    r"claude-(?:instant|[123](?:[-.]|$)|(?:opus|sonnet|haiku)-4(?:-[0-6])?(?!-?\d))"
)
# OpenAI's o200k_base models, by name (as tiktoken maps them, fixed here so that a count does
# not change with the installed tiktoken's version): gpt-4o, gpt-4.1, gpt-4.5, gpt-5.x, o1/o3/o4
_O200K_MODELS = re.compile(
    r"^(?:chatgpt-4o|gpt-4o|gpt-4\.1|gpt-4\.5|gpt-5|o[134]|gpt-oss)(?:$|[-.])"
)
_CL100K_MODELS = re.compile(r"^(?:gpt-4|gpt-3\.5|gpt-35)(?:$|-)")
_OPENAI = re.compile(r"^(?:gpt-|chatgpt-|o\d)")


def tokenizer_for(model: str) -> Tokenizer:
    """How ``model``'s tokens are counted: exactly for OpenAI's o200k_base models, by a
    conservative estimate for every other (gpt-4 and gpt-3.5 use cl100k_base, not shipped)."""
    name = _DATED.sub("", model_name(model).lower())
    if "claude" in name:
        return CLAUDE_LEGACY if _CLAUDE_BEFORE_4_7.search(name) else CLAUDE
    if _O200K_MODELS.match(name):
        return O200K
    if _OPENAI.match(name) and not _CL100K_MODELS.match(name):
        return OPENAI_UNCONFIRMED
    return UNKNOWN
