"""An agent that asks a model, for tests that kill its worker in the middle of an LLM call.

The worker finds its providers in the kernos.toml that ``KERNOS_CONFIG`` names (the test
points it at the provider simulator).
"""

from __future__ import annotations

from typing import Any

import kernos


@kernos.agent("ask")
async def ask(ctx: kernos.RunContext, question: dict[str, Any]) -> dict[str, Any]:
    answer = await ctx.llm(question["route"], [{"role": "user", "content": question["text"]}])
    return {"text": answer.text, "attempts": answer.attempts, "provider": answer.provider}
