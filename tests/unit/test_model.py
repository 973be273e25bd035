"""The property-test model on hand-computed examples: it must be able to fail, and be right."""

from __future__ import annotations

import importlib.util
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

_PATH = Path(__file__).resolve().parents[1] / "property" / "model.py"
_SPEC = importlib.util.spec_from_file_location("active_series_property_model", _PATH)
assert _SPEC is not None and _SPEC.loader is not None
m = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = m
_SPEC.loader.exec_module(m)


def t(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def new_model(visibility: str = "public") -> m.Model:
    """Organization 1, project 10 with testbeds 100/101, benchmarks 200/201, measures 300/301."""
    model = m.Model()
    model.add_organization(1)
    model.add_project(10, 1, visibility)
    for i in (0, 1):
        model.add_testbed(100 + i, 10)
        model.add_benchmark(200 + i, 10)
        model.add_measure(300 + i, 10)
    return model


def ingest(model: m.Model, report_id: int, created: datetime, *pairs: tuple[int, int], tb=100):
    model.add_report(report_id, 10, tb, created)
    for benchmark, measure in pairs:
        model.add_metric(report_id, benchmark, measure)


# ------------------------------------------------------------------------------------------------
# month arithmetic


@pytest.mark.parametrize(
    ("start", "months", "expected"),
    [
        (t(2024, 1, 31, 5), 1, t(2024, 2, 29, 5)),
        (t(2023, 1, 31), 1, t(2023, 2, 28)),
        (t(2024, 1, 31), 2, t(2024, 3, 31)),
        (t(2024, 1, 31), 3, t(2024, 4, 30)),
        (t(2023, 12, 15), 1, t(2024, 1, 15)),
        (t(2024, 3, 31), -1, t(2024, 2, 29)),
        (t(2024, 2, 29), 12, t(2025, 2, 28)),
    ],
)
def test_adding_months_clamps_the_day_like_postgres(start, months, expected):
    assert m.add_months(start, months) == expected


def test_adding_months_works_on_utc_wall_clock_time():
    start = datetime(2024, 1, 31, 23, 30, tzinfo=UTC).astimezone(ZoneInfo("Asia/Tokyo"))
    assert start.day == 1  # Feb 1 08:30 in Tokyo
    assert m.add_months(start, 1) == t(2024, 2, 29, 23, 30)


def test_whole_months_recognises_month_multiples_only():
    assert m.whole_months(t(2024, 1, 31), t(2024, 2, 29)) == 1
    assert m.whole_months(t(2024, 2, 1), t(2024, 3, 1)) == 1  # 29 days, but a whole month
    assert m.whole_months(t(2024, 1, 15), t(2024, 4, 15)) == 3
    assert m.whole_months(t(2024, 1, 15), t(2024, 2, 15, 0, 0, 1)) is None
    assert m.whole_months(t(2024, 1, 15), t(2024, 2, 14)) is None
    assert m.whole_months(t(2024, 1, 30), t(2024, 2, 29)) == 1
    assert m.whole_months(t(2024, 1, 29), t(2024, 2, 29)) == 1


# ------------------------------------------------------------------------------------------------
# periods


def test_without_configuration_periods_are_utc_calendar_months():
    model = new_model()
    assert model.period_for(1, t(2024, 2, 29, 23, 59, 59)) == (t(2024, 2, 1), t(2024, 3, 1))
    assert model.period_for(1, t(2024, 3, 1)) == (t(2024, 3, 1), t(2024, 4, 1))
    assert model.period_for(1, t(2023, 12, 31, 23)) == (t(2023, 12, 1), t(2024, 1, 1))


def test_month_interval_anchored_on_jan_31_follows_month_ends():
    model = new_model()
    model.set_billing_period(1, t(2024, 1, 31), t(2024, 2, 29))
    assert model.organizations[1].config == m.BillingConfig(t(2024, 1, 31), months=1)
    assert model.period_for(1, t(2024, 3, 15)) == (t(2024, 2, 29), t(2024, 3, 31))
    assert model.period_for(1, t(2024, 3, 31)) == (t(2024, 3, 31), t(2024, 4, 30))
    assert model.period_for(1, t(2024, 5, 30, 23)) == (t(2024, 4, 30), t(2024, 5, 31))
    assert model.period_for(1, t(2025, 2, 28, 12)) == (t(2025, 2, 28), t(2025, 3, 31))


def test_exact_duration_interval_rolls_forward_from_the_anchor():
    model = new_model()
    start = t(2024, 3, 1, 6)
    length = timedelta(days=7, hours=1, minutes=30)
    model.set_billing_period(1, start, start + length)
    assert model.organizations[1].config == m.BillingConfig(start, duration=length)
    # 2024-03-20 is 18d18h after the anchor: k = 2 (14d3h <= 18d18h < 21d4h30m)
    assert model.period_for(1, t(2024, 3, 20)) == (start + 2 * length, start + 3 * length)
    assert model.period_for(1, start + 1000 * length) == (
        start + 1000 * length,
        start + 1001 * length,
    )
    assert model.period_for(1, start + 1000 * length - timedelta(microseconds=1)) == (
        start + 999 * length,
        start + 1000 * length,
    )


def test_a_time_before_the_anchor_gets_its_calendar_month_clamped_to_the_anchor():
    model = new_model()
    model.set_billing_period(1, t(2024, 3, 10), t(2024, 3, 11))
    assert model.period_for(1, t(2024, 3, 5)) == (t(2024, 3, 1), t(2024, 3, 10))
    assert model.period_for(1, t(2024, 2, 5)) == (t(2024, 2, 1), t(2024, 3, 1))


def test_a_derived_period_is_clamped_between_recorded_periods():
    model = new_model()
    ingest(model, 1, t(2024, 1, 10), (200, 300))  # records January
    # weekly from Dec 20: January's activity moves onto the schedule, [Jan 10, Jan 17)
    model.set_billing_period(1, t(2023, 12, 20), t(2023, 12, 27))
    assert [p[:2] for p in model.periods(1)] == [
        (t(2023, 12, 20), t(2023, 12, 27)),
        (t(2024, 1, 10), t(2024, 1, 17)),
    ]
    assert model.period_for(1, t(2024, 1, 4)) == (t(2024, 1, 3), t(2024, 1, 10))
    # then weekly from Mar 3: before it, calendar months clamped between the recorded periods
    model.set_billing_period(1, t(2024, 3, 3), t(2024, 3, 10))
    assert model.period_for(1, t(2023, 12, 30)) == (t(2023, 12, 27), t(2024, 1, 1))
    assert model.period_for(1, t(2024, 1, 5)) == (t(2024, 1, 1), t(2024, 1, 10))
    assert model.period_for(1, t(2024, 1, 20)) == (t(2024, 1, 17), t(2024, 2, 1))
    assert model.period_for(1, t(2024, 3, 12)) == (t(2024, 3, 10), t(2024, 3, 17))
    assert model.period_for(1, t(2023, 12, 19)) == (t(2023, 12, 1), t(2023, 12, 20))


def test_setting_a_period_splits_and_merges_recorded_periods_exactly():
    model = new_model()
    ingest(model, 1, t(2024, 1, 3), (200, 300), (201, 300))
    ingest(model, 2, t(2024, 1, 10), (200, 300))
    ingest(model, 3, t(2024, 1, 20), (200, 300))
    ingest(model, 4, t(2024, 1, 25), (200, 300), (200, 301))
    ingest(model, 5, t(2024, 2, 20), (200, 300))
    model.set_billing_period(1, t(2024, 1, 15), t(2024, 2, 15))
    assert [p[:2] for p in model.periods(1)] == [
        (t(2024, 1, 1), t(2024, 1, 15)),
        (t(2024, 1, 15), t(2024, 2, 15)),
        (t(2024, 2, 15), t(2024, 3, 15)),  # the rest of February, on the new schedule
    ]
    assert model.period_series(1, t(2024, 1, 1)) == [
        m.SeriesRow(10, 100, 200, m.EMPTY_VARIANT, 300, t(2024, 1, 3), t(2024, 1, 10)),
        m.SeriesRow(10, 100, 201, m.EMPTY_VARIANT, 300, t(2024, 1, 3), t(2024, 1, 3)),
    ]
    assert model.period_series(1, t(2024, 1, 15)) == [
        m.SeriesRow(10, 100, 200, m.EMPTY_VARIANT, 300, t(2024, 1, 20), t(2024, 1, 25)),
        m.SeriesRow(10, 100, 200, m.EMPTY_VARIANT, 301, t(2024, 1, 25), t(2024, 1, 25)),
    ]
    assert model.period_usage(1, t(2024, 2, 15)) == 1
    assert model.period_usage(1, t(2024, 2, 1)) == 0  # no period starts there any more
    # later periods roll forward by one month from the anchor, the recorded ones too
    assert model.period_for(1, t(2024, 3, 10)) == (t(2024, 2, 15), t(2024, 3, 15))
    assert model.period_for(1, t(2024, 3, 20)) == (t(2024, 3, 15), t(2024, 4, 15))


def test_setting_a_period_moves_later_activity_onto_its_schedule_and_drops_empty_periods():
    model = new_model()
    model.set_billing_period(1, t(2024, 4, 1), t(2024, 5, 1))  # recorded, no activity
    ingest(model, 1, t(2024, 2, 20), (200, 300))
    ingest(model, 2, t(2024, 3, 9, 12), (200, 300))
    model.set_billing_period(1, t(2024, 1, 10), t(2024, 1, 17))  # weekly from Jan 10
    assert model.periods(1) == [
        (t(2024, 1, 10), t(2024, 1, 17), 0),
        (t(2024, 2, 14), t(2024, 2, 21), 1),
        (t(2024, 3, 6), t(2024, 3, 13), 1),
    ]
    # the cuts the database makes: the bounds, and those of the weeks with activity
    assert model.billing_period_cuts(1, t(2024, 1, 3), t(2024, 1, 10)) == [
        t(2024, 1, 3),
        t(2024, 1, 10),
        t(2024, 2, 14),
        t(2024, 2, 21),
        t(2024, 3, 6),
        t(2024, 3, 13),
    ]


def test_setting_a_period_records_it_even_without_activity():
    model = new_model()
    model.set_billing_period(1, t(2024, 5, 1, 12), t(2024, 5, 2, 12))
    assert model.periods(1) == [(t(2024, 5, 1, 12), t(2024, 5, 2, 12), 0)]
    with pytest.raises(ValueError):
        model.set_billing_period(1, t(2024, 5, 2), t(2024, 5, 2))


def test_split_is_exact_only_when_the_bounds_next_to_the_cut_still_have_their_report():
    model = new_model()
    ingest(model, 1, t(2024, 1, 3), (200, 300))
    ingest(model, 2, t(2024, 1, 20), (200, 300))
    ingest(model, 3, t(2024, 1, 5), (201, 300))
    assert model.split_is_exact(1, t(2024, 1, 15))
    model.delete_report(3)  # series (201, 300) is on one side only: still exact
    assert model.split_is_exact(1, t(2024, 1, 15))
    model.delete_report(1)
    assert not model.split_is_exact(1, t(2024, 1, 15))
    assert model.split_is_exact(1, t(2024, 2, 1))  # a boundary: nothing to split


# ------------------------------------------------------------------------------------------------
# counts


def test_deleting_a_report_never_lowers_any_count():
    model = new_model()
    ingest(model, 1, t(2024, 1, 3), (200, 300), (201, 301))
    model.delete_report(1)
    assert model.period_usage(1, t(2024, 1, 1)) == 2
    assert model.count_active(1, t(2024, 1, 1), t(2024, 2, 1)) == 2


def test_last_seen_is_never_lowered_by_an_older_report():
    model = new_model()
    ingest(model, 1, t(2024, 1, 20), (200, 300))
    ingest(model, 2, t(2024, 1, 3), (200, 300))
    assert model.count_active(1, t(2024, 1, 20), t(2024, 1, 20, 0, 0, 0, 1)) == 1
    assert model.count_active(1, t(2024, 1, 1), t(2024, 1, 20)) == 0
    assert model.period_series(1, t(2024, 1, 1)) == [
        m.SeriesRow(10, 100, 200, m.EMPTY_VARIANT, 300, t(2024, 1, 3), t(2024, 1, 20))
    ]


def test_a_series_counts_in_every_period_it_reported_in():
    model = new_model()
    ingest(model, 1, t(2024, 1, 3), (200, 300))
    ingest(model, 2, t(2024, 2, 3), (200, 300))
    assert model.periods(1) == [
        (t(2024, 1, 1), t(2024, 2, 1), 1),
        (t(2024, 2, 1), t(2024, 3, 1), 1),
    ]
    assert model.count_active(1, t(2024, 1, 1), t(2024, 2, 1)) == 0


@pytest.mark.parametrize("kind", ["testbed", "benchmark", "measure", "project"])
def test_hard_deletes_remove_series_from_every_period(kind):
    model = new_model()
    ingest(model, 1, t(2024, 1, 3), (200, 300), (201, 301))
    ingest(model, 2, t(2024, 2, 3), (200, 300), (201, 301))
    {
        "testbed": lambda: model.delete_testbed(100),
        "benchmark": lambda: model.delete_benchmark(200),
        "measure": lambda: model.delete_measure(300),
        "project": lambda: model.delete_project(10),
    }[kind]()
    left = 0 if kind in ("testbed", "project") else 1
    assert [p[2] for p in model.periods(1)] == [left, left]  # the periods stay recorded
    assert model.count_active(1, t(2000, 1, 1), t(2100, 1, 1)) == left


def test_soft_delete_and_visibility_act_at_read_time():
    model = new_model("private")
    model.add_project(11, 1, "public")
    model.add_testbed(110, 11)
    ingest(model, 1, t(2024, 1, 3), (200, 300))
    model.add_report(2, 11, 110, t(2024, 1, 4))
    model.add_metric(2, 200, 300)
    window = (t(2024, 1, 1), t(2024, 2, 1))
    assert model.count_active(1, *window) == 2
    assert model.count_active(1, *window, "private") == 1
    assert model.count_active(1, *window, "public") == 1
    model.set_deleted(10, True)
    assert model.count_active(1, *window) == 1
    assert model.count_active(1, *window, "private") == 0
    assert model.period_usage(1, t(2024, 1, 1)) == 1
    model.set_deleted(10, False)
    model.set_visibility(11, "private")
    assert model.count_active(1, *window, "private") == 2
    assert model.period_usage(1, t(2024, 1, 1)) == 2


def test_current_period_usage_follows_now():
    model = new_model()
    ingest(model, 1, t(2024, 1, 3), (200, 300))
    assert model.period_usage(1, None, now=t(2024, 1, 31)) == 1
    assert model.period_usage(1, None, now=t(2024, 2, 1)) == 0
    assert model.current_period(1, t(2024, 2, 1)) == (t(2024, 2, 1), t(2024, 3, 1))
