"""The HTTP API (``kernos serve``): runs, approvals, messages, costs, audit, over the journal.

An interface layer: no business logic of its own (DESIGN.md, "Interfaces").
"""

__all__: list[str] = []
