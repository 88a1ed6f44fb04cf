"""``/metrics``: the fleet in Prometheus' text format, for a scraper, without an API key.

What it exposes is aggregate (counts by state, reason, agent and version; breaker states per
endpoint), never a run, a tenant or an input; keep it on the network your Prometheus reaches,
as you would ``/healthz``. Each scrape is one read of the database (``Store.fleet_status``);
a database that cannot answer makes the scrape fail (503), so the gap shows in Prometheus
instead of stale numbers.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from kernos.errors import InfrastructureError
from kernos.telemetry import fleet_metrics

from ._problems import ProblemError
from ._state import Svc

router = APIRouter(tags=["health"])


@router.get("/metrics", include_in_schema=False)
async def metrics(svc: Svc) -> Response:
    try:
        status = await svc.client.store.fleet_status()
    except InfrastructureError as exc:
        raise ProblemError(
            503,
            f"the database cannot answer: {exc}",
            kind="not-ready",
            headers={"Retry-After": "5"},
        ) from None
    return Response(fleet_metrics(status), media_type=CONTENT_TYPE_LATEST)
