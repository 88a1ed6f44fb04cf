"""The agents layer: the declarative tool-calling Agent, tools, MCP and memory.

See DESIGN.md, "Agents, tools, memory". Tools are plain Python functions described to the model
from their type hints and docstring.
"""

from kernos.agents._agent import Agent, AgentTool, MemoryTool, memory_tools
from kernos.agents._context import (
    CompactionPlan,
    TokenCounter,
    count_tokens,
    plan_compaction,
    summary_prompt,
)
from kernos.agents._loops import LoopGuard, Refusal, fingerprint
from kernos.agents._mcp import McpServer, McpToolError, mcp_server
from kernos.agents._tools import Tool, ToolArgumentsInvalid, as_tool, tool
from kernos.agents._windows import context_window, input_budget, max_output

__all__ = [
    "Agent",
    "AgentTool",
    "CompactionPlan",
    "LoopGuard",
    "McpServer",
    "McpToolError",
    "MemoryTool",
    "Refusal",
    "TokenCounter",
    "Tool",
    "ToolArgumentsInvalid",
    "as_tool",
    "context_window",
    "count_tokens",
    "fingerprint",
    "input_budget",
    "max_output",
    "mcp_server",
    "memory_tools",
    "plan_compaction",
    "summary_prompt",
    "tool",
]
