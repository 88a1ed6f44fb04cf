"""Property-based tests of how a claim chooses among its candidates (``store/_claims.py``):
no limit is overspent, priority comes first, tenants take turns, each in its own order."""

from __future__ import annotations

from collections import Counter

from _kernel_support import a_run
from hypothesis import given
from hypothesis import strategies as st

from kernos.store import Run
from kernos.store._claims import Allowance, choose_in_order, choose_round_robin, saturated

TENANTS = ("t0", "t1", "t2", "t3")
AGENTS = ("a", "b")


@st.composite
def candidates(draw: st.DrawFn) -> list[Run]:
    """Runs as a claim reads them: highest priority first, then oldest, then id."""
    rows = draw(
        st.lists(
            st.tuples(
                st.sampled_from(TENANTS),
                st.sampled_from(AGENTS),
                st.integers(0, 2),
                st.integers(0, 50),
            ),
            max_size=40,
        )
    )
    runs = [
        a_run(id=f"r{i:03d}", tenant=t, agent=a, priority=p, run_at=float(at))
        for i, (t, a, p, at) in enumerate(rows)
    ]
    return sorted(runs, key=lambda r: (-r.priority, r.run_at, r.id))


allowances = st.builds(
    Allowance,
    agents=st.dictionaries(st.sampled_from(AGENTS), st.integers(-1, 6)),
    tenants=st.dictionaries(st.sampled_from(TENANTS), st.integers(-1, 6)),
)


def copy(allowance: Allowance) -> Allowance:
    return Allowance(agents=dict(allowance.agents), tenants=dict(allowance.tenants))


@given(candidates(), st.integers(1, 25), allowances)
def test_no_limit_is_overspent(runs: list[Run], limit: int, allowance: Allowance) -> None:
    for choose in (choose_in_order, choose_round_robin):
        chosen = choose(runs, limit, copy(allowance))
        assert len(chosen) <= limit
        assert len({r.id for r in chosen}) == len(chosen)
        agents, tenants = Counter(r.agent for r in chosen), Counter(r.tenant for r in chosen)
        for agent, left in allowance.agents.items():
            assert agents[agent] <= max(left, 0)
        for tenant, left in allowance.tenants.items():
            assert tenants[tenant] <= max(left, 0)


@given(candidates(), st.integers(1, 25), allowances)
def test_round_robin_takes_as_many_as_in_order(
    runs: list[Run], limit: int, allowance: Allowance
) -> None:
    """Fairness changes which runs are taken, never how many (when agents are unlimited, so
    the choice of one run cannot use up another's allowance)."""
    allowance.agents.clear()
    in_order = choose_in_order(runs, limit, copy(allowance))
    fair = choose_round_robin(runs, limit, copy(allowance))
    assert len(fair) == len(in_order)


@given(candidates(), st.integers(1, 25), allowances)
def test_priority_comes_first_and_each_tenant_keeps_its_order(
    runs: list[Run], limit: int, allowance: Allowance
) -> None:
    chosen = choose_round_robin(runs, limit, copy(allowance))
    priorities = [r.priority for r in chosen]
    assert priorities == sorted(priorities, reverse=True)
    position = {r.id: i for i, r in enumerate(runs)}
    for tenant in TENANTS:
        mine = [position[r.id] for r in chosen if r.tenant == tenant]
        assert mine == sorted(mine)
    if len(chosen) == limit:
        return
    # fewer than limit: every candidate left out was not admitted when its turn came
    taken = {r.id for r in chosen}
    left = copy(allowance)
    for run in chosen:
        left.take(run)
    assert all(not left.admits(r) for r in runs if r.id not in taken)


@given(candidates(), st.integers(1, 25))
def test_tenants_take_turns_within_a_priority(runs: list[Run], limit: int) -> None:
    """Without limits, within the lowest priority the claim reached, tenants' shares differ by
    at most one, unless a tenant had no more candidates."""
    chosen = choose_round_robin(runs, limit, Allowance())
    if not chosen:
        return
    last = chosen[-1].priority
    shares = Counter(r.tenant for r in chosen if r.priority == last)
    offered = Counter(r.tenant for r in runs if r.priority == last)
    fewest = min((shares[t] for t in offered if shares[t] < offered[t]), default=None)
    if fewest is not None:
        assert max(shares.values()) <= fewest + 1


def test_a_flood_is_saturated_and_the_others_are_not() -> None:
    runs = [a_run(id=f"a{i}", tenant="flood") for i in range(10)] + [a_run(id="b", tenant="b")]
    agents, tenants = saturated(runs, 10, Allowance())
    assert (agents, tenants) == (set(), {"flood"})
    capped = Allowance(agents={"a": 1}, tenants={"b": 1})
    assert saturated(runs, 10, capped) == ({"a"}, {"flood", "b"})
