"""Dashboard: a run page of 10,000 journal events, rendered in a real Chromium.

    .venv/bin/python benchmarks/dashboard.py                      # both backends
    .venv/bin/python benchmarks/dashboard.py --backends sqlite --rounds 5

A run with ``--events`` journal events (a mix of failed LLM attempts, answers, tool calls,
memory searches and steps, as a tool-calling agent writes them) is written straight into a
fresh database; ``kernos serve``'s app serves it on a loopback port (uvicorn, in this
process); Debian's Chromium (headless, through Playwright) opens its page signed in as an
admin. Measured, ``--rounds`` times each:

* server: the run page's HTML (first 200 events rendered), GET to last byte;
* first view: navigation to the page's ``load`` event in Chromium (HTML, CSS, script, first
  200 rows laid out), and its first contentful paint;
* next page: a click on "Load more" until 200 more rows are in the document;
* whole journal: every page loaded by "Load more" until none is left (50 pages), once;
  then how long hiding one kind of event (a class toggled on 10,000 rows) takes to paint.

Figures are printed, never asserted. Needs ``/usr/bin/chromium`` (or ``KERNOS_CHROMIUM``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from _common import BACKENDS, Row, database, fmt, percentile, pg_available, render
from playwright.sync_api import Page, sync_playwright

from kernos.api import ApiConfig, create_app
from kernos.kernel import connect
from kernos.store import Event, NewRun, RunState, Store, new_run_id

CHROMIUM = os.environ.get("KERNOS_CHROMIUM", "/usr/bin/chromium")
AGENT = ("bench-dashboard", "1")


def _event(seq: int, at: float) -> Event:
    step = seq // 5 + 1
    kind = seq % 5
    if kind == 0:
        payload: dict[str, Any] = {
            "n": 1, "provider": "oa", "model": "gpt-4.1-mini", "error_class": "rate_limited",
            "error": "Error code: 429 - rate limit reached", "status": 429,
            "started_at": at - 0.2, "latency": 0.2, "delay": 0.1, "then": "retry",
            "usage": {"input_tokens": 0, "output_tokens": 0}, "cost": 0.0,
        }  # fmt: skip
        return Event(seq, "llm_attempt", step, "chat", 1, payload, at, 0.2)
    if kind == 1:
        payload = {
            "response": {
                "text": f"Order {seq} ships on Tuesday.", "tool_calls": [], "provider": "oa",
                "model": "gpt-4.1-mini", "latency": 0.4, "attempts": 2, "cost": 0.0012,
                "usage": {"input_tokens": 812, "output_tokens": 64},
            }
        }  # fmt: skip
        return Event(seq, "llm_completed", step, "chat", 2, payload, at, 0.4)
    if kind == 2:
        payload = {"arguments": {"order_id": f"A-{seq}"}, "result": {"status": "shipped"}}
        return Event(seq, "tool_completed", step, "lookup_order", 1, payload, at, 0.03)
    if kind == 3:
        payload = {"query": f"order A-{seq}", "k": 3, "metadata": None, "hits": []}
        return Event(seq, "memory_search", step, "notes", 0, payload, at, 0.004)
    return Event(seq, "step_completed", step, f"step-{seq}", 1, {"result": seq}, at, 0.002)


async def write_run(store: Store, events: int) -> str:
    """A completed run of ``events`` events, written through the store's own API."""
    run_id = new_run_id()
    await store.create_run(
        NewRun(id=run_id, agent=AGENT[0], agent_version=AGENT[1], input='"bench"')
    )
    claims = await store.claim(
        worker_id="bench", agents=[AGENT], limit=1, lease_ttl=3600.0, agent_limits={}
    )
    token = claims[0].token
    t0 = time.time() - events * 0.05
    for start in range(1, events + 1, 1000):
        batch = [_event(s, t0 + s * 0.05) for s in range(start, min(start + 1000, events + 1))]
        await store.append(run_id, token, batch)
    await store.finish(
        run_id,
        token,
        state=RunState.COMPLETED,
        events=[Event(events + 1, "run_completed")],
        output='"done"',
    )
    return run_id


async def prepare(url: str, events: int) -> tuple[str, str]:
    client = await connect(url)
    try:
        run_id = await write_run(client.store, events)
        _, secret = await client.store.create_api_key(name="bench", tenant=None, role="admin")
    finally:
        await client.close()
    return run_id, secret


