"""The web dashboard of ``kernos serve``, at ``/``: runs, a run's timeline, approvals,
providers and costs, for people.

Thin, like the JSON API: each route resolves the session (the API key in the dashboard's
cookie, ``_dashboard_auth``), checks the role and tenant exactly as the matching ``/v1``
route does, calls the same ``Client`` and store methods, and renders a template. A run of
another tenant is "not found" here as there. Every action is a form POST carrying the page's
CSRF token, so the dashboard works without its script; the script only adds live updates
(the run's event stream, short polls of small fragments) and loads a long journal page by
page as the person scrolls.

None of these routes is in ``/openapi.json``: they serve HTML, not the API.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from kernos.errors import ApprovalNotFound, InvalidInput
from kernos.governance import budget_report
from kernos.store import WAIT_KINDS, Approval, ApprovalState, Run, RunQuery, RunState

from ._auth import Permission, Principal, check_tenant_scope
from ._budgets import _of_tenant
from ._dashboard_auth import (
    Session,
    check_csrf,
    end_session,
    principal_of,
    read_form,
    require,
    same_origin,
    session_of,
    set_session,
)
from ._dashboard_data import (
    COST_SUMS,
    COST_WINDOWS,
    HEALTH_WINDOWS,
    LLM_TYPES,
    Health,
    budget_views,
    provider_health,
    spend_over_time,
)
from ._dashboard_timeline import CATEGORIES, pretty, rows_of, span_of
from ._dashboard_web import (
    STATIC,
    DashboardState,
    PageRoute,
    dashboard,
    fragment,
    local_path,
    page,
    see_other,
)
from ._models import EventOut
from ._problems import ProblemError, not_found
from ._runs import EventStream, _stream, visible_run
from ._state import Services, services

router = APIRouter(route_class=PageRoute, include_in_schema=False)

#: runs per page of the runs list, events per page of a run's timeline
RUNS_PAGE = 50
EVENTS_PAGE = 200
#: the runs list's "created within" filter: label -> seconds
AGES = {"15m": 900.0, "1h": 3600.0, "24h": 86_400.0, "7d": 604_800.0}
_DID = {
    "pause": "Pause requested: the run pauses at its next step boundary.",
    "resume": "Resumed.",
    "cancel": "Cancel requested: the run stops at its next step boundary.",
    "message": "Message sent.",
    "approved": "Approved: the run goes on.",
    "edited": "Approved with edited arguments: the run goes on.",
    "rejected": "Rejected: the run learns why.",
}


def mount_dashboard(app: FastAPI) -> None:
    """Serve the dashboard from ``app``: its pages, fragments and static files."""
    app.state.dashboard = DashboardState()
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="dashboard-static")


# -- signing in and out ---------------------------------------------------------------------


@router.get("/login")
async def login_page(request: Request) -> HTMLResponse:
    target = local_path(request.query_params.get("next"))
    return page(request, "login.html", session=None, next=target, error=None)


@router.post("/login")
async def login(request: Request) -> Response:
    form = await read_form(request)
    target = local_path(form.get("next"))
    if not same_origin(request):
        raise ProblemError(403, "a sign-in from another site was refused", kind="csrf")
    principal = await principal_of(request, form.get("key", ""))
    if principal is None:
        return page(
            request,
            "login.html",
            session=None,
            status=401,
            next=target,
            error="That key is unknown, revoked or mistyped. Keys look like kn_…_…; "
            "`kernos keys create --tenant T --role R` makes one.",
        )
    response = see_other(target)
    set_session(response, request, form["key"].strip())
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    session = await session_of(request)
    check_csrf(request, session, await read_form(request))
    response = see_other("/login")
    end_session(response, request)
    return response


# -- runs -----------------------------------------------------------------------------------


def _text(request: Request, name: str, limit: int = 200) -> str | None:
    value = (request.query_params.get(name) or "").strip()
    if not value:
        return None
    if len(value) > limit or "\x00" in value:
        raise ProblemError(400, f"the {name} filter is too long or not text", kind="filter")
    return value


def _runs_query(request: Request, principal: Principal) -> tuple[RunQuery, dict[str, str]]:
    """The runs list's filters and page from the query string, and the filters as given."""
    state_text = _text(request, "state")
    waiting = _text(request, "waiting")
    age = _text(request, "age")
    try:
        state = RunState(state_text) if state_text else None
    except ValueError:
        raise ProblemError(400, f"no run state {state_text!r}", kind="filter") from None
    if waiting is not None and waiting not in WAIT_KINDS:
        raise ProblemError(400, f"no kind of wait {waiting!r}", kind="filter")
    if age is not None and age not in AGES:
        raise ProblemError(400, f"created within {age!r}? use one of {list(AGES)}", kind="filter")
    tenant = check_tenant_scope(principal, _text(request, "tenant"))
    filters = {
        k: v
        for k, v in {
            "state": state_text,
            "agent": _text(request, "agent"),
            "tenant": _text(request, "tenant"),
            "waiting": waiting,
            "age": age,
        }.items()
        if v
    }
    query = RunQuery(
        state=state,
        agent=filters.get("agent"),
        tenant=tenant,
        waiting=waiting,
        created_after=time.time() - AGES[age] if age else None,
        before=_text(request, "before"),
        after=_text(request, "after") if not request.query_params.get("before") else None,
        limit=RUNS_PAGE + 1,
    )
    return query, filters


