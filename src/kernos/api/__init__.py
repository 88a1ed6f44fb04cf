"""The HTTP API (``kernos serve``): runs, approvals, messages, costs, budgets, audit and MCP
tool pins, over the journal and the store.

An interface layer: no business logic of its own (DESIGN.md, "Interfaces"). Each route checks
the caller's API key, role and tenant, calls the kernel's ``Client`` or the store, and answers
with a pydantic model, or an RFC 9457 problem document for every error.

    app = kernos.api.create_app("postgresql://kernos@db/kernos")   # any ASGI server runs it
"""

from kernos.api._app import create_app
from kernos.api._auth import GRANTS, Permission, Principal
from kernos.api._config import ApiConfig
from kernos.api._problems import Problem

__all__ = ["GRANTS", "ApiConfig", "Permission", "Principal", "Problem", "create_app"]
