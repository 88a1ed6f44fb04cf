"""Schemathesis against /openapi.json of a real server: no 5xx, no response off its schema.

Each operation gets requests generated from its schema, valid ones and invalid ones (bounded:
``EXAMPLES`` of each), with an admin key, on both databases. Every response must be a non-5xx
whose status, content type, headers and body the document declares. Whether the API accepts
every schema-valid request is not asked: a cursor the API never gave out is a valid string
and still a 400, by design.
"""

from __future__ import annotations

import asyncio
from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from kernos.api import create_app

from ._api_support import Served

EXAMPLES = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
#: every operation the document declares
OPERATIONS = [
    f"{method.upper()} {path}"
    for path, methods in create_app().openapi()["paths"].items()
    for method in methods
]
# Any: schemathesis' generic parameters (parameter containers) are its own business
Operation = APIOperation[Any, Any, Any, Any]


def explore(operation: Operation, mode: GenerationMode, url: str, headers: dict[str, str]) -> None:
    """Run ``EXAMPLES`` generated requests of one kind against one operation."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Case[Operation]) -> None:
        case.call_and_validate(base_url=url, headers=headers, checks=CHECKS, timeout=30)

    check()


async def test_schemathesis_finds_no_server_error_and_no_schema_violation(served: Served) -> None:
    await served.client.start("echo", "something to list", tenant="acme")
    schema = schemathesis.openapi.from_url(f"{served.url}/openapi.json")
    headers = served.auth("admin", None)
    failures: dict[str, str] = {}
    explored = 0
    for label in OPERATIONS:
        operation = schema.find_operation_by_label(label)
        assert operation is not None, label
        modes = [GenerationMode.POSITIVE]
        if operation.path_parameters or operation.query or operation.headers or operation.body:
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:
            try:
                await asyncio.to_thread(explore, operation, mode, served.url, headers)
            except Exception as exc:
                failures[f"{operation.label} ({mode.value})"] = str(exc)
        explored += 1
    assert failures == {}
    assert explored == len(OPERATIONS) > 15
    started = await served.client.store.list_runs(agent="echo", limit=1000)
    assert len(started) > 1  # the documented example of POST /v1/runs started a run
