"""The dashboard's pages over HTTP (no browser): signing in, roles, CSRF, tenants, errors as
pages, and a long journal served a page at a time. The browser tests (test_browser.py) drive
the same pages in Chromium."""

from __future__ import annotations

import re

from api._api_support import pending_approval, snapshot

from kernos.api import create_app
from kernos.kernel import Registry
from kernos.store import ApprovalState, RunState
from kernos.testing import FAST, running_worker

from ._journals import written_run
from ._web import Web

CONTROL_FORM = re.compile(r'<form method="post" action="/runs/[^"]+/(pause|resume|cancel|message)"')


async def targets(web: Web, registry: Registry, tenant: str = "acme") -> tuple[str, str, str]:
    """A finished run, a run waiting for a person, and its approval."""
    done = (await web.client.start("echo", "x", tenant=tenant)).id
    asking = (await web.client.start("asks", "ok?", tenant=tenant)).id
    async with running_worker(web.client, registry, FAST, services={}):
        await web.client.wait(done, timeout=20)
        approval = await pending_approval(web.client, asking)
    return done, asking, approval


def test_the_dashboard_is_not_in_the_openapi_document() -> None:
    paths = create_app().openapi()["paths"]
    assert all(p.startswith("/v1") or p in ("/healthz", "/readyz") for p in paths)


async def test_without_a_session_pages_send_you_to_sign_in(web: Web) -> None:
    r = await web.http.get("/runs/01ABC?x=1")
    assert r.status_code == 303
    assert r.headers["location"] == "/login?next=%2Fruns%2F01ABC%3Fx%3D1"
    for path in ("/fragments/runs", "/fragments/providers", "/live/runs/01ABC"):
        r = await web.http.get(path)
        assert r.status_code == 401 and "text/html" in r.headers["content-type"], path
    r = await web.http.post("/runs/01ABC/pause", data={"csrf": "x"})
    assert r.status_code == 401
    login = await web.http.get("/login?next=/runs/01ABC")
    assert login.status_code == 200 and 'name="next" value="/runs/01ABC"' in login.text
    # the API is untouched: bearer keys only
    assert (await web.http.get("/v1/runs", headers=web.cookie())).status_code == 401


async def test_signing_in_sets_a_cookie_scripts_cannot_read(web: Web) -> None:
    bad = await web.http.post("/login", data={"key": "kn_nope_nope", "next": "/"})
    assert bad.status_code == 401 and "unknown, revoked or mistyped" in bad.text
    secret = web.keys[("viewer", "acme")]
    r = await web.http.post(
        "/login",
        data={"key": secret, "next": "//evil.example/x"},
        headers={"Origin": "http://kernos.test"},
    )
    assert r.status_code == 303 and r.headers["location"] == "/"  # never off-site
    for target in ("/\t/evil.example", "/\\evil.example", "https://evil.example", "x"):
        r = await web.http.post("/login", data={"key": secret, "next": target})
        assert r.headers["location"] == "/", target
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"kernos_session={secret};")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain http here; https gets Secure
    secure = await web.http.post(
        "https://kernos.test/login", data={"key": secret, "next": "/costs"}
    )
    assert secure.headers["location"] == "/costs" and "Secure" in secure.headers["set-cookie"]
    forged = await web.http.post(
        "/login", data={"key": secret}, headers={"Origin": "https://evil.example"}
    )
    assert forged.status_code == 403 and "set-cookie" not in forged.headers
    page = await web.get("/", "viewer")
    assert page.status_code == 200 and "viewer-acme" in page.text
    out = await web.post("/logout", {}, "viewer")
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert 'kernos_session=""' in out.headers["set-cookie"]


async def test_a_revoked_key_signs_the_session_out(web: Web) -> None:
    key = next(k for k in await web.client.store.list_api_keys() if k.name == "viewer-acme")
    assert (await web.get("/", "viewer")).status_code == 200
    await web.client.store.revoke_api_key(key.id)
    r = await web.get("/", "viewer")
    assert r.status_code == 303 and r.headers["location"].startswith("/login")


