"""Who is looking at the dashboard: the API key in a cookie, and CSRF tokens for its forms.

A person signs in by pasting an API key (``kernos keys create``). The key goes into a cookie
that scripts cannot read (``HttpOnly``), that the browser sends only with requests from the
dashboard's own site (``SameSite=Strict``) and, when the dashboard is served over HTTPS, only
over HTTPS (``Secure``). Each request resolves it exactly as the API resolves a bearer key
(the same ``KeyCache``: same roles, same tenant scope, a revoked key stops working within the
cache's TTL), so the dashboard can show and do nothing the key could not do through ``/v1``.

The cookie is honoured on the dashboard's routes only, never on ``/v1``: the JSON API keeps
bearer keys, which a browser never attaches on its own, so no ``/v1`` route can be the target
of a cross-site request forgery. The dashboard's own state-changing routes (pause, resume,
cancel, send, approve, reject, sign out) are POSTs that must carry a CSRF token, in a form
field ``csrf`` or an ``X-CSRF-Token`` header:

* the token is an HMAC of a fixed label keyed by the session's secret: a page of the
  dashboard knows it (it is written into the page), another site cannot compute or read it,
  and every server process computes the same one without a session table;
* a request whose ``Origin`` header names another origin is refused as well (browsers send
  ``Origin`` with every POST), and ``SameSite=Strict`` keeps the cookie off cross-site
  requests in the first place: three independent locks.

Signing in is checked by ``Origin`` too (there is no session yet to bind a token to), so that
another site cannot sign a person into a key of its choosing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from fastapi import Request
from starlette.responses import Response

from kernos.errors import InfrastructureError

from ._auth import KeyCache, Permission, Principal
from ._problems import ProblemError, retry_after
from ._state import ApiState

COOKIE = "kernos_session"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
#: how long a sign-in lasts (seconds): a working day and then some
SESSION_SECONDS = 12 * 3600
_LABEL = b"kernos dashboard csrf v1"
#: a form body this large is refused (a message or edited arguments are small JSON)
MAX_FORM = 256 * 1024


class LoginRequired(Exception):
    """No valid session: a page answers with a redirect to the sign-in page."""


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in person: the key's principal and the CSRF token of its pages."""

    principal: Principal
    csrf: str

    def may(self, permission: Permission) -> bool:
        return self.principal.may(permission)

    @property
    def operate(self) -> bool:
        return self.may(Permission.OPERATE)

    @property
    def approve(self) -> bool:
        return self.may(Permission.APPROVE)


def csrf_token(secret: str) -> str:
    """The CSRF token of the session holding ``secret``."""
    key = hashlib.sha256(secret.encode()).digest()
    mac = hmac.new(key, _LABEL, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def _keys(request: Request) -> KeyCache:
    state = request.app.state.kernos
    assert isinstance(state, ApiState)
    cache = state.keys()
    if cache is None:
        raise ProblemError(
            503,
            "the dashboard is starting or stopping; reload in a moment",
            kind="unavailable",
            headers={"Retry-After": "1"},
        )
    return cache


async def principal_of(request: Request, secret: str) -> Principal | None:
    """The key's principal, as the API's middleware resolves a bearer key; None if unknown,
    revoked or malformed."""
    try:
        return await _keys(request).principal(secret.strip())
    except InfrastructureError as exc:
        raise ProblemError(
            503,
            "the database is unavailable, so the key cannot be checked; retry later",
            kind="unavailable",
            headers=retry_after(exc) or {"Retry-After": "5"},
        ) from exc


async def session_of(request: Request) -> Session:
    """The request's session, or ``LoginRequired``."""
    secret = request.cookies.get(COOKIE)
    if not secret:
        raise LoginRequired
    principal = await principal_of(request, secret)
    if principal is None:
        raise LoginRequired
    return Session(principal, csrf_token(secret))


def same_origin(request: Request) -> bool:
    """False when the request says it comes from another site (``Origin``, or failing that
    ``Referer``); True when it names this host or names none (not a browser's POST)."""
    claimed = request.headers.get("origin") or request.headers.get("referer")
    if not claimed or claimed == "null":
        return claimed is None
    # The host and port, not the scheme: behind a proxy that ends TLS the app may see http
    # while the browser says https. The CSRF token is what binds a form to a session.
    return urlsplit(claimed).netloc == request.url.netloc


async def read_form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body as a dict (the last value of a name)."""
    body = await request.body()
    if not body:
        return {}
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise ProblemError(
            415, "send the dashboard's forms as application/x-www-form-urlencoded", kind="form"
        )
    if len(body) > MAX_FORM:
        raise ProblemError(413, f"a form is at most {MAX_FORM} bytes", kind="too-large")
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise ProblemError(400, "the form is not UTF-8", kind="form") from None
    fields = parse_qs(text, keep_blank_values=True, max_num_fields=50)
    return {name: values[-1] for name, values in fields.items()}


def check_csrf(request: Request, session: Session, form: dict[str, str]) -> None:
    """403 unless the request carries this session's token and comes from this origin."""
    given = form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or ""
    if not hmac.compare_digest(given.encode(), session.csrf.encode()):
        raise ProblemError(
            403,
            "this form's security token is missing or stale; reload the page and try again",
            kind="csrf",
        )
    if not same_origin(request):
        raise ProblemError(403, "a request from another site was refused", kind="csrf")


def require(session: Session, permission: Permission, what: str) -> None:
    """403 when the session's role may not do ``what``."""
    if not session.may(permission):
        raise ProblemError(
            403,
            f"the {session.principal.role} role may not {what}; sign in with a key whose role "
            f"allows it",
            kind="forbidden",
        )


def set_session(response: Response, request: Request, secret: str) -> None:
    response.set_cookie(
        COOKIE,
        secret,
        max_age=SESSION_SECONDS,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def end_session(response: Response, request: Request) -> None:
    response.delete_cookie(
        COOKIE, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https"
    )
