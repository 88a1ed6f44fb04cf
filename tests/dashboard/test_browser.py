"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright):
signing in, the runs list's filters, pages and live updates, a run followed live as it ends,
a tool call approved (and edited) through the page until its run completes, what a viewer
and another tenant cannot see or do, and a run of 10,000 events read a page at a time.

One browser for the module, one server, worker and database per backend; each test opens
its own browser context (its own cookies), signed in with the key of the role it needs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
from api._api_support import pending_approval
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from kernos.api._dashboard_auth import COOKIE
from kernos.sim import Reply, SimServer
from kernos.sim import ToolCall as Call
from kernos.store import NewRun, RunState, new_run_id

from ._journals import written_run
from ._web import PROVIDER, Stack, in_state
from .conftest import chromium_path

#: how long a page may take to show what a run did (the run, not the page, is the slow part)
LIVE = 20_000

SignIn = Callable[..., Page]


@pytest.fixture(scope="module")
def stack(module_db: str, kernos_sim_server: SimServer) -> Iterator[Stack]:
    with Stack(module_db, kernos_sim_server) as s:
        yield s


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    path = chromium_path()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def sign_in(browser: Browser, stack: Stack) -> Iterator[SignIn]:
    """``sign_in(role, tenant)``: a page in a fresh context holding that key's session.
    Every page's script errors fail the test."""
    contexts: list[BrowserContext] = []
    errors: list[str] = []

    def open_page(role: str = "admin", tenant: str | None = "acme") -> Page:
        context = browser.new_context(base_url=stack.url, viewport={"width": 1400, "height": 900})
        contexts.append(context)
        if role:
            context.add_cookies(
                [{"name": COOKIE, "value": stack.keys[(role, tenant)], "url": stack.url}]
            )
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        return page

    yield open_page
    for context in contexts:
        context.close()
    assert errors == []


def test_signing_in_with_a_key_and_out(sign_in: SignIn, stack: Stack) -> None:
    page = sign_in(role="")
    page.goto("/costs")
    expect(page).to_have_url(f"{stack.url}/login?next=%2Fcosts")
    page.fill("#key", "kn_wrong_key")
    page.click("button[type=submit]")
    expect(page.locator("p.error")).to_contain_text("unknown, revoked or mistyped")
    page.fill("#key", stack.keys[("viewer", "acme")])
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{stack.url}/costs")
    expect(page.locator("header .who")).to_contain_text("viewer-acme")
    cookie = next(c for c in page.context.cookies() if c["name"] == COOKIE)
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # the key is out of scripts' reach
    page.click("text=Sign out")
    expect(page).to_have_url(f"{stack.url}/login")
    page.goto("/")
    expect(page).to_have_url(f"{stack.url}/login?next=%2F")


def test_the_runs_list_filters_and_pages(sign_in: SignIn, stack: Stack) -> None:
    async def batch() -> list[str]:
        ids = []
        for _ in range(120):  # an agent no worker runs: they stay queued
            run_id = new_run_id()
            await stack.client.store.create_run(
                NewRun(id=run_id, agent="batch", agent_version="1", input="0", tenant="acme")
            )
            ids.append(run_id)
        return ids[::-1]

    newest_first = stack.call(batch())
    page = sign_in("viewer")
    page.goto("/")
    page.fill("input[name=agent]", "batch")
    page.select_option("select[name=state]", "queued")
    page.click("form.filters button[type=submit]")
    rows = page.locator("#runs tbody tr[data-run]")
    expect(rows).to_have_count(50)
    assert rows.evaluate_all("rs => rs.map(r => r.dataset.run)") == newest_first[:50]
    page.click("text=Older →")
    expect(rows.first).to_have_attribute("data-run", newest_first[50])
    expect(rows).to_have_count(50)
    page.click("text=Older →")
    expect(rows).to_have_count(20)
    expect(page.locator("text=Older →")).to_have_count(0)
    assert rows.evaluate_all("rs => rs.map(r => r.dataset.run)") == newest_first[100:]
    page.click("text=← Newer")
    expect(rows.first).to_have_attribute("data-run", newest_first[50])
    page.select_option("select[name=state]", "completed")
    page.click("form.filters button[type=submit]")
    expect(page.locator("#runs td.empty")).to_contain_text("No runs match")


def test_a_run_and_the_runs_list_follow_the_run_live(sign_in: SignIn, stack: Stack) -> None:
    run = stack.call(stack.client.start("waits", "go", tenant="acme"))
    stack.call(in_state(stack.client, run.id, RunState.WAITING))
    page = sign_in("viewer")
    page.goto(f"/runs/{run.id}")
    expect(page.locator("#run-state")).to_have_text("waiting")
    listing = page.context.new_page()
    listing.goto("/?agent=waits")
    row = listing.locator(f"#runs tr[data-run='{run.id}']")
    expect(row).to_have_attribute("data-state", "waiting")
    stack.call(stack.client.send(run.id, "go", {"hello": "world"}, sender="test"))
    expect(page.locator("#run-state")).to_have_text("completed", timeout=LIVE)
    expect(page.locator("#run-output")).to_contain_text('"hello": "world"')
    expect(page.locator(".row.ev .type", has_text="run_completed")).to_have_count(1, timeout=LIVE)
    expect(page.locator(".row.ev .type", has_text="message_received")).to_have_count(1)
    expect(row).to_have_attribute("data-state", "completed", timeout=LIVE)
    seqs = page.locator("#timeline .row.ev").evaluate_all("rs => rs.map(r => +r.dataset.seq)")
    assert seqs == sorted(set(seqs))  # live rows came once each, in order


