"""The dashboard's plumbing: templates, static files, security headers, and errors as pages.

Pages are Jinja2 templates rendered on the server; the one stylesheet and the one script are
files of this package (``dashboard/static``), served by the app itself: nothing is fetched
from elsewhere and nothing is built on the user's machine. The Content-Security-Policy allows
scripts, styles and connections from the dashboard's own origin only, and no inline script or
style at all, so markup injected into a page (were escaping ever to fail) could not run.

A dashboard route answers a failure with a page, not a problem document: ``PageRoute`` wraps
each handler and renders what the API would have said (status and detail alike) as HTML, and
sends a person without a session to the sign-in page.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException

from kernos.errors import KernosError

from ._dashboard_auth import LoginRequired, Session, session_of
from ._dashboard_data import Health
from ._dashboard_timeline import duration_text, pretty, usd_text
from ._problems import _KERNOS, ProblemError, retry_after

log = logging.getLogger("kernos.api")

ROOT = Path(__file__).resolve().parent / "dashboard"
TEMPLATES = ROOT / "templates"
STATIC = ROOT / "static"

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
        "object-src 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def when(ts: float | None) -> str:
    """A time as the dashboard prints it (UTC; the page's script shows it in local time)."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso(ts: float | None) -> str:
    return "" if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def ago(ts: float | None, now: float | None = None) -> str:
    """How long ago, to the unit that matters: ``12 s``, ``5 min``, ``3 h``, ``2 d``."""
    if ts is None:
        return "-"
    seconds = max(0.0, (time.time() if now is None else now) - ts)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86_400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} d"


def number(value: float | None) -> str:
    """A coordinate for SVG markup: fixed-point, never an exponent."""
    return f"{value or 0.0:.6f}".rstrip("0").rstrip(".") or "0"


def _asset_version() -> str:
    digest = hashlib.sha256()
    for path in sorted(STATIC.iterdir()):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


class DashboardState:
    """What the dashboard keeps for the life of the app: its templates, the version of its
    static files (for cache-busting URLs), and a short cache of provider health, so that many
    people watching the providers page cost one journal scan per few seconds."""

    HEALTH_TTL = 3.0

    def __init__(self) -> None:
        self.env = Environment(
            loader=FileSystemLoader(TEMPLATES),
            autoescape=select_autoescape(["html"]),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(
            when=when,
            iso=iso,
            ago=ago,
            duration=duration_text,
            usd=usd_text,
            pretty=pretty,
            n=number,
        )
        self.env.globals["asset"] = _asset_version()
        self.health: dict[tuple[str | None, str], tuple[float, Health]] = {}

    def render(self, name: str, **context: Any) -> str:
        return self.env.get_template(name).render(**context)


def dashboard(request: Request) -> DashboardState:
    state = request.app.state.dashboard
    assert isinstance(state, DashboardState)
    return state


def page(
    request: Request,
    name: str,
    *,
    session: Session | None,
    status: int = 200,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    """A template rendered with what every page needs, and the security headers."""
    html = dashboard(request).render(
        name, request=request, session=session, path=request.url.path, now=time.time(), **context
    )
    return HTMLResponse(html, status_code=status, headers={**SECURITY_HEADERS, **(headers or {})})


def fragment(
    request: Request,
    name: str,
    *,
    session: Session | None = None,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    """A piece of a page for the page's script to put in place (no layout)."""
    return page(request, name, session=session, headers=headers, **context)


def see_other(location: str) -> RedirectResponse:
    return RedirectResponse(location, status_code=303, headers={"Cache-Control": "no-store"})


def local_path(target: str | None, default: str = "/") -> str:
    """``target`` if it is a path on this site (never another host: no open redirect)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return default
    if not target.isprintable() or "\\" in target or len(target) > 2000:
        return default  # browsers drop tabs and newlines: "/\t/evil.example" is "//evil..."
    return target


def _problem_of(exc: Exception) -> tuple[int, str, dict[str, str]]:
    """The status, detail and headers the API would answer ``exc`` with."""
    if isinstance(exc, ProblemError):
        return exc.status, exc.detail, exc.headers
    if isinstance(exc, KernosError):
        status = next((s for cls, s, _ in _KERNOS if isinstance(exc, cls)), 500)
        if status == 503:
            log.warning("dashboard: %s", exc)
            return (
                503,
                "the database is unavailable or slow; retry shortly",
                (retry_after(exc) or {"Retry-After": "5"}),
            )
        if status == 500:
            log.error("dashboard: %r", exc)
            return 500, "the server failed to handle the request", {}
        return status, str(exc), {}
    if isinstance(exc, RequestValidationError):
        where = "; ".join(
            f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in exc.errors()[:5]
        )
        return 422, f"the request is not valid: {where}", {}
    if isinstance(exc, StarletteHTTPException):
        return exc.status_code, str(exc.detail), dict(exc.headers or {})
    log.error("dashboard: %s failed", type(exc).__name__, exc_info=exc)
    return 500, "the server failed to handle the request; its log says why", {}


def error_page(request: Request, exc: Exception, session: Session | None = None) -> HTMLResponse:
    status, detail, headers = _problem_of(exc)
    return page(
        request,
        "error.html",
        session=session,
        status=status,
        headers=headers,
        title=HTTPStatus(status).phrase,
        status_code=status,
        detail=detail,
    )


Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class PageRoute(APIRoute):
    """A dashboard route: failures become error pages; without a session, a page (GET)
    redirects to sign-in and anything else (a form, a fragment, an event stream) is 401."""

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except LoginRequired:
                if request.method == "GET" and not _is_fragment(request):
                    target = request.url.path + (
                        f"?{request.url.query}" if request.url.query else ""
                    )
                    return see_other(f"/login?next={quote(target, safe='')}")
                return error_page(
                    request, ProblemError(401, "sign in first: your session ended", kind="login")
                )
            except Exception as exc:
                return error_page(request, exc, await _session_if_any(request))

        return handle


async def _session_if_any(request: Request) -> Session | None:
    """The session, for an error page's header, if the request has a valid one."""
    try:
        return await session_of(request)
    except (LoginRequired, ProblemError):
        return None


def _is_fragment(request: Request) -> bool:
    return request.url.path.startswith(("/fragments/", "/live/"))
