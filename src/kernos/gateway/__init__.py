"""The gateway layer: every LLM call goes through it (see DESIGN.md, "Gateway").

One request/response model for OpenAI-compatible and Anthropic providers; classified errors,
retries with backoff that honours ``retry-after``, a circuit breaker per endpoint, fallback
along a route, client-side rate limits, and cost from real usage.
"""

from kernos.gateway._attempts import Attempt
from kernos.gateway._config import (
    CONFIG_ENV,
    DEFAULT_CONFIG_FILE,
    Endpoint,
    GatewayConfig,
    GatewaySettings,
    ProviderConfig,
    find_config_file,
    load_config,
    problem_reason,
    read_config_file,
)
from kernos.gateway._costs import GROUPS, CostGroup, CostLine, cost_report
from kernos.gateway._gateway import Gateway
from kernos.gateway._prices import Price, PriceTable
from kernos.gateway._provider import LLMRequest, ModelProvider, ProviderError, ProviderResult
from kernos.gateway._service import LLMService, default_services
from kernos.gateway._types import (
    ErrorClass,
    FinishReason,
    LLMResponse,
    Message,
    StreamDelta,
    ToolCall,
    ToolSpec,
    Usage,
)

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_FILE",
    "GROUPS",
    "Attempt",
    "CostGroup",
    "CostLine",
    "Endpoint",
    "ErrorClass",
    "FinishReason",
    "Gateway",
    "GatewayConfig",
    "GatewaySettings",
    "LLMRequest",
    "LLMResponse",
    "LLMService",
    "Message",
    "ModelProvider",
    "Price",
    "PriceTable",
    "ProviderConfig",
    "ProviderError",
    "ProviderResult",
    "StreamDelta",
    "ToolCall",
    "ToolSpec",
    "Usage",
    "cost_report",
    "default_services",
    "find_config_file",
    "load_config",
    "problem_reason",
    "read_config_file",
]