async def test_a_viewer_sees_no_controls_and_its_forged_posts_are_refused(
    web: Web, registry: Registry
) -> None:
    _, asking, approval = await targets(web, registry)
    viewer = await web.get(f"/runs/{asking}", "viewer")
    assert viewer.status_code == 200
    assert not CONTROL_FORM.search(viewer.text) and "/approve" not in viewer.text
    assert 'href="/approvals"' not in viewer.text
    operator = await web.get(f"/runs/{asking}", "operator")
    assert {m.group(1) for m in CONTROL_FORM.finditer(operator.text)} == {
        "pause",
        "cancel",
        "message",
    }
    assert "/approve" not in operator.text  # an operator may not decide
    approver = await web.get(f"/runs/{asking}", "approver")
    assert (
        not CONTROL_FORM.search(approver.text) and f"/approvals/{approval}/approve" in approver.text
    )
    before = await snapshot(web.client)
    for path in (f"/runs/{asking}/pause", f"/runs/{asking}/cancel", f"/runs/{asking}/message"):
        r = await web.post(path, {"topic": "t", "value": "1"}, "viewer")
        assert r.status_code == 403 and "viewer role may not" in r.text, path
    for path in (f"/approvals/{approval}/approve", f"/approvals/{approval}/reject"):
        r = await web.post(path, {}, "operator")
        assert r.status_code == 403 and "operator role may not" in r.text, path
    assert (await web.get("/approvals", "viewer")).status_code == 403
    assert await snapshot(web.client) == before


async def test_a_post_without_this_sessions_token_or_from_another_site_is_refused(
    web: Web, registry: Registry
) -> None:
    _, asking, approval = await targets(web, registry)
    before = await snapshot(web.client)
    attempts = [
        await web.post(f"/runs/{asking}/pause", {}, "operator", token=False),
        await web.post(f"/runs/{asking}/pause", {"csrf": "forged"}, "operator"),
        await web.post(
            f"/runs/{asking}/pause", {"csrf": web.csrf("operator", "globex")}, "operator"
        ),
        await web.post(f"/runs/{asking}/pause", {}, "operator", origin="https://evil.example"),
        await web.post(f"/approvals/{approval}/approve", {}, "approver", token=False),
        await web.post("/logout", {}, "viewer", token=False),
    ]
    assert [r.status_code for r in attempts] == [403] * len(attempts)
    assert "security token" in attempts[0].text and "another site" in attempts[3].text
    assert await snapshot(web.client) == before
    ok = await web.post(f"/runs/{asking}/pause", {"reason": "lunch"}, "operator")
    assert ok.status_code == 303 and ok.headers["location"] == f"/runs/{asking}?did=pause"
    run = await web.client.get(asking)
    assert run.state == RunState.PAUSED
    audit = [(e.actor, e.action) for e in await web.client.store.list_audit()]
    assert any(
        actor.startswith("key:operator-acme/") and action == "run.pause" for actor, action in audit
    )
    # the header works as well as the field, for the page's script
    resumed = await web.http.post(
        f"/runs/{asking}/resume",
        data={},
        headers={**web.cookie("operator"), "X-CSRF-Token": web.csrf("operator")},
    )
    assert resumed.status_code == 303


async def test_another_tenants_run_is_not_found_as_an_unknown_one_is(
    web: Web, registry: Registry
) -> None:
    done, asking, approval = await targets(web, registry, "globex")
    before = await snapshot(web.client)
    paths = [
        "/runs/{}",
        "/fragments/runs/{}/summary",
        "/fragments/runs/{}/timeline",
        "/live/runs/{}",
        "/runs/{}/events/1.json",
    ]
    for path in paths:
        for run in (done, asking):
            theirs = await web.get(path.format(run), "admin", "acme")
            unknown = await web.get(path.format("0" * 26), "admin", "acme")
            assert theirs.status_code == unknown.status_code == 404, path
            assert theirs.text.replace(run, "ID") == unknown.text.replace("0" * 26, "ID")
    for action in ("pause", "cancel"):
        r = await web.post(f"/runs/{asking}/{action}", {}, "admin", "acme")
        assert r.status_code == 404
    r = await web.post(f"/approvals/{approval}/approve", {}, "admin", "acme")
    assert r.status_code == 404
    assert await snapshot(web.client) == before
    listed = await web.get("/", "admin", "acme")
    assert done not in listed.text and asking not in listed.text
    assert (await web.get("/?tenant=globex", "viewer", "acme")).status_code == 403
    inbox = await web.get("/approvals", "approver", "acme")
    assert approval not in inbox.text
    theirs = await web.get("/", "viewer", "globex")
    assert done in theirs.text and asking in theirs.text
    everyone = await web.get("/?tenant=globex", "admin", None)
    assert done in everyone.text


