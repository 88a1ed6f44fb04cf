"""Errors as RFC 9457 problem documents: every 4xx and 5xx the API sends is one.

A client gets ``application/problem+json`` with ``type``, ``title``, ``status``, ``detail`` and
``instance`` whatever went wrong: a kernos error (mapped by its class, below), a request that
failed validation, an unknown route, a body over the size limit, or a bug (500, logged here,
never described to the client). The mapping follows the kernos error tree::

    KernosError
    ├── UsageError              400  the caller's mistake: fix the request
    │   ├── RunNotFound         404
    │   ├── AgentNotFound       404
    │   ├── ApprovalNotFound    404
    │   ├── ScheduleNotFound    404
    │   ├── InvalidInput        422  (also NotSerializable)
    │   └── InvalidState        409  the run's (or approval's) state does not allow it
    ├── RunError                500  (a run's failure is data, not an API error: never raised)
    └── InfrastructureError     503  with Retry-After: the database is unavailable

A 503's detail never repeats the store's message: that names the database's host and path,
which are the server's business; the message goes to the server's log instead.
"""

from __future__ import annotations

import logging
import math
from http import HTTPStatus
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from kernos.errors import (
    AgentNotFound,
    ApprovalNotFound,
    InfrastructureError,
    InvalidInput,
    InvalidState,
    KernosError,
    NotSerializable,
    RunNotFound,
    ScheduleNotFound,
    UsageError,
)

log = logging.getLogger("kernos.api")

PROBLEM_JSON = "application/problem+json"
_TYPE_PREFIX = "urn:kernos:problem:"


class FieldProblem(BaseModel):
    """One reason a request failed validation: where, what, and pydantic's kind of error."""

    location: list[str | int] = Field(description="Path to the offending value, e.g. body.agent")
    message: str
    kind: str


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    type: str = Field(
        default="about:blank",
        description="A URI naming the kind of problem (urn:kernos:problem:...); about:blank "
        "when the HTTP status says it all",
    )
    title: str = Field(description="A short summary of the kind of problem")
    status: int = Field(ge=400, le=599, description="The HTTP status code")
    detail: str = Field(description="What happened in this occurrence, and what to do")
    instance: str = Field(description="The request path this occurrence is about")
    errors: list[FieldProblem] | None = Field(
        default=None, description="For validation problems: each invalid value"
    )


class ProblemError(Exception):
    """Raised by the API itself for a problem no kernos error names (auth, a bad cursor)."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        kind: str | None = None,
        title: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.kind = kind
        self.title = title or HTTPStatus(status).phrase
        self.headers = headers or {}


def not_found(what: str) -> ProblemError:
    """The one answer for a missing thing and for another tenant's: ids do not leak."""
    return ProblemError(404, f"{what} not found", kind="not-found")


def problem_response(
    request: Request,
    status: int,
    detail: str,
    *,
    kind: str | None = None,
    title: str | None = None,
    headers: dict[str, str] | None = None,
    errors: list[FieldProblem] | None = None,
) -> JSONResponse:
    problem = Problem(
        type=f"{_TYPE_PREFIX}{kind}" if kind else "about:blank",
        title=title or HTTPStatus(status).phrase,
        status=status,
        detail=detail,
        instance=request.url.path,
        errors=errors,
    )
    return JSONResponse(
        problem.model_dump(exclude_none=True),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


# Most specific first: the first class an error is an instance of decides.
_KERNOS: list[tuple[type[KernosError], int, str]] = [
    (RunNotFound, 404, "run-not-found"),
    (AgentNotFound, 404, "agent-not-found"),
    (ApprovalNotFound, 404, "approval-not-found"),
    (ScheduleNotFound, 404, "schedule-not-found"),
    (InvalidState, 409, "invalid-state"),
    (InvalidInput, 422, "invalid-input"),
    (NotSerializable, 422, "invalid-input"),
    (UsageError, 400, "usage-error"),
    (InfrastructureError, 503, "unavailable"),
]


def retry_after(exc: KernosError) -> dict[str, str]:
    """A Retry-After header in whole seconds (at least 1) for an error a client may retry."""
    if not exc.retryable:
        return {}
    return {"Retry-After": str(max(1, math.ceil(exc.retry_after or 1)))}


async def on_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProblemError)
    return problem_response(
        request, exc.status, exc.detail, kind=exc.kind, title=exc.title, headers=exc.headers
    )


async def on_kernos_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, KernosError)
    status, kind = next(((s, k) for cls, s, k in _KERNOS if isinstance(exc, cls)), (500, None))
    if status == 503:
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        return problem_response(
            request,
            503,
            "the database is unavailable or did not answer in time; retry later",
            kind=kind,
            headers=retry_after(exc) or {"Retry-After": "5"},
        )
    if status == 500:
        log.error("%s %s failed: %r", request.method, request.url.path, exc)
        return problem_response(request, 500, "the server failed to handle the request")
    return problem_response(request, status, str(exc), kind=kind)


def _location(loc: tuple[int | str, ...]) -> list[str | int]:
    return list(loc)


async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 for values that fail their schema; 400 when the body is not JSON at all."""
    assert isinstance(exc, RequestValidationError)
    raw: list[dict[str, Any]] = list(exc.errors())
    errors = [
        FieldProblem(location=_location(tuple(e.get("loc", ()))), message=e["msg"], kind=e["type"])
        for e in raw
    ]
    if any(e.kind == "json_invalid" for e in errors):
        return problem_response(
            request,
            400,
            "the request body is not valid JSON; send a JSON document with "
            "Content-Type: application/json",
            kind="malformed-json",
            errors=errors,
        )
    where = "; ".join(f"{'.'.join(map(str, e.location))}: {e.message}" for e in errors[:5])
    return problem_response(
        request,
        422,
        f"the request is not valid: {where}",
        kind="validation-failed",
        errors=errors,
    )


async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors (unknown route 404, wrong method 405, unreadable body 400)."""
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no route {request.url.path}; the API's routes are in /openapi.json"
    headers = dict(exc.headers) if exc.headers else None
    return problem_response(request, exc.status_code, detail, headers=headers)


async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    """A bug: logged with its traceback here, and a 500 that describes nothing internal."""
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return problem_response(request, 500, "the server failed to handle the request")


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the problems a route may answer with (see ``_app.openapi``, which
    files their schema under ``application/problem+json``)."""
    return {s: {"model": Problem, "description": HTTPStatus(s).phrase} for s in statuses}
