"""Approvals, the audit log and API keys, on both backends: a decision is made exactly once
(also when people race), a tampered audit log is caught at the first bad entry, and an API
key's secret is never stored."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator

import pytest
from conformance.test_store import claim_one

from kernos.errors import ApprovalNotFound, InvalidInput, InvalidState, LeaseLost
from kernos.store import (
    ApprovalState,
    ApprovalWait,
    BudgetCharge,
    Event,
    NewApproval,
    Notification,
    RunState,
    SqlStore,
    SuspendResult,
    open_store,
)


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[SqlStore]:
    s = open_store(db_url, max_payload=64 * 1024)
    await s.migrate()
    try:
        yield s
    finally:
        await s.close()


async def ask(store: SqlStore, step: int = 3, **kw: object) -> tuple[str, int, str]:
    run_id, token = await claim_one(store)
    approval = await store.request_approval(
        run_id,
        token,
        events=[Event(seq=2, type="approval_requested", step=step, name="refund")],
        approval=NewApproval(
            run_id=run_id,
            step=step,
            tenant=str(kw.get("tenant", "default")),
            kind="tool",
            question="Refund 420 EUR on A-17?",
            details={"tool": "issue_refund", "arguments": {"order_id": "A-17", "amount": 420}},
        ),
    )
    return run_id, token, approval.id


async def test_an_approval_is_asked_once_and_journaled_with_it(store: SqlStore) -> None:
    run_id, token, approval_id = await ask(store)
    assert approval_id == f"{run_id}:3"
    again = await store.request_approval(
        run_id,
        token,
        events=[],
        approval=NewApproval(run_id=run_id, step=3, tenant="default", kind="tool", question="?"),
    )
    assert again.id == approval_id and again.question == "Refund 420 EUR on A-17?"
    pending = await store.list_approvals()
    assert [a.id for a in pending] == [approval_id]
    assert pending[0].details["arguments"] == {"order_id": "A-17", "amount": 420}
    assert "approval_requested" in [e.type for e in await store.load_journal(run_id)]


async def test_only_the_owner_asks(store: SqlStore) -> None:
    run_id, token = await claim_one(store)
    with pytest.raises(LeaseLost):
        await store.request_approval(
            run_id,
            token + 1,
            events=[],
            approval=NewApproval(run_id=run_id, step=1, tenant="default", kind="q", question="?"),
        )
    assert await store.list_approvals() == []


async def test_a_decision_is_made_once_audited_and_wakes_the_run(store: SqlStore) -> None:
    run_id, token, approval_id = await ask(store)
    result = await store.suspend(
        run_id,
        token,
        waiting_for=f"approval:{approval_id}",
        events=[],
        timer=None,
        wake_check=ApprovalWait(approval_id),
    )
    assert result == SuspendResult.SUSPENDED
    edited = {"order_id": "A-17", "amount": 42}
    decided = await store.decide_approval(
        approval_id, approve=True, by="alice", reason="typo: 42, not 420", answer=edited
    )
    assert decided.state == ApprovalState.APPROVED and decided.answer == edited
    run = await store.get_run(run_id)
    assert run.state.value == "queued" and run.waiting_for is None
    with pytest.raises(InvalidState, match="already approved by alice"):
        await store.decide_approval(approval_id, approve=False, by="bob")
    assert (await store.get_approval(approval_id)).decided_by == "alice"
    audit = await store.list_audit()
    assert [(e.actor, e.action, e.target) for e in audit] == [
        ("alice", "approval.approved", approval_id)
    ]
    assert audit[0].details["answer"] == edited


async def test_a_suspend_finds_a_decision_made_meanwhile(store: SqlStore) -> None:
    run_id, token, approval_id = await ask(store)
    await store.decide_approval(approval_id, approve=False, by="alice", reason="no")
    result = await store.suspend(
        run_id,
        token,
        waiting_for=f"approval:{approval_id}",
        events=[],
        timer=None,
        wake_check=ApprovalWait(approval_id),
    )
    assert result == SuspendResult.WAKE_PENDING  # replay sees the rejection: no lost wake-up


async def test_another_tenant_cannot_see_or_decide(store: SqlStore) -> None:
    _, _, approval_id = await ask(store, tenant="acme")
    with pytest.raises(ApprovalNotFound):
        await store.get_approval(approval_id, tenant="globex")
    with pytest.raises(ApprovalNotFound):
        await store.decide_approval(approval_id, approve=True, by="mallory", tenant="globex")
    assert await store.list_approvals(tenant="globex") == []
    assert (await store.get_approval(approval_id)).state == ApprovalState.PENDING
    with pytest.raises(ApprovalNotFound):
        await store.decide_approval("nope:1", approve=True, by="alice")


@pytest.mark.skipif(
    not os.environ.get("KERNOS_TEST_DATABASE_URL"), reason="the race needs PostgreSQL"
)
async def test_two_people_deciding_at_once_yield_exactly_one_decision(pg_url: str) -> None:
    """200 pairs of concurrent decisions, on PostgreSQL: exactly one of each pair wins, the
    other is told what was decided."""
    store = open_store(pg_url)
    await store.migrate()
    try:
        ids = [(await ask(store, step=i))[2] for i in range(200)]

        async def decide(approval_id: str, who: str, approve: bool) -> str:
            try:
                await store.decide_approval(approval_id, approve=approve, by=who)
            except InvalidState as exc:
                assert "already" in str(exc)
                return "lost"
            return "won"

        outcomes = await asyncio.gather(
            *(asyncio.gather(decide(i, "alice", True), decide(i, "bob", False)) for i in ids)
        )
        assert all(sorted(pair) == ["lost", "won"] for pair in outcomes)
        decided = await store.list_approvals(state=None, limit=1000)
        assert len(decided) == 200 and all(a.state != ApprovalState.PENDING for a in decided)
        audit = await store.list_audit(limit=1000)
        assert len(audit) == 200  # one decision each, audited once
        assert (await store.verify_audit()).ok  # concurrent appends kept one chain
    finally:
        await store.close()


# -- the audit log ---------------------------------------------------------------------------


async def fill_audit(store: SqlStore, n: int = 5) -> None:
    for i in range(n):
        await store.append_audit(
            actor="alice", action="run.pause", tenant="acme", target=f"run-{i}", details={"i": i}
        )


async def tamper(store: SqlStore, sql: str, *args: object) -> None:
    def run() -> None:
        with store.dialect.write() as tx:
            tx.execute(sql, args)

    await asyncio.to_thread(run)


async def test_an_intact_audit_log_verifies(store: SqlStore) -> None:
    await fill_audit(store)
    check = await store.verify_audit()
    assert check.ok and check.entries == 5
    entries = await store.list_audit(after_seq=2)
    assert [e.details["i"] for e in entries] == [2, 3, 4]
    assert entries[0].prev_hash == (await store.list_audit())[1].hash


@pytest.mark.parametrize(
    ("how", "sql", "args", "problem"),
    [
        ("modified", "UPDATE kernos_audit SET actor = ? WHERE seq = 3", ("mallory",), "content"),
        ("details", "UPDATE kernos_audit SET details = ? WHERE seq = 3", ('{"i":9}',), "content"),
        ("deleted", "DELETE FROM kernos_audit WHERE seq = 3", (), "link"),
    ],
)
async def test_a_tampered_audit_log_names_the_first_bad_entry(
    store: SqlStore, how: str, sql: str, args: tuple[object, ...], problem: str
) -> None:
    await fill_audit(store)
    await tamper(store, sql, *args)
    check = await store.verify_audit()
    assert not check.ok
    assert check.first_bad_seq == (4 if how == "deleted" else 3)
    assert check.problem is not None and problem in check.problem


async def test_reordered_and_inserted_entries_are_caught(store: SqlStore) -> None:
    await fill_audit(store)
    rows = await store.list_audit()
    second, third = rows[1], rows[2]
    # swap two entries' contents (hashes included): each still matches itself, not its place
    for target, source in ((second, third), (third, second)):
        await tamper(
            store,
            "UPDATE kernos_audit SET at = ?, target = ?, details = ?, prev_hash = ?, hash = ? "
            "WHERE seq = ?",
            source.at,
            source.target,
            json.dumps(source.details, separators=(",", ":"), sort_keys=True),
            source.prev_hash,
            source.hash,
            target.seq,
        )
    check = await store.verify_audit()
    assert not check.ok and check.first_bad_seq == second.seq

    await tamper(
        store,
        "DELETE FROM kernos_audit",
    )
    await fill_audit(store, 3)
    last = (await store.list_audit())[-1]
    # a forged entry appended after the real ones, chained to the genesis hash
    await tamper(
        store,
        "INSERT INTO kernos_audit (at, actor, tenant, action, target, details, prev_hash, hash) "
        "VALUES (?, 'mallory', NULL, 'key.create', NULL, '{}', ?, ?)",
        last.at + 1,
        "0" * 64,
        "f" * 64,
    )
    check = await store.verify_audit()
    assert not check.ok and check.first_bad_seq == last.seq + 1


async def test_control_actions_are_audited_with_who_and_why(store: SqlStore) -> None:
    run_id, _ = await claim_one(store)
    await store.pause(run_id, reason="looks wrong", by="alice")
    await store.cancel(run_id, reason="it was wrong", by="bob")
    audit = await store.list_audit()
    assert [(e.actor, e.action, e.details.get("reason")) for e in audit] == [
        ("alice", "run.pause", "looks wrong"),
        ("bob", "run.cancel", "it was wrong"),
    ]
    other, _ = await claim_one(store)
    with pytest.raises(InvalidState):
        await store.resume(other, by="carol")  # refused: nothing audited either
    assert len(await store.list_audit()) == 2


# -- API keys --------------------------------------------------------------------------------


async def test_an_api_key_is_found_by_its_secret_which_is_not_stored(store: SqlStore) -> None:
    key, secret = await store.create_api_key(name="ci", tenant="acme", role="operator")
    assert secret.startswith(f"kn_{key.id}_") and len(secret) > 40
    assert await store.find_api_key(secret) == key
    assert await store.find_api_key(secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None
    assert await store.find_api_key("not a key") is None

    def stored() -> list[tuple[object, ...]]:
        with store.dialect.read() as tx:
            return [tuple(r) for r in tx.fetchall("SELECT * FROM kernos_api_keys", ())]

    assert secret not in json.dumps(await asyncio.to_thread(stored), default=str)
    assert await store.revoke_api_key(key.id, by="alice")
    assert await store.find_api_key(secret) is None
    assert not await store.revoke_api_key(key.id)
    actions = [(e.action, e.actor) for e in await store.list_audit()]
    assert actions == [("key.create", "cli"), ("key.revoke", "alice")]


async def test_bad_keys_are_refused(store: SqlStore) -> None:
    with pytest.raises(InvalidInput, match="role"):
        await store.create_api_key(name="x", tenant="acme", role="root")
    with pytest.raises(InvalidInput, match="only an admin key may span every tenant"):
        await store.create_api_key(name="x", tenant=None, role="viewer")
    key, _ = await store.create_api_key(name="ops", tenant=None, role="admin")
    assert [k.id for k in await store.list_api_keys()] == [key.id]
    assert await store.list_api_keys(tenant="acme") == []


# -- budgets ---------------------------------------------------------------------------------


def charge(budget: str = "daily", usd: float = 1.0, limit: float | None = 10.0) -> BudgetCharge:
    return BudgetCharge(
        budget=budget,
        key="acme",
        period_start=1_700_000_000.0,
        limit_usd=limit,
        limit_tokens=None,
        usd=usd,
        tokens=100,
    )


async def test_reservations_are_all_or_none_and_settle_to_the_real_cost(store: SqlStore) -> None:
    assert (await store.reserve_budget([charge(usd=4.0)])).ok
    refused = await store.reserve_budget([charge("monthly", usd=1.0, limit=100.0), charge(usd=7.0)])
    assert not refused.ok and refused.exceeded is not None
    assert refused.exceeded.budget == "daily" and refused.spent_usd == 4.0
    usage = {u.budget: u for u in await store.budget_usage()}
    assert "monthly" not in usage or usage["monthly"].reserved_usd == 0  # none reserved
    await store.settle_budget([charge(usd=4.0)], usd=2.5, tokens=1234)
    usage = {u.budget: u for u in await store.budget_usage()}
    assert (usage["daily"].usd, usage["daily"].reserved_usd, usage["daily"].tokens) == (
        2.5,
        0.0,
        1234,
    )
    assert (await store.reserve_budget([charge(usd=7.5)])).ok  # 2.5 + 7.5 = 10: at the limit


async def test_concurrent_reservations_never_overspend(store: SqlStore) -> None:
    """50 calls of 1 USD at once against a 10 USD budget: exactly 10 get through."""
    verdicts = await asyncio.gather(*(store.reserve_budget([charge()]) for _ in range(50)))
    assert sum(v.ok for v in verdicts) == 10
    usage = await store.budget_usage()
    assert usage[0].reserved_usd == 10.0


async def test_a_call_made_again_replaces_its_reservation_instead_of_adding_one(
    store: SqlStore,
) -> None:
    """A worker killed between reserving and settling: its successor makes the same call
    (same hold id) and the budget holds one reservation, not two."""
    assert (await store.reserve_budget([charge(usd=4.0)], hold="r1:5", run_id="r1")).ok
    assert (await store.reserve_budget([charge(usd=4.5)], hold="r1:5", run_id="r1")).ok
    usage = await store.budget_usage()
    assert usage[0].reserved_usd == 4.5
    assert [c.usd for c in await store.held_budget("r1:5")] == [4.5]
    await store.settle_budget([charge(usd=4.5)], usd=1.0, tokens=10, hold="r1:5")
    usage = await store.budget_usage()
    assert (usage[0].usd, usage[0].reserved_usd) == (1.0, 0.0)
    assert await store.held_budget("r1:5") == []
    # settling again (a successor that found nothing held) adds the cost and releases nothing
    await store.settle_budget([charge(usd=4.5)], usd=0.5, tokens=5, hold="r1:5")
    usage = await store.budget_usage()
    assert (usage[0].usd, usage[0].reserved_usd) == (1.5, 0.0)


async def test_a_run_that_ends_gives_back_what_its_calls_still_held(store: SqlStore) -> None:
    run_id, token = await claim_one(store)
    assert (await store.reserve_budget([charge(usd=3.0)], hold=f"{run_id}:2", run_id=run_id)).ok
    assert (await store.reserve_budget([charge(usd=2.0)], hold="other:1", run_id="other")).ok
    assert (await store.budget_usage())[0].reserved_usd == 5.0
    await store.finish(run_id, token, state=RunState.FAILED, events=[], error="cut short")
    usage = await store.budget_usage()
    assert usage[0].reserved_usd == 2.0  # the other run's reservation stands
    assert await store.held_budget(f"{run_id}:2") == []
    assert [c.usd for c in await store.held_budget("other:1")] == [2.0]


# -- escalation and the notification outbox ---------------------------------------------------


async def _ask_escalating(store: SqlStore) -> tuple[str, int, str]:
    run_id, token = await claim_one(store)
    approval = await store.request_approval(
        run_id,
        token,
        events=[Event(seq=2, type="approval_requested", step=4, name="wire")],
        approval=NewApproval(
            run_id=run_id,
            step=4,
            tenant="acme",
            kind="question",
            question="Wire 9,000 EUR?",
            expires_at=1.0,  # long past
            escalates=True,
        ),
        notify=[Notification(id="n1", topic="run.needs_person", tenant="acme", body={"a": 1})],
    )
    return run_id, token, approval.id


async def test_an_escalating_deadline_still_takes_a_persons_decision(store: SqlStore) -> None:
    _, _, approval_id = await _ask_escalating(store)
    decided = await store.decide_approval(approval_id, approve=True, by="lead")
    assert decided.state == ApprovalState.APPROVED


async def test_escalation_is_fenced_audited_once_and_yields_to_a_decision(store: SqlStore) -> None:
    run_id, token, approval_id = await _ask_escalating(store)
    event = Event(seq=3, type="approval_escalated", step=4, name="wire")
    with pytest.raises(LeaseLost):
        await store.escalate_approval(
            run_id, token + 1, approval_id=approval_id, events=[event], expires_at=None, by="t"
        )
    assert (await store.get_approval(approval_id)).escalated_at is None
    escalated = await store.escalate_approval(
        run_id,
        token,
        approval_id=approval_id,
        events=[event],
        expires_at=None,
        by="kernos:timeout",
        notify=[Notification(id="n2", topic="approval.escalated", tenant="acme", body={})],
    )
    assert escalated.escalated_at is not None and escalated.expires_at is None
    assert "approval_escalated" in [e.type for e in await store.load_journal(run_id)]
    assert ("kernos:timeout", "approval.escalate") in [
        (e.actor, e.action) for e in await store.list_audit()
    ]
    with pytest.raises(InvalidState):  # once
        await store.escalate_approval(
            run_id, token, approval_id=approval_id, events=[], expires_at=None, by="t"
        )
    await store.decide_approval(approval_id, approve=False, by="lead", reason="no")
    assert [n.id for n in await store.list_notifications(pending=True)] == ["n1", "n2"]


async def test_notifications_are_claimed_once_retried_and_given_up(store: SqlStore) -> None:
    await _ask_escalating(store)
    [claimed] = await store.claim_notifications(limit=5, hold=30)
    assert claimed.id == "n1" and claimed.attempts == 1 and claimed.body == {"a": 1}
    assert await store.claim_notifications(limit=5, hold=30) == []  # held by its claimer
    await store.settle_notification("n1", delivered=False, error="HTTP 503", retry_at=0.0)
    [again] = await store.claim_notifications(limit=5, hold=30)
    assert again.attempts == 2
    await store.settle_notification("n1", delivered=False, error="HTTP 410")  # given up
    [gone] = await store.list_notifications()
    assert gone.failed_at is not None and gone.last_error == "HTTP 410"
    assert await store.list_notifications(pending=True) == []
    assert await store.claim_notifications(limit=5, hold=30) == []


async def test_a_decision_waits_for_a_suspension_in_progress_and_then_wakes_the_run(
    store: SqlStore, db_url: str
) -> None:
    """The lost wake-up: a run suspending (its row locked, the approval read as pending) while
    a person decides. The decision must wait for the run's row, then find it waiting and wake
    it; were it not to, the run would wait for a decision already made, forever."""
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite has one writer at a time: the two transactions cannot interleave")
    import psycopg

    run_id, _, approval_id = await ask(store)
    with psycopg.connect(db_url, autocommit=False) as suspending:
        suspending.execute("SELECT state FROM kernos_runs WHERE id = %s FOR UPDATE", (run_id,))
        state = suspending.execute(
            "SELECT state FROM kernos_approvals WHERE id = %s", (approval_id,)
        ).fetchone()
        assert state == ("pending",)
        deciding = asyncio.create_task(store.decide_approval(approval_id, approve=True, by="x"))
        await asyncio.sleep(0.3)
        assert not deciding.done()  # it waits for the run's row
        suspending.execute(
            "UPDATE kernos_runs SET state = 'waiting', waiting_for = %s, lease_owner = NULL "
            "WHERE id = %s",
            (f"approval:{approval_id}", run_id),
        )
        suspending.commit()
    await deciding
    assert (await store.get_run(run_id)).state == RunState.QUEUED  # woken


async def test_a_hold_released_by_two_racing_transactions_is_given_back_once(
    store: SqlStore, db_url: str
) -> None:
    """A worker that lost its lease settles a call while its successor releases the same hold:
    the reservation is given back once, and another call's reservation stays whole."""
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite has one writer at a time: the two transactions cannot interleave")
    import psycopg

    assert (await store.reserve_budget([charge(usd=1.0)], hold="rA:1", run_id="rA")).ok
    assert (await store.reserve_budget([charge(usd=1.0)], hold="rB:1", run_id="rB")).ok
    with psycopg.connect(db_url, autocommit=False) as successor:
        successor.execute("DELETE FROM kernos_budget_holds WHERE id = 'rA:1' RETURNING charges")
        successor.execute(
            "UPDATE kernos_budget_usage SET reserved_usd = reserved_usd - 1.0 WHERE budget = 'daily'"
        )
        late = asyncio.create_task(
            store.settle_budget([charge(usd=1.0)], usd=0.0, tokens=0, hold="rA:1")
        )
        await asyncio.sleep(0.3)
        assert not late.done()  # it waits for the successor's transaction
        successor.commit()
    await late
    [usage] = await store.budget_usage()
    assert usage.reserved_usd == 1.0  # rB's call is still in flight and still reserved
    assert [c.usd for c in await store.held_budget("rB:1")] == [1.0]