class Server:
    """The app on a free loopback port, in a thread of its own."""

    def __init__(self, url: str) -> None:
        app = create_app(url, config=ApiConfig())
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False)
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise SystemExit("the server did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def rows_shown(page: Page) -> int:
    return int(page.evaluate("document.querySelectorAll('#timeline .row.ev').length"))


def load_more(page: Page) -> float:
    """Seconds from a click on "Load more" to its 200 rows in the document."""
    before = rows_shown(page)
    start = time.perf_counter()
    # a click as the script sees it (the page may also fetch on its own as #more scrolls
    # into view: then that fetch is the one waited for)
    page.evaluate("document.getElementById('more').click()")
    page.wait_for_function(
        """n => document.querySelectorAll('#timeline .row.ev').length > n
               || document.getElementById('more').hidden""",
        arg=before,
    )
    return time.perf_counter() - start


def measure(backend: str, events: int, rounds: int) -> list[Row]:
    with database(backend, "dash") as db:
        run_id, secret = asyncio.run(prepare(db.url, events))
        with Server(db.url) as base, sync_playwright() as p:
            cookies = {"kernos_session": secret}
            served: list[float] = []
            with httpx.Client(base_url=base, cookies=cookies) as http:
                for _ in range(rounds + 1):
                    start = time.perf_counter()
                    r = http.get(f"/runs/{run_id}")
                    served.append(time.perf_counter() - start)
                    assert r.status_code == 200, r.text[:200]
            served = served[1:]  # the first warms the template cache
            browser = p.chromium.launch(executable_path=CHROMIUM)
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            context.add_cookies([{"name": "kernos_session", "value": secret, "url": base}])
            page = context.new_page()
            loads: list[float] = []
            paints: list[float] = []
            nexts: list[float] = []
            for i in range(rounds + 1):
                page.goto(f"{base}/runs/{run_id}", wait_until="load")
                timing = page.evaluate(
                    """() => [performance.getEntriesByType('navigation')[0].loadEventEnd,
                      (performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime]"""
                )
                assert rows_shown(page) == 200
                if i:  # the first is a cold browser cache
                    loads.append(timing[0] / 1000)
                    if timing[1] is not None:
                        paints.append(timing[1] / 1000)
                    nexts.append(load_more(page))
            page.goto(f"{base}/runs/{run_id}", wait_until="load")
            start = time.perf_counter()
            pages = 0
            while page.is_visible("#more"):
                load_more(page)
                pages += 1
            whole = time.perf_counter() - start
            shown = rows_shown(page)
            toggle = page.evaluate(
                """() => new Promise(done => {
                    const t0 = performance.now();
                    document.querySelector('input[data-cat=llm]').click();
                    requestAnimationFrame(() => requestAnimationFrame(
                        () => done(performance.now() - t0)));
                })"""
            )
            browser.close()
    rows = [
        Row("dash", backend, "kernos", "server: run page HTML, p50", statistics.median(served) * 1000, "ms",
            note=f"p95 {fmt(percentile(served, 95) * 1000, 'ms')}; {events:,} events, 200 rendered"),
        Row("dash", backend, "kernos", "Chromium: to load event, p50", statistics.median(loads) * 1000, "ms",
            note=f"p95 {fmt(percentile(loads, 95) * 1000, 'ms')}; first contentful paint p50 "
            f"{fmt(statistics.median(paints) * 1000 if paints else float('nan'), 'ms')}"),
        Row("dash", backend, "kernos", "Chromium: next 200 events, p50", statistics.median(nexts) * 1000, "ms",
            note=f"p95 {fmt(percentile(nexts, 95) * 1000, 'ms')}"),
        Row("dash", backend, "kernos", f"Chromium: all {events:,} events, {pages} pages", whole, "s",
            note=f"{shown:,} rows in the document after; hiding one kind of event then took "
            f"{fmt(float(toggle), 'ms')} to paint"),
    ]  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"no Chromium at {CHROMIUM} (apt install chromium, or KERNOS_CHROMIUM)")
    rows: list[Row] = []
    for backend in args.backends.split(","):
        if backend == "postgresql" and not pg_available():
            print("PostgreSQL unavailable: skipped", file=sys.stderr)
            continue
        rows.extend(measure(backend, args.events, args.rounds))
    print(render(rows, f"Dashboard: a run page of {args.events:,} events in Chromium"))


if __name__ == "__main__":
    main()
