"""Bad input gets a clear problem document and changes nothing (guarantee 7).

Malformed JSON, wrong types, unknown fields, unknown ids, strings the database cannot hold,
and bodies over the limit: each is a 4xx ``application/problem+json`` with type, title,
status, detail and instance, and the database is as it was.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.requests import Request

from kernos.api import ApiConfig, create_app
from kernos.api._problems import on_kernos_error
from kernos.errors import InfrastructureError, StoreUnavailable
from kernos.kernel import Registry

from ._api_support import Api, snapshot

MIB = 1024 * 1024


def assert_problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    assert {"type", "title", "status", "detail", "instance"} <= set(body)
    assert body["status"] == status and body["instance"] == r.request.url.path
    return body


BAD_BODIES: list[tuple[str, str, bytes | str, int]] = [
    ("POST", "/v1/runs", b"{not json", 400),
    ("POST", "/v1/runs", b"", 422),
    ("POST", "/v1/runs", b"[]", 422),
    ("POST", "/v1/runs", b'{"agent": 42}', 422),
    ("POST", "/v1/runs", b'{"agent": "echo", "priority": "high"}', 422),
    ("POST", "/v1/runs", b'{"agent": "echo", "priority": 99999999999}', 422),
    ("POST", "/v1/runs", b'{"agent": "echo", "delay": -1}', 422),
    ("POST", "/v1/runs", b'{"agent": "echo", "delay": NaN}', 422),
    ("POST", "/v1/runs", b'{"agent": "echo", "inputs": 1}', 422),
    ("POST", "/v1/runs", b'{"agent": "nobody"}', 404),
    ("POST", "/v1/runs", b'{"agent": "echo\\u0000"}', 422),
    ("POST", "/v1/runs", b'{"agent": "echo", "input": "\\ud800"}', 422),
    ("POST", "/v1/runs", b'{"agent": "echo", "input": 1e400}', 422),
    ("POST", "/v1/runs", b'{"agent": "echo", "tenant": "no spaces"}', 422),
    ("POST", "/v1/runs", b"[" * 100_000 + b"]" * 100_000, 400),
    ("POST", "/v1/runs", b'{"agent": "echo", "input": ' + b"9" * 5000 + b"}", 400),
    ("POST", "/v1/runs/{run}/messages", b'{"topic": "a\\u0000"}', 422),
    ("POST", "/v1/runs/{run}/messages", b'{"value": 1}', 422),
    ("POST", "/v1/runs/{run}/messages", b'{"topic": "\\udc00"}', 422),
    ("POST", "/v1/runs/{run}/pause", b'{"reason": 7}', 422),
    ("POST", "/v1/runs/{run}/pause", b'{"reason": "x\\u0000"}', 422),
    ("POST", "/v1/runs/{run}/cancel", b"{not json", 400),
    ("GET", "/v1/runs?limit=0", b"", 422),
    ("GET", "/v1/runs?limit=501", b"", 422),
    ("GET", "/v1/runs?state=sleeping", b"", 422),
    ("GET", "/v1/runs?agent=%00", b"", 422),
    ("GET", "/v1/runs?next=garbage", b"", 400),
    ("GET", "/v1/runs?next=eyJiIjogMX0", b"", 400),
    ("GET", "/v1/runs/{run}/journal?after=-1", b"", 422),
    ("GET", "/v1/runs/{run}/journal?after=99999999999999999999", b"", 422),
    ("GET", "/v1/runs/%00", b"", 422),
    ("GET", "/v1/runs/01ARZ3NDEKTSV4RRFFQ69G5FAV", b"", 404),
    ("GET", "/v1/runs/01ARZ3NDEKTSV4RRFFQ69G5FAV/journal", b"", 404),
    ("GET", "/v1/runs/01ARZ3NDEKTSV4RRFFQ69G5FAV/events", b"", 404),
    ("POST", "/v1/runs/01ARZ3NDEKTSV4RRFFQ69G5FAV/cancel", b"", 404),
    ("POST", "/v1/runs/01ARZ3NDEKTSV4RRFFQ69G5FAV/messages", b'{"topic": "t"}', 404),
    ("GET", "/v1/approvals/nope:1", b"", 404),
    ("POST", "/v1/approvals/nope:1/approve", b'{"answer": 1}', 404),
    ("POST", "/v1/approvals/nope:1/reject", b"", 404),
    ("GET", "/v1/approvals?state=maybe", b"", 422),
    ("GET", "/v1/costs?by=planet", b"", 422),
    ("GET", "/v1/costs?since=yesterday-ish", b"", 422),
    ("GET", "/v1/audit?after=-5", b"", 422),
    ("DELETE", "/v1/runs", b"", 405),
    ("GET", "/v1/nowhere", b"", 404),
]


@pytest.mark.parametrize(("method", "path", "body", "status"), BAD_BODIES)
async def test_bad_input_is_a_problem_document_and_changes_nothing(
    api: Api, method: str, path: str, body: bytes, status: int
) -> None:
    run = await api.start("echo", 1)
    before = await snapshot(api.client)
    r = await api.http.request(
        method,
        path.format(run=run),
        content=body,
        headers={**api.auth("admin", None), "Content-Type": "application/json"},
    )
    assert_problem(r, status)
    assert await snapshot(api.client) == before


async def test_validation_problems_say_where_and_what(api: Api) -> None:
    r = await api.http.post(
        "/v1/runs", json={"agent": "echo", "priority": "high"}, headers=api.auth("operator")
    )
    body = assert_problem(r, 422)
    assert body["type"] == "urn:kernos:problem:validation-failed"
    assert body["errors"] == [
        {
            "location": ["body", "priority"],
            "message": "Input should be a valid integer, unable to parse string as an integer",
            "kind": "int_parsing",
        }
    ]
    assert "body.priority" in body["detail"]


async def test_bodies_over_the_limit_are_refused_before_they_are_read(api: Api) -> None:
    before = await snapshot(api.client)
    big = b'{"agent": "echo", "input": "' + b"x" * (2 * MIB) + b'"}'
    h = {**api.auth("operator"), "Content-Type": "application/json"}
    declared = await api.http.post("/v1/runs", content=big, headers=h)
    assert "1048576 bytes" in assert_problem(declared, 413)["detail"]

    async def chunks() -> Any:  # no Content-Length: refused once past the limit
        for i in range(0, len(big), 64 * 1024):
            yield big[i : i + 64 * 1024]

    chunked = await api.http.post("/v1/runs", content=chunks(), headers=h)
    assert_problem(chunked, 413)
    lying = await api.http.post("/v1/runs", content=b"{}", headers={**h, "Content-Length": "a lot"})
    assert lying.status_code == 400
    assert await snapshot(api.client) == before
    just_under = b'{"agent": "echo", "input": "' + b"x" * (MIB - 100) + b'"}'
    ok = await api.http.post("/v1/runs", content=just_under, headers=h)
    assert ok.status_code == 201, ok.text[:300]


async def test_the_body_limit_is_configurable(db_url: str, registry: Registry) -> None:
    app = create_app(db_url, registry=registry, config=ApiConfig(max_body_bytes=100))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            r = await http.post("/v1/runs", content=b"x" * 101)
            assert r.status_code == 401  # a stranger's body is not even looked at
            store = app.state.kernos.get().client.store
            _, secret = await store.create_api_key(name="a", tenant=None, role="admin")
            r = await http.post(
                "/v1/runs", content=b"x" * 101, headers={"Authorization": f"Bearer {secret}"}
            )
            assert_problem(r, 413)


async def test_a_database_outage_is_503_with_retry_after_and_no_internals() -> None:
    """The store's own message names the database's host: the client gets none of it."""
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/v1/runs",
        "headers": [],
        "query_string": b"",
        "server": ("t", 80),
        "scheme": "http",
        "root_path": "",
    }
    exc: InfrastructureError = StoreUnavailable("postgresql://secret-host:5432/db is down")
    exc.retry_after = 2.5
    response = await on_kernos_error(Request(scope), exc)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "3"
    assert b"secret-host" not in bytes(response.body)
