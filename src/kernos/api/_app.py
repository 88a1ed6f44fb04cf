"""``create_app``: the FastAPI application of ``kernos serve``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from importlib.metadata import version
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException as StarletteHTTPException

from kernos.errors import KernosError
from kernos.governance import Budget, load_budgets, redactor_from_config
from kernos.kernel import (
    REGISTRY,
    Registry,
    Scrubber,
    Settings,
    connect,
    load_app,
    load_settings,
)

from . import _budgets, _costs, _health, _metrics, _oversight, _runs, _tools
from ._auth import Authentication, KeyCache
from ._config import ApiConfig
from ._dashboard import mount_dashboard
from ._feed import JournalFeed
from ._limits import BodyLimit
from ._problems import (
    PROBLEM_JSON,
    ProblemError,
    on_http_error,
    on_kernos_error,
    on_problem,
    on_unexpected,
    on_validation_error,
)
from ._state import ApiState, Readiness, Services

DESCRIPTION = """\
Start, follow and control durable agent runs; decide approvals; read costs, budgets and the
audit log; review and accept changed MCP tools.

Every `/v1` route needs `Authorization: Bearer <key>` (`kernos keys create --tenant T --role R`).
Errors are RFC 9457 problem documents (`application/problem+json`).
"""


def create_app(
    store_url: str | None = None,
    *,
    registry: Registry | None = None,
    settings: Settings | None = None,
    config: ApiConfig | None = None,
    redactor: Scrubber | None = None,
    budgets: Sequence[Budget] | None = None,
) -> FastAPI:
    """The HTTP API over the database at ``store_url`` (default: ``KERNOS_DATABASE_URL``).

    The database is opened (and migrated) when the app starts, and closed when it stops; run
    it with any ASGI server (``kernos serve`` uses uvicorn). ``registry`` names the agents whose
    input types validate ``POST /v1/runs`` bodies up front (default: those of ``KERNOS_APP``, if
    set); agents it lacks are checked against those workers registered in the database.

    ``budgets`` are what ``GET /v1/budgets`` reports spend against (default: ``[[budgets]]``
    of kernos.toml, read here, once, as the workers read it when they start).

    With no arguments this is the factory ``kernos serve --workers N`` hands uvicorn: each
    worker process builds its own app from the environment.
    """
    settings = settings or load_settings()
    config = config or ApiConfig()
    url = store_url or settings.database_url
    if registry is None:
        registry = load_app(settings.app) if settings.app else REGISTRY
    state = ApiState(config)
    agents = registry
    scrubber = redactor if redactor is not None else redactor_from_config()
    limits = tuple(load_budgets() if budgets is None else budgets)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = await connect(url, settings=settings, registry=agents, redactor=scrubber)
        store = client.store
        state.services = Services(
            client=client,
            keys=KeyCache(store.find_api_key, ttl=config.key_cache_ttl, size=config.key_cache_size),
            feed=JournalFeed(store, fast=config.poll_fast, slow=config.poll_slow),
            readiness=Readiness(store, config.ready_timeout),
            config=config,
            budgets=limits,
        )
        try:
            yield
        finally:
            services, state.services = state.services, None
            await services.feed.close()
            await services.readiness.close()
            await client.close()

    app = FastAPI(
        title="kernos",
        version=version("kernos"),
        description=DESCRIPTION,
        lifespan=lifespan,
        redoc_url=None,
    )
    app.state.kernos = state
    app.add_exception_handler(ProblemError, on_problem)
    app.add_exception_handler(KernosError, on_kernos_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
    for router in (
        _health.router,
        _metrics.router,
        _runs.router,
        _oversight.approvals,
        _oversight.audit,
        _costs.router,
        _budgets.router,
        _tools.router,
    ):
        app.include_router(router)
    mount_dashboard(app)  # the web dashboard at /, outside /openapi.json
    # The last added runs first: keys are checked before a body is even read.
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(Authentication, keys=state.keys)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _problems_as_problem_json(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    description=app.description,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _problems_as_problem_json(doc: dict[str, Any]) -> dict[str, Any]:
    """File every error response's schema under ``application/problem+json`` (FastAPI files
    response models under the route's own media type), so that the document says what the API
    sends."""
    for operations in doc.get("paths", {}).values():
        for operation in operations.values():
            for status, response in operation.get("responses", {}).items():
                if status.isdigit() and int(status) >= 400 and response.get("content"):
                    schema = next(iter(response["content"].values())).get("schema", {})
                    response["content"] = {PROBLEM_JSON: {"schema": schema}}
    return doc
