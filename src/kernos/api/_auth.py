"""Who is calling, and what they may do: API keys, roles and tenants.

Every ``/v1`` request carries ``Authorization: Bearer <key>``. The key (made by
``kernos keys create``, stored hashed) names a role and a tenant:

=========  ==========================================================================
role       may
=========  ==========================================================================
viewer     read runs, journals, live events and costs
operator   viewer + start runs, pause, resume, cancel, send messages
approver   viewer + list, show, approve and reject approvals
admin      everything, the audit log and MCP tool pins included
=========  ==========================================================================

A key with a tenant sees only that tenant's runs (and approvals, costs, budgets, audit
entries): another tenant's run answers 404 exactly as an unknown id does, so ids do not leak
across tenants. Only admin keys may have no tenant, and they see all tenants. What belongs to
no tenant but to the whole fleet (MCP tool pins: accepting a change offers the tool to every
tenant's agents) needs an admin key without a tenant.

Authentication happens in an ASGI middleware, before the request body is read: a caller
without a valid key learns nothing about the API (not even whether its JSON was valid), and a
large body from a stranger is never parsed. The role check is a dependency of each route.

Lookups are cached for ``ApiConfig.key_cache_ttl`` seconds (5 by default), keyed by a SHA-256
of the secret, so a busy API does not query the store per request; a revoked key therefore
still works for up to that long in each server process.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from kernos.errors import InfrastructureError
from kernos.store import ApiKey

from ._problems import ProblemError, problem_response, retry_after


class Permission(StrEnum):
    """What a route does, as far as access control is concerned."""

    READ = "read"
    OPERATE = "operate"
    APPROVE = "approve"
    AUDIT = "audit"
    ADMINISTER = "administer"


GRANTS: dict[str, frozenset[Permission]] = {
    "viewer": frozenset({Permission.READ}),
    "operator": frozenset({Permission.READ, Permission.OPERATE}),
    "approver": frozenset({Permission.READ, Permission.APPROVE}),
    "admin": frozenset(Permission),
}

_WHAT = {
    Permission.READ: "read runs",
    Permission.OPERATE: "start or control runs",
    Permission.APPROVE: "see or decide approvals",
    Permission.AUDIT: "read the audit log",
    Permission.ADMINISTER: "review or accept MCP tool pins",
}
_ROLES_FOR = {
    p: ", ".join(role for role, grants in GRANTS.items() if p in grants) for p in Permission
}


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller, as its API key describes it."""

    key_id: str
    name: str
    tenant: str | None
    role: str

    @classmethod
    def of(cls, key: ApiKey) -> Principal:
        return cls(key_id=key.id, name=key.name, tenant=key.tenant, role=key.role)

    @property
    def actor(self) -> str:
        """How the audit log and the journal name this caller."""
        return f"key:{self.name}/{self.key_id}"

    def may(self, permission: Permission) -> bool:
        return permission in GRANTS.get(self.role, frozenset())

    def sees(self, tenant: str | None) -> bool:
        """True when this caller may see what belongs to ``tenant``."""
        return self.tenant is None or self.tenant == tenant


KeyLookup = Callable[[str], Awaitable[ApiKey | None]]

# "kn_<id>_<random>"; anything else is refused without a query (and a NUL byte, which
# PostgreSQL cannot even compare, never reaches the store).
_SECRET = re.compile(r"kn_[0-9A-Za-z]{1,64}_[0-9A-Za-z_-]{1,256}")


class KeyCache:
    """Key lookups remembered for ``ttl`` seconds, by a SHA-256 of the secret.

    Unknown keys are remembered too (as ``None``), so a client retrying with a bad key does not
    become a query per request; the cache holds at most ``size`` entries, oldest out first.
    """

    def __init__(self, lookup: KeyLookup, *, ttl: float, size: int) -> None:
        self._lookup = lookup
        self._ttl = ttl
        self._size = size
        self._entries: OrderedDict[bytes, tuple[float, Principal | None]] = OrderedDict()

    async def principal(self, secret: str) -> Principal | None:
        if not _SECRET.fullmatch(secret):
            return None
        digest = hashlib.sha256(secret.encode()).digest()
        now = time.monotonic()
        hit = self._entries.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        key = await self._lookup(secret)
        found = Principal.of(key) if key is not None and key.revoked_at is None else None
        self._entries[digest] = (now + self._ttl, found)
        self._entries.move_to_end(digest)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)
        return found

    def clear(self) -> None:
        self._entries.clear()