def test_approving_a_tool_call_through_the_page_completes_the_run(
    sign_in: SignIn, stack: Stack
) -> None:
    refund = Call(name="issue_refund", arguments={"order_id": "A-17", "amount": 420})
    stack.sim.clear_script(PROVIDER)
    stack.sim.script(PROVIDER, Reply(tool_calls=(refund,)), Reply(text="Refunded A-17."))
    run = stack.call(stack.client.start("refunder", "refund A-17", tenant="acme"))
    approval = stack.call(pending_approval(stack.client, run.id))
    assert stack.ledger == []
    page = sign_in("approver")
    page.goto("/approvals")
    card = page.locator(f"article[data-approval='{approval}']")
    expect(card).to_contain_text("Allow issue_refund")
    arguments = card.locator("textarea[name=answer]")
    assert json.loads(arguments.input_value()) == {"order_id": "A-17", "amount": 420}
    arguments.fill('{"order_id": "A-17", "amount": 42}')
    card.locator("input[name=reason]").first.fill("420 was a typo")
    card.locator("button[data-action=approve]").click()
    expect(page).to_have_url(f"{stack.url}/approvals?did=edited")
    expect(page.locator(".notice")).to_contain_text("edited arguments")
    page.click(f"table.decided a[href='/runs/{run.id}']")
    expect(page.locator("#run-state")).to_have_text("completed", timeout=LIVE)
    expect(page.locator("#run-output")).to_contain_text("Refunded A-17.")
    assert stack.ledger == [{"order_id": "A-17", "amount": 42.0}]

    # and from the run's own page: the card is there, and the run ends before your eyes
    stack.sim.script(PROVIDER, Reply(tool_calls=(refund,)), Reply(text="Refunded again."))
    second = stack.call(stack.client.start("refunder", "refund A-17 again", tenant="acme"))
    stack.call(pending_approval(stack.client, second.id))
    page.goto(f"/runs/{second.id}")
    expect(page.locator("#run-state")).to_have_text("waiting")
    page.locator("#actions button[data-action=approve]").click()
    expect(page).to_have_url(f"{stack.url}/runs/{second.id}?did=approved")
    expect(page.locator("#run-state")).to_have_text("completed", timeout=LIVE)
    expect(page.locator(".row.ev .type", has_text="tool_completed")).to_have_count(1, timeout=LIVE)
    assert stack.ledger[-1] == {"order_id": "A-17", "amount": 420.0}


def test_a_viewer_has_no_controls_and_a_forged_post_is_refused(
    sign_in: SignIn, stack: Stack
) -> None:
    run = stack.call(stack.client.start("waits", "never", tenant="acme"))
    stack.call(in_state(stack.client, run.id, RunState.WAITING))
    viewer = sign_in("viewer")
    viewer.goto(f"/runs/{run.id}")
    expect(viewer.locator("#run-state")).to_have_text("waiting")
    expect(viewer.locator("button[data-action]")).to_have_count(0)
    expect(viewer.locator("header nav a", has_text="Approvals")).to_have_count(0)
    post = """async ([url, token]) => {
        const body = new URLSearchParams(token ? {csrf: token} : {});
        const r = await fetch(url, {method: "POST", body, redirect: "manual"});
        return r.status;
    }"""
    token = viewer.locator("meta[name=csrf-token]").get_attribute("content")
    assert viewer.evaluate(post, [f"/runs/{run.id}/cancel", token]) == 403
    operator = sign_in("operator")
    operator.goto(f"/runs/{run.id}")
    expect(operator.locator("button[data-action=cancel]")).to_have_count(1)
    assert operator.evaluate(post, [f"/runs/{run.id}/cancel", None]) == 403
    assert stack.call(stack.client.get(run.id)).state == RunState.WAITING
    operator.on("dialog", lambda d: d.accept())
    operator.locator("button[data-action=cancel]").click()
    expect(operator.locator("#run-state")).to_have_text("cancelled", timeout=LIVE)
    other = sign_in("admin", "globex")
    other.goto(f"/runs/{run.id}")
    expect(other.locator("section.problem")).to_contain_text(f"run {run.id} not found")


def test_a_run_of_ten_thousand_events_is_read_a_page_at_a_time(
    sign_in: SignIn, stack: Stack
) -> None:
    run_id = stack.call(written_run(stack.client.store, 10_000))
    page = sign_in("viewer")
    page.goto(f"/runs/{run_id}")
    rows = page.locator("#timeline .row.ev")
    expect(page.locator("#event-count")).to_have_text("10001 events")
    expect(rows).to_have_count(200)  # the first page only, however long the journal
    page.locator("#more").scroll_into_view_if_needed()
    expect(rows).to_have_count(400)  # scrolling near the end fetched the next page
    page.locator("#more").click()
    expect(rows).to_have_count(600)
    seqs = rows.evaluate_all("rs => rs.map(r => +r.dataset.seq)")
    assert seqs == list(range(1, 601))
    # a kind of event can be hidden, and shown again
    llm = page.locator("#timeline .row.c-llm").first
    expect(llm).to_be_visible()
    page.locator("input[data-cat=llm]").uncheck()
    expect(llm).to_be_hidden()
    page.locator("input[data-cat=llm]").check()
    expect(llm).to_be_visible()
    page.locator("#timeline .row.ev details summary").first.click()
    expect(page.locator("#timeline .row.ev .payload").first).to_contain_text("provider")
    # the last page says so: nothing more to load
    short = stack.call(written_run(stack.client.store, 250))
    page.goto(f"/runs/{short}")
    expect(rows).to_have_count(200)
    page.locator("#more").click()
    expect(rows).to_have_count(251)
    expect(page.locator("#more")).to_be_hidden()