async def _runs_context(request: Request, svc: Services, session: Session) -> dict[str, Any]:
    query, filters = _runs_query(request, session.principal)
    runs = await svc.client.store.list_runs_page(query)
    more = len(runs) > RUNS_PAGE
    if query.after is not None:
        newer, older = more, True
        runs = runs[1:] if more else runs
    else:
        newer, older = query.before is not None, more
        runs = runs[:RUNS_PAGE]
    costs = await svc.client.store.sum_run_events(
        [r.id for r in runs], types=LLM_TYPES, sums={"cost": COST_SUMS["cost"]}
    )
    return {
        "runs": runs,
        "costs": {run_id: sums["cost"] for run_id, sums in costs.items()},
        "filters": filters,
        "newer_url": f"/?{urlencode({**filters, 'after': runs[0].id})}" if newer and runs else None,
        "older_url": f"/?{urlencode({**filters, 'before': runs[-1].id})}"
        if older and runs
        else None,
        "first_url": f"/?{urlencode(filters)}",
        "live_url": f"/fragments/runs?{request.url.query}",
        "states": [s.value for s in RunState],
        "wait_kinds": WAIT_KINDS,
        "ages": list(AGES),
    }


@router.get("/")
async def runs_page(request: Request) -> HTMLResponse:
    session = await session_of(request)
    svc = services(request)
    context = await _runs_context(request, svc, session)
    agents = sorted({a.name for a in await svc.client.store.list_agents()})
    return page(request, "runs.html", session=session, nav="runs", agents=agents, **context)


@router.get("/fragments/runs")
async def runs_rows(request: Request) -> HTMLResponse:
    session = await session_of(request)
    context = await _runs_context(request, services(request), session)
    return fragment(request, "_runs_rows.html", **context)


async def _run_context(
    request: Request, svc: Services, session: Session, run: Run
) -> dict[str, Any]:
    store = svc.client.store
    count, last_seq = await store.journal_extent(run.id)
    costs = await store.sum_run_events([run.id], types=LLM_TYPES, sums=COST_SUMS)
    approvals: list[Approval] = []
    if session.approve and run.state == RunState.WAITING:
        approvals = await store.list_approvals(
            state=ApprovalState.PENDING, tenant=session.principal.tenant, run_id=run.id
        )
    return {
        "run": run,
        "count": count,
        "last_seq": last_seq,
        "cost": costs.get(run.id, {}),
        "approvals": approvals,
        "actions": _actions(session, run, approvals),
        "did": _DID.get(request.query_params.get("did") or ""),
        "decoded": _decoded,
    }


