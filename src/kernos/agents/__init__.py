"""The agents layer: tools, and (coming) the declarative tool-calling Agent, MCP and memory.

See DESIGN.md, "Agents, tools, memory". Tools are plain Python functions described to the model
from their type hints and docstring.
"""

from kernos.agents._loops import LoopGuard, Refusal, fingerprint
from kernos.agents._tools import Tool, ToolArgumentsInvalid, as_tool, tool

__all__ = [
    "LoopGuard",
    "Refusal",
    "Tool",
    "ToolArgumentsInvalid",
    "as_tool",
    "fingerprint",
    "tool",
]
