"""The governance layer: access policy, redaction, budgets and audit over the journal.

See DESIGN.md, "Oversight and governance". Checks come before effects (guarantee 6): the
kernel asks this layer before each tool and LLM call, and each decision is journaled.
"""

from kernos.governance._budgets import BudgetLine, budget_report
from kernos.governance._config_audit import CONFIG_CHANGED, audit_config, config_actor
from kernos.governance._governor import Budget, Governor, governor_from_config, load_budgets
from kernos.governance._policy import (
    EFFECTS,
    Decision,
    Effect,
    Policy,
    Rule,
    Subject,
    load_policy,
)
from kernos.governance._redact import (
    ALWAYS_ON_PATTERNS,
    OPTIONAL_PATTERNS,
    RedactionConfig,
    Redactor,
    TenantRedaction,
    redactor_from_config,
)
from kernos.governance._replay import (
    RecordedCall,
    ReplayedCall,
    ReplayReport,
    RuleTally,
    recorded_calls,
    replay_policy,
)
from kernos.governance._tenants import TenantsConfig, tenant_limits_from_config
from kernos.governance._webhooks import (
    TargetRefused,
    WebhookNotifier,
    notifier_from_config,
    sign,
    verify,
)

__all__ = [
    "ALWAYS_ON_PATTERNS",
    "CONFIG_CHANGED",
    "EFFECTS",
    "OPTIONAL_PATTERNS",
    "Budget",
    "BudgetLine",
    "Decision",
    "Effect",
    "Governor",
    "Policy",
    "RecordedCall",
    "RedactionConfig",
    "Redactor",
    "ReplayReport",
    "ReplayedCall",
    "Rule",
    "RuleTally",
    "Subject",
    "TargetRefused",
    "TenantRedaction",
    "TenantsConfig",
    "WebhookNotifier",
    "audit_config",
    "budget_report",
    "config_actor",
    "governor_from_config",
    "load_budgets",
    "load_policy",
    "notifier_from_config",
    "recorded_calls",
    "redactor_from_config",
    "replay_policy",
    "sign",
    "tenant_limits_from_config",
    "verify",
]
