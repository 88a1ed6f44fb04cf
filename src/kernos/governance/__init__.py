"""The governance layer: access policy, redaction, budgets and audit over the journal.

See DESIGN.md, "Oversight and governance". Checks come before effects (guarantee 6): the
kernel asks this layer before each tool and LLM call, and each decision is journaled.
"""

from kernos.governance._webhooks import (
    TargetRefused,
    WebhookNotifier,
    notifier_from_config,
    sign,
    verify,
)

__all__ = [
    "TargetRefused",
    "WebhookNotifier",
    "notifier_from_config",
    "sign",
    "verify",
]
