"""``/healthz`` and ``/readyz``: for load balancers and orchestrators, without an API key.

``/healthz`` says the process is alive and serving (it touches nothing else: a database outage
must not get every API process restarted). ``/readyz`` says whether this process can serve
``/v1`` now: its store answers a cheap query within ``ApiConfig.ready_timeout``.
"""

from __future__ import annotations

from fastapi import APIRouter

from kernos.errors import KernosError

from ._models import Health, Ready
from ._problems import ProblemError, log, problem_responses, retry_after
from ._state import Svc

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness")
async def healthz() -> Health:
    return Health()


@router.get("/readyz", response_model=Ready, summary="Readiness", responses=problem_responses(503))
async def readyz(svc: Svc) -> Ready:
    """200 when the database answers in time and its schema is this version's; 503 (with
    Retry-After) otherwise."""
    try:
        status = await svc.readiness.check()
    except TimeoutError:
        raise ProblemError(
            503,
            f"the database did not answer within {svc.readiness.timeout} s",
            kind="not-ready",
            headers={"Retry-After": "5"},
        ) from None
    except KernosError as exc:
        log.warning("not ready: %s", exc)
        raise ProblemError(
            503,
            f"the database is not usable ({type(exc).__name__}); see the server's log",
            kind="not-ready",
            headers=retry_after(exc) or {"Retry-After": "5"},
        ) from exc
    if not status.up_to_date:
        raise ProblemError(
            503,
            f"the database schema is at version {status.current}, this server needs "
            f"{status.latest}: run `kernos db migrate`",
            kind="not-ready",
            headers={"Retry-After": "30"},
        )
    return Ready(database=svc.client.store.backend, schema_version=status.current)
