"""``/v1/runs``: start, list, inspect, follow and control runs, and send them messages.

Thin: each route checks who may do what (and for which tenant), calls ``kernos.kernel.Client``
and turns the result into a response model. A run of another tenant is answered exactly as an
unknown id is (404), before anything is done to it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Response
from fastapi.responses import StreamingResponse

from kernos.errors import KernosError, RunNotFound
from kernos.store import Run, RunState

from ._auth import Operator, Principal, Reader, check_tenant_scope
from ._models import (
    INT63,
    RUN_ID_PATTERN,
    ControlRequest,
    EventOut,
    JournalPage,
    MessageOut,
    Name,
    RunEnd,
    RunOut,
    RunPage,
    SendMessage,
    StartRun,
)
from ._paging import Cursor, page_runs
from ._problems import Problem, ProblemError, log, not_found, problem_responses
from ._state import Services, Svc

router = APIRouter(
    prefix="/v1/runs",
    tags=["runs"],
    responses=problem_responses(400, 401, 403, 413, 422, 503),
)

RunId = Annotated[str, Path(pattern=RUN_ID_PATTERN, description="The run's id")]
MAX_PAGE = 500


async def visible_run(svc: Services, principal: Principal, run_id: str) -> Run:
    """The run, if it exists and the caller's tenant may see it; 404 alike otherwise."""
    try:
        run = await svc.client.get(run_id)
    except RunNotFound:
        raise not_found(f"run {run_id}") from None
    if not principal.sees(run.tenant):
        raise not_found(f"run {run_id}")
    return run


@router.post(
    "",
    status_code=201,
    response_model=RunOut,
    summary="Start a run",
    responses=problem_responses(404),
)
async def start_run(body: StartRun, principal: Operator, svc: Svc, response: Response) -> RunOut:
    """Create a run (``queued``); a worker that has the agent's code executes it.

    The run is charged to the key's tenant; an admin key without a tenant may name one (the
    default is ``default``). 404 when no worker has registered the agent.
    """
    tenant = check_tenant_scope(principal, body.tenant)
    run = await svc.client.start(
        body.agent,
        body.input,
        version=body.version,
        priority=body.priority,
        delay=body.delay,
        tenant=tenant,
        principal=principal.actor,
    )
    response.headers["Location"] = f"/v1/runs/{run.id}"
    return RunOut.of(run)


@router.get("", response_model=RunPage, summary="List runs")
async def list_runs(
    principal: Reader,
    svc: Svc,
    state: Annotated[RunState | None, Query(description="Only runs in this state")] = None,
    agent: Annotated[Name | None, Query(description="Only runs of this agent")] = None,
    tenant: Annotated[
        Name | None, Query(description="Only this tenant's runs (admin keys without a tenant)")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Runs per page")] = 50,
    cursor: Annotated[
        str | None,
        Query(alias="next", max_length=1000, description="The `next` of the previous page"),
    ] = None,
) -> RunPage:
    """Runs newest first, a page at a time; only the key's tenant's runs."""
    scope = check_tenant_scope(principal, tenant)
    runs, following = await page_runs(
        svc.client.store,
        state=state,
        agent=agent,
        tenant=scope,
        limit=limit,
        cursor=Cursor.decode(cursor) if cursor is not None else None,
    )
    return RunPage(
        runs=[RunOut.of(r) for r in runs], next=following.encode() if following else None
    )


@router.get(
    "/{run_id}", response_model=RunOut, summary="Get a run", responses=problem_responses(404)
)
async def get_run(run_id: RunId, principal: Reader, svc: Svc) -> RunOut:
    return RunOut.of(await visible_run(svc, principal, run_id))


@router.get(
    "/{run_id}/journal",
    response_model=JournalPage,
    summary="A run's journal, a page at a time",
    responses=problem_responses(404),
)
async def get_journal(
    run_id: RunId,
    principal: Reader,
    svc: Svc,
    after: Annotated[int, Query(ge=0, le=INT63, description="Only events after this seq")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000, description="Events per page")] = 200,
) -> JournalPage:
    """The run's events in order (the trace). Page with ``?after=<next>``."""
    await visible_run(svc, principal, run_id)
    events = await svc.client.journal(run_id, after_seq=after)
    page = events[:limit]
    return JournalPage(
        events=[EventOut.of(e) for e in page],
        next=page[-1].seq if len(events) > limit else None,
    )


class EventStream(StreamingResponse):
    media_type = "text/event-stream"


def _last_event_id(header: str | None, after: int) -> int:
    if header is None or not header.strip():
        return after
    value = header.strip()
    if not value.isdigit() or int(value) > INT63:
        raise ProblemError(
            400,
            f"Last-Event-ID {value[:40]!r} is not an event id of this stream (a journal seq)",
            kind="bad-last-event-id",
        )
    return int(value)