_CHALLENGE = 'Bearer realm="kernos"'


class Authentication:
    """ASGI middleware: resolve the bearer key of every ``/v1`` request, or answer 401.

    ``keys`` is called per request: the cache exists only while the app runs (None before).
    """

    def __init__(self, app: ASGIApp, keys: Callable[[], KeyCache | None]) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope["path"]).startswith("/v1"):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        header = request.headers.get("authorization", "")
        scheme, _, secret = header.partition(" ")
        if not header or scheme.lower() != "bearer":
            response = problem_response(
                request,
                401,
                "this route needs an API key: send Authorization: Bearer <key> (create one "
                "with `kernos keys create`)",
                kind="unauthenticated",
                headers={"WWW-Authenticate": _CHALLENGE},
            )
            await response(scope, receive, send)
            return
        cache = self.keys()
        if cache is None:
            response = problem_response(
                request,
                503,
                "the API is starting or stopping; retry shortly",
                kind="unavailable",
                headers={"Retry-After": "1"},
            )
            await response(scope, receive, send)
            return
        try:
            principal = await cache.principal(secret.strip())
        except InfrastructureError as exc:
            response = problem_response(
                request,
                503,
                "the database is unavailable, so the API key cannot be checked; retry later",
                kind="unavailable",
                headers=retry_after(exc) or {"Retry-After": "5"},
            )
            await response(scope, receive, send)
            return
        if principal is None:
            response = problem_response(
                request,
                401,
                "the API key is unknown or revoked",
                kind="unauthenticated",
                headers={"WWW-Authenticate": f'{_CHALLENGE}, error="invalid_token"'},
            )
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


# Documents the scheme in /openapi.json; the middleware above does the checking.
_bearer = HTTPBearer(auto_error=False, description="An API key: kn_<id>_<secret>")


def require(permission: Permission) -> Callable[..., Awaitable[Principal]]:
    """A dependency that yields the caller, or answers 403 when its role may not do this."""

    async def check(
        request: Request,
        _: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    ) -> Principal:
        principal = getattr(request.state, "principal", None)
        if not isinstance(principal, Principal):  # a route outside /v1 asked for a caller
            raise ProblemError(401, "this route needs an API key", kind="unauthenticated")
        if not principal.may(permission):
            raise ProblemError(
                403,
                f"the {principal.role} role may not {_WHAT[permission]}; that needs a key "
                f"with one of the roles: {_ROLES_FOR[permission]}",
                kind="forbidden",
            )
        return principal

    return check


Reader = Annotated[Principal, Depends(require(Permission.READ))]
Operator = Annotated[Principal, Depends(require(Permission.OPERATE))]
Approver = Annotated[Principal, Depends(require(Permission.APPROVE))]
Auditor = Annotated[Principal, Depends(require(Permission.AUDIT))]


async def _fleet_admin(
    principal: Annotated[Principal, Depends(require(Permission.ADMINISTER))],
) -> Principal:
    """An admin key of no tenant: 403 for one scoped to a tenant, which may not see or change
    what every tenant shares."""
    if principal.tenant is not None:
        raise ProblemError(
            403,
            f"this is fleet-wide, shared by every tenant; a key of tenant "
            f"{principal.tenant!r} may not see or change it (use an admin key without a "
            f"tenant: kernos keys create --role admin)",
            kind="forbidden",
        )
    return principal


FleetAdmin = Annotated[Principal, Depends(_fleet_admin)]


def check_tenant_scope(principal: Principal, tenant: str | None) -> str | None:
    """The tenant a request acts for: the key's own, or for an admin key the one it names.

    A tenant-scoped key naming another tenant is refused (403): it asked for something it may
    never have, which is not the same as asking for an id that happens not to exist.
    """
    if principal.tenant is None:
        return tenant
    if tenant is not None and tenant != principal.tenant:
        raise ProblemError(
            403,
            f"this key belongs to tenant {principal.tenant!r} and may not act for "
            f"tenant {tenant!r}",
            kind="forbidden",
        )
    return principal.tenant
