"""Keys, roles and tenants: every route against every role, and every route across tenants.

A forbidden request is 403 and changes nothing; another tenant's run or approval is 404 with
the very answer an unknown id gets, and changes nothing either (guarantee 7). Fleet-wide
routes (MCP tool pins) need an admin key without a tenant: any key of a tenant is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from kernos.api import GRANTS, ApiConfig, Permission, create_app
from kernos.kernel import Registry
from kernos.store import ROLES, ToolDefinition
from kernos.testing import FAST, running_worker

from ._api_support import CONFIG, Api, pending_approval, snapshot


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    permission: Permission
    body: dict[str, Any] | None = None
    #: shared by every tenant: only a key without a tenant may
    fleet: bool = False

    def url(self, run: str, approval: str) -> str:
        return self.path.format(run=run, approval=approval)


ROUTES = [
    Route("GET", "/v1/runs", Permission.READ),
    Route("POST", "/v1/runs", Permission.OPERATE, {"agent": "echo", "input": 1}),
    Route("GET", "/v1/runs/{run}", Permission.READ),
    Route("GET", "/v1/runs/{run}/journal", Permission.READ),
    Route("GET", "/v1/runs/{run}/events", Permission.READ),
    Route("POST", "/v1/runs/{run}/pause", Permission.OPERATE, {"reason": "matrix"}),
    Route("POST", "/v1/runs/{run}/resume", Permission.OPERATE, {"reason": "matrix"}),
    Route("POST", "/v1/runs/{run}/cancel", Permission.OPERATE, {"reason": "matrix"}),
    Route("POST", "/v1/runs/{run}/messages", Permission.OPERATE, {"topic": "t", "value": 1}),
    Route("GET", "/v1/costs?by=tenant", Permission.READ),
    Route("GET", "/v1/approvals", Permission.APPROVE),
    Route("GET", "/v1/approvals/{approval}", Permission.APPROVE),
    Route("POST", "/v1/approvals/{approval}/approve", Permission.APPROVE, {"reason": "m"}),
    Route("POST", "/v1/approvals/{approval}/reject", Permission.APPROVE, {"reason": "m"}),
    Route("GET", "/v1/audit", Permission.AUDIT),
    Route("GET", "/v1/budgets", Permission.READ),
    Route("GET", "/v1/tools/pins", Permission.ADMINISTER, fleet=True),
    Route("POST", "/v1/tools/pins/files/read/accept", Permission.ADMINISTER, {}, fleet=True),
]
#: routes that act on one run or one approval, by id
BY_ID = [r for r in ROUTES if "{" in r.path]
#: every role of tenant acme, and the admin key of no tenant
KEYS: list[tuple[str, str | None]] = [*((role, "acme") for role in ROLES), ("admin", None)]


async def call(api: Api, route: Route, headers: dict[str, str], run: str, approval: str) -> Any:
    return await api.http.request(
        route.method, route.url(run, approval), json=route.body, headers=headers
    )


async def targets(api: Api, registry: Registry, tenant: str) -> tuple[str, str, str]:
    """A finished run (its event stream ends at once), a waiting run and its approval."""
    done = await api.start("echo", "x", tenant=tenant)
    asking = await api.start("asks", "ok?", tenant=tenant)
    async with running_worker(api.client, registry, FAST, services={}):
        await api.client.wait(done, timeout=20)
        approval = await pending_approval(api.client, asking)
    return done, asking, approval


def test_the_roles_grant_what_the_design_says() -> None:
    assert set(GRANTS) == set(ROLES)
    assert GRANTS["viewer"] == {Permission.READ}
    assert GRANTS["operator"] == {Permission.READ, Permission.OPERATE}
    assert GRANTS["approver"] == {Permission.READ, Permission.APPROVE}
    assert GRANTS["admin"] == set(Permission)


def test_every_route_of_the_api_is_in_the_matrix() -> None:
    documented = {
        (method.upper(), path)
        for path, methods in create_app().openapi()["paths"].items()
        for method in methods
        if path.startswith("/v1")
    }
    tested = {(r.method, _template(r.path)) for r in ROUTES}
    assert documented == tested


def _template(path: str) -> str:
    """A matrix path as the OpenAPI document spells it."""
    path = path.split("?")[0].replace("{run}", "{run_id}").replace("{approval}", "{approval_id}")
    return path.replace("/pins/files/read/", "/pins/{server}/{tool}/")


async def test_every_route_against_every_role(api: Api, registry: Registry) -> None:
    """A role that may not is refused with 403 and nothing changes; one that may gets past
    access control (its answer may still be a 409 for a run in the wrong state)."""
    done, _, approval = await targets(api, registry, "acme")
    await pending_pin(api)
    wrong: list[str] = []
    for route in ROUTES:
        for role, tenant in KEYS:
            allowed = route.permission in GRANTS[role] and not (route.fleet and tenant)
            target = done if "/events" in route.path else (await api.start("echo", 0))
            before = await snapshot(api.client)
            r = await call(api, route, api.auth(role, tenant), target, approval)
            who = f"{role}/{tenant} {route.method} {route.path}"
            if (allowed and r.status_code in (401, 403, 404)) or r.status_code >= 500:
                wrong.append(f"{who}: {r.status_code} {r.text}")
            if not allowed:
                if r.status_code != 403 or r.headers["content-type"] != "application/problem+json":
                    wrong.append(f"{who}: {r.status_code}, not 403")
                if await snapshot(api.client) != before:
                    wrong.append(f"{who}: changed state")
    assert wrong == []
    [pin] = [p for p in await api.client.store.list_tool_pins("files") if p.tool == "read"]
    assert pin.pending_hash is None  # the admin of no tenant accepted the change


async def pending_pin(api: Api) -> None:
    """Tool ``read`` of MCP server ``files``, changed since it was pinned."""
    schema: dict[str, Any] = {"type": "object"}
    for description in ("Read a file.", "Read a file, and more."):
        definition = ToolDefinition(name="read", description=description, input_schema=schema)
        await api.client.store.observe_tools("files", [definition])


async def test_no_route_shows_or_touches_another_tenants_runs(api: Api, registry: Registry) -> None:
    """With an admin key of tenant acme (it may do everything within acme), each of globex's
    ids answers exactly as an unknown id does, and globex's runs are left as they were."""
    done, asking, approval = await targets(api, registry, "globex")
    acme = api.auth("admin", "acme")
    before = await snapshot(api.client)
    leaks: list[str] = []
    for route in BY_ID:
        for run in (done, asking):
            theirs = await call(api, route, acme, run, approval)
            unknown = await call(api, route, acme, "0" * 26, "0" * 26 + ":1")
            mine = _problem(theirs, run, approval)
            if theirs.status_code != 404 or mine != _problem(unknown, "0" * 26, "0" * 26 + ":1"):
                leaks.append(f"{route.method} {route.path}: {theirs.status_code} {theirs.text}")
    assert leaks == []
    assert await snapshot(api.client) == before
    listed = await api.http.get("/v1/runs", headers=acme)
    assert listed.json()["runs"] == []
    approvals = await api.http.get("/v1/approvals?state=all", headers=acme)
    assert approvals.json()["approvals"] == []
    costs = await api.http.get("/v1/costs?by=tenant", headers=acme)
    assert all(line["key"] == "acme" for line in costs.json()["lines"])
    audit = (await api.http.get("/v1/audit", headers=acme)).json()["entries"]
    assert all(e["tenant"] == "acme" for e in audit)
    theirs = (await api.http.get("/v1/runs", headers=api.auth("viewer", "globex"))).json()
    assert {r["id"] for r in theirs["runs"]} == {done, asking}