@router.get(
    "/{run_id}/events",
    response_class=EventStream,
    summary="Follow a run's events live (server-sent events)",
    responses={
        200: {
            "description": "A text/event-stream: each journal event as `id: <seq>` and "
            "`data: <event JSON>`, then one `event: end` whose data is the run's id and final "
            "state. Comment lines keep an idle stream alive.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **problem_responses(404),
    },
)
async def follow_events(
    run_id: RunId,
    principal: Reader,
    svc: Svc,
    after: Annotated[
        int, Query(ge=0, le=INT63, description="Start after this seq (0: from the start)")
    ] = 0,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            max_length=40,
            description="Resume after this event (sent by EventSource when it reconnects)",
        ),
    ] = None,
) -> EventStream:
    """The journal so far, then each event as it is committed, ending after the run's final
    event with an ``end`` event. Reconnect with ``Last-Event-ID`` to resume without gaps or
    repeats."""
    start = _last_event_id(last_event_id, after)
    run = await visible_run(svc, principal, run_id)
    return EventStream(
        _stream(svc, run, start),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _stream(svc: Services, run: Run, after: int) -> AsyncIterator[str]:
    yield "retry: 1000\n\n"
    try:
        async for ev in svc.feed.follow(run, after=after, keepalive=svc.config.keepalive):
            if ev is None:
                yield ": keepalive\n\n"
            else:
                yield f"id: {ev.seq}\ndata: {EventOut.of(ev).model_dump_json()}\n\n"
        final = await svc.client.get(run.id)
    except Exception as exc:
        # The status line is long sent: say in the stream that it failed, and end it; the
        # client reconnects with Last-Event-ID and loses nothing.
        log.error("following run %s failed", run.id, exc_info=exc)
        yield f"event: error\ndata: {_error_json(exc, run.id)}\n\n"
        return
    yield f"event: end\ndata: {RunEnd(id=final.id, state=final.state).model_dump_json()}\n\n"


def _error_json(exc: Exception, run_id: str) -> str:
    retryable = isinstance(exc, KernosError) and exc.retryable
    return Problem(
        title="the event stream failed",
        status=503 if retryable else 500,
        detail="following the run failed; reconnect with Last-Event-ID to resume"
        + (" (the database is unavailable: retry later)" if retryable else ""),
        instance=f"/v1/runs/{run_id}/events",
    ).model_dump_json(exclude_none=True)


async def _control(
    svc: Services, principal: Principal, run_id: str, action: str, body: ControlRequest | None
) -> RunOut:
    await visible_run(svc, principal, run_id)
    reason = body.reason if body else None
    act = {"pause": svc.client.pause, "resume": svc.client.resume, "cancel": svc.client.cancel}
    run = await act[action](run_id, reason=reason, by=principal.actor)
    return RunOut.of(run)


_CONTROL = problem_responses(404, 409)


@router.post("/{run_id}/pause", response_model=RunOut, summary="Pause", responses=_CONTROL)
async def pause_run(
    run_id: RunId, principal: Operator, svc: Svc, body: ControlRequest | None = None
) -> RunOut:
    """Pause the run: at once if no worker holds it, else at its next step boundary (the
    run's ``control`` then reads ``pause``). 409 when the run has ended."""
    return await _control(svc, principal, run_id, "pause", body)


@router.post("/{run_id}/resume", response_model=RunOut, summary="Resume", responses=_CONTROL)
async def resume_run(
    run_id: RunId, principal: Operator, svc: Svc, body: ControlRequest | None = None
) -> RunOut:
    """Resume a paused run (or withdraw a pause not yet carried out). 409 otherwise."""
    return await _control(svc, principal, run_id, "resume", body)


@router.post("/{run_id}/cancel", response_model=RunOut, summary="Cancel", responses=_CONTROL)
async def cancel_run(
    run_id: RunId, principal: Operator, svc: Svc, body: ControlRequest | None = None
) -> RunOut:
    """Cancel the run; its agent gets ``Cancelled`` at the next step boundary and may clean
    up. 409 when the run has ended."""
    return await _control(svc, principal, run_id, "cancel", body)


@router.post(
    "/{run_id}/messages",
    status_code=202,
    response_model=MessageOut,
    summary="Send a message",
    responses=_CONTROL,
)
async def send_message(
    run_id: RunId, body: SendMessage, principal: Operator, svc: Svc
) -> MessageOut:
    """Send the run a message on ``topic``; a run waiting for one wakes. The sender is the
    key's name."""
    await visible_run(svc, principal, run_id)
    message = await svc.client.send(run_id, body.topic, body.value, sender=principal.actor)
    return MessageOut.of(message)