def _actions(session: Session, run: Run, approvals: list[Approval]) -> list[str]:
    """The controls the person may use on this run now (also the key of the controls'
    fragment: the page replaces its forms only when these change)."""
    acts: list[str] = []
    if session.operate and not run.state.terminal:
        paused = run.state == RunState.PAUSED or (
            run.control is not None and run.control.value == "pause"
        )
        acts.append("resume" if paused else "pause")
        acts.extend(("cancel", "message"))
    acts.extend(f"approval:{a.id}" for a in approvals)
    return acts


def _decoded(text: str | None) -> str:
    """A run's input, output or error (JSON text) as a person reads it."""
    if text is None:
        return ""
    try:
        return pretty(json.loads(text))
    except ValueError:
        return text


@router.get("/runs/{run_id}")
async def run_page(request: Request, run_id: str) -> HTMLResponse:
    session = await session_of(request)
    svc = services(request)
    run = await visible_run(svc, session.principal, run_id)
    context = await _run_context(request, svc, session, run)
    # ?after=N: the page from there (the "Load more" link, followed without the script)
    after = _int(request, "after")
    events = await svc.client.store.journal_page(run.id, after_seq=after, limit=EVENTS_PAGE)
    rows = rows_of(events, run.created_at)
    span = span_of(rows, _lifetime(run))
    return page(
        request,
        "run.html",
        session=session,
        nav="runs",
        rows=rows,
        span=span,
        next=events[-1].seq
        if len(events) == EVENTS_PAGE and events[-1].seq < context["last_seq"]
        else None,
        categories=CATEGORIES,
        **context,
    )


@router.get("/fragments/runs/{run_id}/summary")
async def run_summary(request: Request, run_id: str) -> HTMLResponse:
    session = await session_of(request)
    svc = services(request)
    run = await visible_run(svc, session.principal, run_id)
    context = await _run_context(request, svc, session, run)
    return fragment(request, "_run_summary.html", session=session, **context)


@router.get("/fragments/runs/{run_id}/timeline")
async def run_timeline(request: Request, run_id: str) -> HTMLResponse:
    """The events after ``after``, as rows; ``X-Next`` names the next page's ``after`` (empty
    when these reach the end of the journal as it is now)."""
    session = await session_of(request)
    svc = services(request)
    run = await visible_run(svc, session.principal, run_id)
    after = _int(request, "after")
    events = await svc.client.store.journal_page(run.id, after_seq=after, limit=EVENTS_PAGE + 1)
    page_events = events[:EVENTS_PAGE]
    rows = rows_of(page_events, run.created_at)
    following = str(page_events[-1].seq) if len(events) > EVENTS_PAGE else ""
    return fragment(
        request,
        "_timeline_rows.html",
        headers={"X-Next": following},
        rows=rows,
        span=span_of(rows, _lifetime(run)),
        run=run,
    )


@router.get("/runs/{run_id}/events/{seq}.json")
async def run_event(request: Request, run_id: str, seq: int) -> JSONResponse:
    """One event whole, as the API's journal gives it (for payloads the timeline cuts)."""
    session = await session_of(request)
    svc = services(request)
    run = await visible_run(svc, session.principal, run_id)
    found = await svc.client.store.journal_page(run.id, after_seq=max(seq - 1, 0), limit=1)
    if not found or found[0].seq != seq:
        raise not_found(f"event {seq} of run {run_id}")
    return JSONResponse(
        EventOut.of(found[0]).model_dump(mode="json"), headers={"Cache-Control": "no-store"}
    )


def _lifetime(run: Run) -> float:
    """The run's time axis: creation to its end, or to now while it goes on."""
    end = run.updated_at if run.state.terminal else time.time()
    return end - run.created_at


def _int(request: Request, name: str) -> int:
    text = request.query_params.get(name, "0")
    if not text.isdigit() or len(text) > 18:
        raise ProblemError(400, f"{name} must be a journal seq (a whole number)", kind="cursor")
    return int(text)