def _problem(r: httpx.Response, run: str, approval: str) -> dict[str, Any]:
    """The problem document with the id in it made anonymous: the rest must be identical."""
    body: dict[str, Any] = r.json()
    return {k: str(v).replace(approval, "ID").replace(run, "ID") for k, v in body.items()}


async def test_a_tenant_key_may_not_name_another_tenant(api: Api) -> None:
    before = await snapshot(api.client)
    r = await api.http.post(
        "/v1/runs", json={"agent": "echo", "tenant": "globex"}, headers=api.auth("operator")
    )
    assert r.status_code == 403 and "tenant 'acme'" in r.json()["detail"]
    r = await api.http.get("/v1/runs?tenant=globex", headers=api.auth("viewer"))
    assert r.status_code == 403
    r = await api.http.get("/v1/costs?by=agent", headers=api.auth("admin"))
    assert r.status_code == 403
    assert await snapshot(api.client) == before
    own = await api.http.post(
        "/v1/runs", json={"agent": "echo", "tenant": "acme"}, headers=api.auth("operator")
    )
    assert (own.status_code, own.json()["tenant"]) == (201, "acme")


async def test_requests_without_a_valid_key_are_401_before_anything_is_read(api: Api) -> None:
    before = await snapshot(api.client)
    secret = api.keys[("admin", None)]
    prefix, key_id, rest = secret.split("_", 2)
    for headers in [
        {},
        {"Authorization": secret},
        {"Authorization": f"Basic {secret}"},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer kn_nope_nope"},
        {"Authorization": f"Bearer {prefix}_{key_id}_{rest[::-1]}"},
        {"Authorization": "Bearer kn_\x01_x"},
        {"Authorization": "Bearer " + "k" * 10_000},
    ]:
        for method, path in [("GET", "/v1/runs"), ("POST", "/v1/runs"), ("GET", "/v1/nowhere")]:
            r = await api.http.request(method, path, content=b"{not json", headers=headers)
            assert r.status_code == 401, (headers, path, r.text)
            assert r.headers["content-type"] == "application/problem+json"
            assert r.headers["www-authenticate"].startswith('Bearer realm="kernos"')
            assert r.json()["status"] == 401
    assert await snapshot(api.client) == before


async def test_a_revoked_key_is_refused(api: Api) -> None:
    key, secret = await api.client.store.create_api_key(name="temp", tenant="acme", role="viewer")
    h = {"Authorization": f"Bearer {secret}"}
    assert (await api.http.get("/v1/runs", headers=h)).status_code == 200
    assert await api.client.store.revoke_api_key(key.id)
    assert (await api.http.get("/v1/runs", headers=h)).status_code == 401


async def test_keys_are_cached_for_the_configured_time(db_url: str, registry: Registry) -> None:
    """A busy API does not look its keys up per request: a revoked key works until its cache
    entry expires (5 s by default), and then no more."""
    app = create_app(db_url, registry=registry, config=ApiConfig(key_cache_ttl=3600))
    async with app.router.lifespan_context(app):
        services = app.state.kernos.get()
        store = services.client.store
        key, secret = await store.create_api_key(name="cached", tenant="acme", role="viewer")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            h = {"Authorization": f"Bearer {secret}"}
            assert (await http.get("/v1/runs", headers=h)).status_code == 200
            await store.revoke_api_key(key.id)
            assert (await http.get("/v1/runs", headers=h)).status_code == 200
            services.keys.clear()  # as when the entry expires
            assert (await http.get("/v1/runs", headers=h)).status_code == 401
    assert CONFIG.key_cache_ttl == 0 and ApiConfig().key_cache_ttl == 5.0