async def test_problems_are_pages_with_the_apis_words(web: Web) -> None:
    r = await web.get("/runs/nope")
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    assert "run nope not found" in r.text
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-frame-options"] == "DENY"
    r = await web.get("/?state=sleepy")
    assert r.status_code == 400 and "no run state" in r.text
    r = await web.get("/costs?by=colour")
    assert r.status_code == 400
    run = await web.client.start("echo", 1, tenant="acme")
    r = await web.get(f"/fragments/runs/{run.id}/timeline?after=-1")
    assert r.status_code == 400 and "journal seq" in r.text


async def test_approving_editing_and_rejecting_by_form(web: Web, registry: Registry) -> None:
    first = (await web.client.start("asks", "how much?", tenant="acme")).id
    second = (await web.client.start("asks", "again?", tenant="acme")).id
    async with running_worker(web.client, registry, FAST, services={}):
        one = await pending_approval(web.client, first)
        two = await pending_approval(web.client, second)
        inbox = await web.get("/approvals", "approver")
        assert one in inbox.text and two in inbox.text and "how much?" in inbox.text
        bad = await web.post(
            f"/approvals/{one}/approve", {"answer": '{"amount": "lots"}'}, "approver"
        )
        assert bad.status_code == 422 and "does not fit" in bad.text
        bad = await web.post(f"/approvals/{one}/approve", {"answer": "{nope"}, "approver")
        assert bad.status_code == 422 and "not valid JSON" in bad.text
        ok = await web.post(
            f"/approvals/{one}/approve",
            {"answer": '{"amount": 42}', "reason": "fine", "back": f"/runs/{first}"},
            "approver",
        )
        assert ok.headers["location"] == f"/runs/{first}?did=approved"
        no = await web.post(
            f"/approvals/{two}/reject", {"reason": "not ours", "back": "https://x"}, "approver"
        )
        assert no.headers["location"] == "/approvals?did=rejected"
        again = await web.post(f"/approvals/{two}/approve", {}, "approver")
        assert again.status_code == 409 and "already rejected" in again.text
        done = await web.client.wait(first, timeout=20)
        other = await web.client.wait(second, timeout=20)
    assert done.output is not None and '"amount": 42' in done.output.replace(
        '"amount":42', '"amount": 42'
    )
    assert other.state == RunState.COMPLETED
    decided = await web.client.store.get_approval(two)
    assert decided.state == ApprovalState.REJECTED and decided.reason == "not ours"
    assert decided.decided_by is not None and decided.decided_by.startswith("key:approver-acme/")
    page = await web.get(f"/runs/{first}?did=approved")
    assert "Approved: the run goes on." in page.text and "approval_decided" in page.text


async def test_a_message_is_json_when_it_parses_and_text_otherwise(
    web: Web, registry: Registry
) -> None:
    first = (await web.client.start("waits", "go", tenant="acme")).id
    second = (await web.client.start("waits", "go", tenant="acme")).id
    async with running_worker(web.client, registry, FAST, services={}):
        for run_id, value in ((first, '{"n": 1}'), (second, "hello there")):
            r = await web.post(
                f"/runs/{run_id}/message", {"topic": "go", "value": value}, "operator"
            )
            assert r.status_code == 303
        one = await web.client.wait(first, timeout=20)
        two = await web.client.wait(second, timeout=20)
    assert one.output == '{"n":1}' or one.output == '{"n": 1}'
    assert two.output == '"hello there"'
    empty = await web.post(f"/runs/{first}/message", {"topic": " "}, "operator")
    assert empty.status_code == 422


async def test_a_long_journal_is_served_a_page_at_a_time(web: Web) -> None:
    run_id = await written_run(web.client.store, 450)
    page = await web.get(f"/runs/{run_id}")
    assert page.status_code == 200
    assert page.text.count('<div class="row ev ') == 200
    assert 'data-next="200"' in page.text and 'data-last-seq="451"' in page.text
    assert f'href="/runs/{run_id}?after=200"' in page.text
    seen = 200
    after = "200"
    while after:
        r = await web.get(f"/fragments/runs/{run_id}/timeline?after={after}")
        rows = [int(s) for s in re.findall(r'data-seq="(\d+)"', r.text)]
        assert rows == list(range(seen + 1, seen + 1 + len(rows))) and len(rows) <= 200
        seen += len(rows)
        after = r.headers["x-next"]
    assert seen == 451
    # the "Load more" link works without the page's script too
    later = await web.get(f"/runs/{run_id}?after=400")
    assert re.findall(r'data-seq="(\d+)"', later.text) == [str(n) for n in range(401, 452)]
    assert "From event 401 on" in later.text and 'data-next=""' in later.text
    whole = await web.get(f"/runs/{run_id}/events/3.json")
    assert whole.json()["type"] == "memory_search" and whole.json()["seq"] == 3
