"""Each route's happy path, on SQLite and PostgreSQL, through the app's HTTP interface."""

from __future__ import annotations

from typing import Any

from _gateway_support import OA, config_for

import kernos
from kernos.gateway import default_services
from kernos.kernel import Registry
from kernos.sim import Reply, SimServer
from kernos.store import RunState
from kernos.testing import FAST, running_worker, wait_until

from ._api_support import Api, pending_approval


async def test_health_and_readiness_need_no_key(api: Api) -> None:
    assert (await api.http.get("/healthz")).json() == {"status": "ok"}
    ready = await api.http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert ready.json()["database"] == api.client.store.backend


async def test_start_a_run_and_read_it_back_when_a_worker_has_run_it(
    api: Api, registry: Registry
) -> None:
    r = await api.http.post(
        "/v1/runs",
        json={"agent": "echo", "input": {"order": "A-17"}, "priority": 3},
        headers=api.auth("operator"),
    )
    assert r.status_code == 201, r.text
    run = r.json()
    assert r.headers["location"] == f"/v1/runs/{run['id']}"
    assert (run["state"], run["input"], run["priority"], run["tenant"]) == (
        "queued",
        {"order": "A-17"},
        3,
        "acme",
    )
    async with running_worker(api.client, registry, FAST, services={}):
        await api.client.wait(run["id"], timeout=20)
    got = await api.http.get(f"/v1/runs/{run['id']}", headers=api.auth("viewer"))
    assert got.status_code == 200
    assert (got.json()["state"], got.json()["output"]) == ("completed", {"order": "A-17"})
    journal = await api.http.get(f"/v1/runs/{run['id']}/journal", headers=api.auth("viewer"))
    types = [e["type"] for e in journal.json()["events"]]
    assert types[0] == "run_claimed" and types[-1] == "run_completed"
    assert journal.json()["next"] is None


async def test_an_admin_key_without_a_tenant_starts_runs_for_any_tenant(api: Api) -> None:
    r = await api.http.post(
        "/v1/runs", json={"agent": "echo", "tenant": "globex"}, headers=api.auth("admin", None)
    )
    assert (r.status_code, r.json()["tenant"]) == (201, "globex")
    r = await api.http.post("/v1/runs", json={"agent": "echo"}, headers=api.auth("admin", None))
    assert r.json()["tenant"] == "default"


async def test_runs_are_listed_newest_first_a_page_at_a_time_without_gaps_or_repeats(
    api: Api,
) -> None:
    started = [await api.start("echo", i) for i in range(7)]
    await api.start("echo", "other", tenant="globex")
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 3} | ({"next": cursor} if cursor else {})
        page = (await api.http.get("/v1/runs", params=params, headers=api.auth("viewer"))).json()
        seen += [r["id"] for r in page["runs"]]
        if len(seen) == 3:
            await api.start("echo", "new")  # a run created between two pages shifts nothing
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == started[::-1]


async def test_runs_are_filtered_by_state_and_agent(api: Api) -> None:
    first = await api.start("echo", 1)
    await api.start("waits", "go")
    await api.http.post(f"/v1/runs/{first}/cancel", headers=api.auth("operator"))
    h = api.auth("viewer")
    cancelled = (await api.http.get("/v1/runs?state=cancelled", headers=h)).json()["runs"]
    assert [r["id"] for r in cancelled] == [first]
    waits = (await api.http.get("/v1/runs?agent=waits", headers=h)).json()["runs"]
    assert [r["agent"] for r in waits] == ["waits"]
    await api.start("echo", 2, tenant="globex")
    root = api.auth("admin", None)
    everyone = (await api.http.get("/v1/runs", headers=root)).json()["runs"]
    assert {r["tenant"] for r in everyone} == {"acme", "globex"}
    globex = (await api.http.get("/v1/runs?tenant=globex", headers=root)).json()["runs"]
    assert [r["tenant"] for r in globex] == ["globex"]


async def test_the_journal_is_paged_by_seq(api: Api, registry: Registry) -> None:
    run_id = await api.start("stepper", {"steps": 10})
    async with running_worker(api.client, registry, FAST, services={}):
        await api.client.wait(run_id, timeout=20)
    everything = [e.seq for e in await api.client.journal(run_id)]
    seqs: list[int] = []
    after = 0
    while True:
        page = (
            await api.http.get(
                f"/v1/runs/{run_id}/journal",
                params={"after": after, "limit": 4},
                headers=api.auth("viewer"),
            )
        ).json()
        seqs += [e["seq"] for e in page["events"]]
        if page["next"] is None:
            break
        after = page["next"]
    assert seqs == everything and len(seqs) > 8


async def test_pause_resume_and_cancel_are_journaled_and_audited_with_who_and_why(
    api: Api,
) -> None:
    run_id = await api.start("echo", 1)
    h = api.auth("operator")
    paused = await api.http.post(f"/v1/runs/{run_id}/pause", json={"reason": "look"}, headers=h)
    assert (paused.status_code, paused.json()["state"]) == (200, "paused")
    resumed = await api.http.post(f"/v1/runs/{run_id}/resume", headers=h)
    assert resumed.json()["state"] == "queued"
    cancelled = await api.http.post(f"/v1/runs/{run_id}/cancel", json={"reason": "no"}, headers=h)
    assert cancelled.json()["state"] == "cancelled"
    again = await api.http.post(f"/v1/runs/{run_id}/cancel", headers=h)
    assert again.status_code == 409
    assert again.headers["content-type"] == "application/problem+json"
    events = [(e.type, e.payload.get("reason")) for e in await api.client.journal(run_id)]
    assert events == [("run_paused", "look"), ("run_resumed", None), ("run_cancelled", "no")]
    audit = (await api.http.get("/v1/audit", headers=api.auth("admin", None))).json()["entries"]
    actions = [(e["action"], e["actor"], e["target"]) for e in audit if e["target"] == run_id]
    actor = next(a for _, a, _ in actions)
    assert actor.startswith("key:operator-acme/")
    assert [a for a, _, _ in actions] == ["run.pause", "run.resume", "run.cancel"]


