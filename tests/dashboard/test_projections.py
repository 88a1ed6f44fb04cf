"""The dashboard's pure projections: a journal as timeline rows on a waterfall, and charts."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kernos.api._dashboard_charts import buckets, cumulative_line, nice_ceiling, stacked_bars
from kernos.api._dashboard_data import percentile
from kernos.api._dashboard_timeline import DETAIL_LIMIT, category_of, rows_of, span_of
from kernos.store import Event

T0 = 1_000.0


def attempt(seq: int, at: float, then: str, delay: float | None) -> Event:
    payload = {
        "n": seq, "provider": "oa", "model": "m", "error_class": "server_error", "error": "500",
        "status": 500, "started_at": T0 + at - 0.3, "latency": 0.3, "delay": delay, "then": then,
    }  # fmt: skip
    return Event(seq, "llm_attempt", 2, "chat", seq, payload, T0 + at, 0.3)


def test_failed_attempts_show_their_latency_their_backoff_and_what_came_next() -> None:
    rows = rows_of(
        [
            attempt(1, 1.0, "retry", 0.5),
            attempt(2, 1.8, "fallback", None),
            Event(3, "llm_completed", 2, "chat", 3, {"response": {"provider": "an", "model": "h",
                  "cost": 0.002, "usage": {"input_tokens": 5, "output_tokens": 7}, "attempts": 3}},
                  T0 + 2.5, 0.4),
        ],
        T0,
    )  # fmt: skip
    first, second, answer = rows
    assert (first.category, first.then, first.bar.delay) == ("attempt", "retry", 0.5)
    assert abs(first.bar.start - 0.7) < 1e-9 and abs(first.bar.length - 0.3) < 1e-9
    assert "retry in 500.0 ms" in first.summary and "server_error 500" in first.summary
    assert second.then == "fallback" and second.bar.delay == 0.0
    assert "fall back to the next model" in second.summary
    assert answer.category == "llm" and abs(answer.bar.start - 2.1) < 1e-9
    assert "an:h 5+7 tokens $0.002000, after 3 attempts" in answer.summary
    assert abs(span_of(rows, 0.0) - 2.5) < 1e-9


def test_a_wait_spans_from_where_it_began_even_across_pages() -> None:
    asked = Event(4, "approval_requested", 5, "tool:refund", 0, {"question": "ok?"}, T0 + 1.0)
    decided = Event(5, "approval_decided", 5, "tool:refund", 0, {"state": "approved", "by": "al"},
                    T0 + 61.0)  # fmt: skip
    (_, row) = rows_of([asked, decided], T0)
    assert row.bar.wait and row.bar.start == 1.0 and row.bar.length == 60.0
    assert not row.open_wait and row.summary == "approved by al"
    (alone,) = rows_of([decided], T0)  # its beginning is on an earlier page
    assert alone.open_wait and alone.bar.length == 0.0
    fired = Event(6, "timer_fired", 7, "sleep", 0, {"since": T0 + 10.0}, T0 + 70.0)
    (timer,) = rows_of([fired], T0)  # the event says when its wait began
    assert timer.bar.start == 10.0 and timer.bar.length == 60.0 and not timer.open_wait


def test_payloads_become_fields_and_blocks_cut_at_a_limit() -> None:
    big = "x" * (DETAIL_LIMIT + 10)
    ev = Event(1, "tool_completed", 1, "lookup", 1, {"arguments": {"id": 7}, "result": big, "n": 3},
               T0 + 1, 0.1)  # fmt: skip
    (row,) = rows_of([ev], T0)
    assert row.fields == (("n", "3"),)
    labels = {d.label: d for d in row.details}
    assert labels["arguments"].text == '{\n  "id": 7\n}' and not labels["arguments"].cut
    assert labels["result"].cut and len(labels["result"].text) == DETAIL_LIMIT


def test_every_event_type_has_a_category() -> None:
    assert category_of("run_failed") == "failed"
    assert category_of("mailbox_empty") == "noise"
    assert category_of("something_failed") == "failed"
    assert category_of("run_something") == "run"
    assert category_of("brand_new") == "step"


@given(st.floats(min_value=1e-9, max_value=1e12))
def test_an_axis_top_is_round_and_above_the_data(value: float) -> None:
    top, step = nice_ceiling(value)
    assert top >= value and 1 <= round(top / step) <= 5


def test_buckets_align_as_the_store_aligns_them() -> None:
    assert buckets(7_250.0, 14_500.0, 3600.0) == [7_200.0, 10_800.0, 14_400.0]


def test_spend_is_stacked_per_bucket_and_a_budget_is_a_reference_line() -> None:
    chart = stacked_bars(
        "spend", [0.0, 3600.0], 3600.0, {"a": {0.0: 2.0}, "b": {0.0: 1.0, 3600.0: 4.0}}, str
    )
    assert len(chart.rects) == 3 and [name for _, name in chart.legend] == ["a", "b"]
    a, b0, b1 = chart.rects
    assert a.y > b0.y and abs(b1.h - (a.h + b0.h) * 4 / 3) < 1e-6  # heights to scale
    empty = stacked_bars("spend", [0.0], 3600.0, {}, str)
    assert empty.empty
    line = cumulative_line("budget", [0.0, 3600.0], 3600.0, {0.0: 1.0, 3600.0: 2.0}, 5.0, str)
    refs = [x for x in line.lines if x.kind == "ref"]
    assert len(refs) == 1 and refs[0].title == "budget: 5.0"
    assert any(t.text == "budget 5.0" for t in line.labels)
    assert line.paths[0].title == "spent: 3.0"


def test_percentiles_by_nearest_rank() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 0.95) == 95.0