@router.get("/live/runs/{run_id}")
async def run_live(request: Request, run_id: str) -> Response:
    """The run's events as server-sent events (as ``/v1/runs/{id}/events``, signed in by
    the session's cookie, which an ``EventSource`` sends and a bearer header it cannot)."""
    session = await session_of(request)
    svc = services(request)
    run = await visible_run(svc, session.principal, run_id)
    resume_at = request.headers.get("last-event-id", "").strip()
    after = (
        int(resume_at) if resume_at.isdigit() and len(resume_at) <= 18 else _int(request, "after")
    )
    return EventStream(
        _stream(svc, run, after), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


# -- controls -------------------------------------------------------------------------------


def _reason(form: dict[str, str]) -> str | None:
    reason = (form.get("reason") or "").strip()
    if len(reason) > 2000 or "\x00" in reason:
        raise ProblemError(422, "a reason is at most 2,000 characters of text", kind="form")
    return reason or None


async def _acting(request: Request, run_id: str) -> tuple[Session, Services, dict[str, str]]:
    session = await session_of(request)
    form = await read_form(request)
    check_csrf(request, session, form)
    require(session, Permission.OPERATE, "start or control runs")
    svc = services(request)
    await visible_run(svc, session.principal, run_id)
    return session, svc, form


@router.post("/runs/{run_id}/pause")
async def pause(request: Request, run_id: str) -> Response:
    session, svc, form = await _acting(request, run_id)
    await svc.client.pause(run_id, reason=_reason(form), by=session.principal.actor)
    return see_other(f"/runs/{run_id}?did=pause")


@router.post("/runs/{run_id}/resume")
async def resume(request: Request, run_id: str) -> Response:
    session, svc, form = await _acting(request, run_id)
    await svc.client.resume(run_id, reason=_reason(form), by=session.principal.actor)
    return see_other(f"/runs/{run_id}?did=resume")


@router.post("/runs/{run_id}/cancel")
async def cancel(request: Request, run_id: str) -> Response:
    session, svc, form = await _acting(request, run_id)
    await svc.client.cancel(run_id, reason=_reason(form), by=session.principal.actor)
    return see_other(f"/runs/{run_id}?did=cancel")


def _json_or_text(text: str) -> Any:
    """A form's value: JSON when it parses as JSON, else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


@router.post("/runs/{run_id}/message")
async def send_message(request: Request, run_id: str) -> Response:
    session, svc, form = await _acting(request, run_id)
    topic = (form.get("topic") or "").strip()
    if not topic or len(topic) > 200 or "\x00" in topic:
        raise ProblemError(422, "a message needs a topic (1 to 200 characters)", kind="form")
    value = form.get("value") or ""
    await svc.client.send(
        run_id,
        topic,
        _json_or_text(value) if value.strip() else None,
        sender=session.principal.actor,
    )
    return see_other(f"/runs/{run_id}?did=message")


# -- approvals ------------------------------------------------------------------------------


@router.get("/approvals")
async def approvals_page(request: Request) -> HTMLResponse:
    session = await session_of(request)
    require(session, Permission.APPROVE, "see or decide approvals")
    store = services(request).client.store
    tenant = session.principal.tenant
    pending = await store.list_approvals(state=ApprovalState.PENDING, tenant=tenant, limit=200)
    decided = await store.list_approvals(state=None, tenant=tenant, limit=500)
    recent = sorted(
        (a for a in decided if a.state != ApprovalState.PENDING),
        key=lambda a: a.decided_at or 0.0,
        reverse=True,
    )[:20]
    return page(
        request,
        "approvals.html",
        session=session,
        nav="approvals",
        pending=pending,
        recent=recent,
        did=_DID.get(request.query_params.get("did") or ""),
    )


async def _approval(
    request: Request, approval_id: str
) -> tuple[Session, Services, dict[str, str], Approval]:
    session = await session_of(request)
    form = await read_form(request)
    check_csrf(request, session, form)
    require(session, Permission.APPROVE, "see or decide approvals")
    svc = services(request)
    try:
        found = await svc.client.store.get_approval(approval_id, tenant=session.principal.tenant)
    except ApprovalNotFound:
        raise not_found(f"approval {approval_id}") from None
    return session, svc, form, found


def _back(form: dict[str, str], approval: Approval, did: str) -> str:
    """Where a decision returns to: the run's page or the inbox, nowhere else."""
    if form.get("back") == f"/runs/{approval.run_id}":
        return f"/runs/{approval.run_id}?did={did}"
    return f"/approvals?did={did}"


def _answer(form: dict[str, str], approval: Approval) -> tuple[Any, bool]:
    """The answer a form gives (None: none), and whether it edits a tool's arguments."""
    text = (form.get("answer") or "").strip()
    if not text:
        return None, False
    try:
        answer = json.loads(text)
    except ValueError as exc:
        raise InvalidInput(
            f"the answer is not valid JSON ({exc}); fix it and approve again"
        ) from None
    if approval.kind.startswith("tool:"):
        if answer == approval.details.get("arguments"):
            return None, False
        return answer, True
    return answer, False


@router.post("/approvals/{approval_id}/approve")
async def approve(request: Request, approval_id: str) -> Response:
    session, svc, form, found = await _approval(request, approval_id)
    answer, edited = _answer(form, found)
    await svc.client.decide(
        approval_id,
        approve=True,
        by=session.principal.actor,
        reason=_reason(form),
        answer=answer,
        tenant=session.principal.tenant,
    )
    return see_other(_back(form, found, "edited" if edited else "approved"))


@router.post("/approvals/{approval_id}/reject")
async def reject(request: Request, approval_id: str) -> Response:
    session, svc, form, found = await _approval(request, approval_id)
    await svc.client.decide(
        approval_id,
        approve=False,
        by=session.principal.actor,
        reason=_reason(form),
        tenant=session.principal.tenant,
    )
    return see_other(_back(form, found, "rejected"))


# -- providers and costs --------------------------------------------------------------------


async def _health(request: Request, session: Session) -> Health:
    window = request.query_params.get("window") or "1h"
    if window not in HEALTH_WINDOWS:
        raise ProblemError(
            400, f"window {window!r}? use one of {list(HEALTH_WINDOWS)}", kind="filter"
        )
    state = dashboard(request)
    key = (session.principal.tenant, window)
    cached = state.health.get(key)
    if cached is not None and cached[0] > time.monotonic():
        return cached[1]
    health = await provider_health(
        services(request).client.store, window=window, tenant=session.principal.tenant
    )
    state.health[key] = (time.monotonic() + state.HEALTH_TTL, health)
    return health


@router.get("/providers")
async def providers_page(request: Request) -> HTMLResponse:
    session = await session_of(request)
    health = await _health(request, session)
    return page(
        request,
        "providers.html",
        session=session,
        nav="providers",
        health=health,
        windows=list(HEALTH_WINDOWS),
    )


@router.get("/fragments/providers")
async def providers_body(request: Request) -> HTMLResponse:
    session = await session_of(request)
    return fragment(request, "_providers_body.html", health=await _health(request, session))


@router.get("/costs")
async def costs_page(request: Request) -> HTMLResponse:
    session = await session_of(request)
    svc = services(request)
    by = request.query_params.get("by") or "agent"
    window = request.query_params.get("window") or "24h"
    if by not in ("agent", "model", "tenant"):
        raise ProblemError(400, f"spend by {by!r}? use agent, model or tenant", kind="filter")
    if window not in COST_WINDOWS:
        raise ProblemError(
            400, f"window {window!r}? use one of {list(COST_WINDOWS)}", kind="filter"
        )
    now = time.time()
    tenant = session.principal.tenant
    chart, lines = await spend_over_time(
        svc.client.store, by=by, window=window, tenant=tenant, now=now
    )
    report = await budget_report(svc.client.store, svc.budgets, now=now)
    if tenant is not None:
        report = await _of_tenant(svc.client.store, report, session.principal)
    budgets = await budget_views(svc.client.store, report, tenant=tenant, now=now)
    return page(
        request,
        "costs.html",
        session=session,
        nav="costs",
        chart=chart,
        lines=lines,
        budgets=budgets,
        by=by,
        window=window,
        windows=list(COST_WINDOWS),
        configured=len(svc.budgets),
    )
