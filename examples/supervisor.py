"""A supervisor delegating to two specialists and collecting their answers durably.

    kernos worker --app examples.supervisor
    kernos run supervisor --app examples.supervisor --input '"Can I return a kettle I bought 40 days ago?"' --wait

The supervisor starts one child run per specialist (``ctx.spawn``: each has its own journal,
linked to the parent in the trace); each specialist asks the model and sends its answer back
to the parent (``ctx.send``); the parent waits for both answers (``ctx.wait_for_message``:
while it waits it holds nothing in any worker) and writes the reply. Kill any worker at any
point: every run resumes where it was, and no message is sent twice.
"""

from __future__ import annotations

from typing import Any

import kernos

SPECIALISTS = {
    "policy": "You know ACME's return policy: 30 days, 60 for members. Answer in one sentence.",
    "logistics": "You know how returns are shipped: free label, 5 days. Answer in one sentence.",
}


@kernos.agent("specialist")
async def specialist(ctx: kernos.RunContext, job: dict[str, Any]) -> str:
    """Answers one question from one angle, and reports to the run that asked."""
    answer = await ctx.llm(
        "support",
        [
            {"role": "system", "content": SPECIALISTS[job["role"]]},
            {"role": "user", "content": job["question"]},
        ],
    )
    if ctx.parent_id is not None:
        await ctx.send(ctx.parent_id, "answers", {"role": job["role"], "text": answer.text})
    return str(answer.text)


@kernos.agent("supervisor")
async def supervisor(ctx: kernos.RunContext, question: str) -> dict[str, Any]:
    """Delegates to every specialist at once, then combines what they say."""
    for role in SPECIALISTS:
        await ctx.spawn("specialist", {"role": role, "question": question})
    answers: dict[str, str] = {}
    while len(answers) < len(SPECIALISTS):
        message = await ctx.wait_for_message("answers", timeout=3600)
        if message is None:
            raise TimeoutError(f"specialists answered {sorted(answers)} only, within an hour")
        answers[message["role"]] = message["text"]
    notes = "\n".join(f"{role}: {answers[role]}" for role in sorted(answers))
    reply = await ctx.llm(
        "support",
        [
            {"role": "system", "content": "Write the customer one short, friendly reply."},
            {"role": "user", "content": f"Question: {question}\nWhat we know:\n{notes}"},
        ],
    )
    return {"answers": answers, "reply": reply.text}
