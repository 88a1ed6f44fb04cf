"""An agent that asks a person, for tests that kill its worker around a notification.

The worker finds its webhook in the kernos.toml that ``KERNOS_CONFIG`` names.
"""

from __future__ import annotations

from typing import Any

import kernos


@kernos.agent("asks")
async def asks(ctx: kernos.RunContext, job: dict[str, Any]) -> dict[str, Any]:
    decision = await ctx.ask_human(
        job.get("question", "May I?"),
        timeout=job.get("timeout"),
        on_timeout=job.get("on_timeout", "reject"),
        escalation_timeout=job.get("escalation_timeout"),
    )
    return {"approved": decision.approved, "by": decision.by, "expired": decision.expired}