async def test_a_message_wakes_a_waiting_run_and_names_the_key_that_sent_it(
    api: Api, registry: Registry
) -> None:
    run_id = await api.start("waits", "go")
    async with running_worker(api.client, registry, FAST, services={}):
        await wait_until(
            lambda: _state_is(api, run_id, RunState.WAITING), what="the run to wait for go"
        )
        sent = await api.http.post(
            f"/v1/runs/{run_id}/messages",
            json={"topic": "go", "value": {"pick": 2}},
            headers=api.auth("operator"),
        )
        assert sent.status_code == 202, sent.text
        assert sent.json()["sender"].startswith("key:operator-acme/")
        done = await api.client.wait(run_id, timeout=20)
    assert kernos.kernel.output_of(done) == {"pick": 2}


async def _state_is(api: Api, run_id: str, state: RunState) -> bool:
    return (await api.client.get(run_id)).state == state


async def test_a_person_approves_with_an_answer_and_a_second_decision_is_refused(
    api: Api, registry: Registry
) -> None:
    run_id = await api.start("asks", "Refund A-17?")
    async with running_worker(api.client, registry, FAST, services={}):
        approval_id = await pending_approval(api.client, run_id)
        h = api.auth("approver")
        listed = (await api.http.get("/v1/approvals", headers=h)).json()["approvals"]
        assert [(a["id"], a["question"]) for a in listed] == [(approval_id, "Refund A-17?")]
        shown = await api.http.get(f"/v1/approvals/{approval_id}", headers=h)
        assert shown.json()["state"] == "pending"
        wrong = await api.http.post(
            f"/v1/approvals/{approval_id}/approve", json={"answer": {"amount": "lots"}}, headers=h
        )
        assert wrong.status_code == 422, wrong.text
        ok = await api.http.post(
            f"/v1/approvals/{approval_id}/approve",
            json={"answer": {"amount": 42}, "reason": "fine"},
            headers=h,
        )
        assert ok.status_code == 200, ok.text
        assert ok.json()["decided_by"].startswith("key:approver-acme/")
        twice = await api.http.post(f"/v1/approvals/{approval_id}/reject", headers=h)
        assert twice.status_code == 409
        assert "already approved" in twice.json()["detail"]
        done = await api.client.wait(run_id, timeout=20)
    output = kernos.kernel.output_of(done)
    assert output["approved"] is True and output["answer"] == {"amount": 42}
    decided = await api.http.get("/v1/approvals?state=approved", headers=h)
    assert [a["id"] for a in decided.json()["approvals"]] == [approval_id]


async def test_a_rejection_reaches_the_run_with_its_reason(api: Api, registry: Registry) -> None:
    run_id = await api.start("asks", "Delete everything?")
    async with running_worker(api.client, registry, FAST, services={}):
        approval_id = await pending_approval(api.client, run_id)
        r = await api.http.post(
            f"/v1/approvals/{approval_id}/reject",
            json={"reason": "no way"},
            headers=api.auth("approver"),
        )
        assert (r.status_code, r.json()["state"], r.json()["reason"]) == (200, "rejected", "no way")
        done = await api.client.wait(run_id, timeout=20)
    assert kernos.kernel.output_of(done)["approved"] is False


async def test_costs_add_up_the_llm_calls_of_the_journal(
    api: Api, registry: Registry, kernos_sim: SimServer
) -> None:
    @kernos.agent("asker", registry=registry)
    async def asker(ctx: kernos.RunContext, question: str) -> str:
        reply = await ctx.llm(OA, [{"role": "user", "content": question}])
        return str(reply.text)

    kernos_sim.script("oa", Reply(text="4"), Reply(text="5"))
    services = default_services(config_for(kernos_sim))
    acme = await api.start("asker", "2+2?")
    globex = await api.start("asker", "2+3?", tenant="globex")
    async with running_worker(api.client, registry, FAST, services=services):
        for run_id in (acme, globex):
            assert (await api.client.wait(run_id, timeout=20)).state == RunState.COMPLETED
    scoped = await api.http.get("/v1/costs?by=agent", headers=api.auth("viewer"))
    assert scoped.status_code == 403  # per-agent totals add up every tenant's calls
    by_agent = await api.http.get("/v1/costs?by=agent", headers=api.auth("admin", None))
    lines = by_agent.json()["lines"]
    assert [(line["key"], line["events"]) for line in lines] == [("asker", 2)]
    assert lines[0]["input_tokens"] > 0
    by_model = await api.http.get("/v1/costs?by=model&since=0", headers=api.auth("admin", None))
    assert [line["key"] for line in by_model.json()["lines"]] == ["oa:gpt-4.1-mini"]
    own = await api.http.get("/v1/costs?by=tenant", headers=api.auth("viewer"))
    assert [(line["key"], line["events"]) for line in own.json()["lines"]] == [("acme", 1)]
