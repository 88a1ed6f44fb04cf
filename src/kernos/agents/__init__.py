"""The agents layer: the declarative tool-calling Agent, tools, MCP and memory.

See DESIGN.md, "Agents, tools, memory". Tools are plain Python functions described to the model
from their type hints and docstring.
"""

from kernos.agents._agent import Agent, AgentTool
from kernos.agents._loops import LoopGuard, Refusal, fingerprint
from kernos.agents._tools import Tool, ToolArgumentsInvalid, as_tool, tool

__all__ = [
    "Agent",
    "AgentTool",
    "LoopGuard",
    "Refusal",
    "Tool",
    "ToolArgumentsInvalid",
    "as_tool",
    "fingerprint",
    "tool",
]
