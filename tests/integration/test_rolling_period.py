"""The rolling schedule has one definition, _rolling_period, which _derive_period and
set_billing_period call: checked against an independent computation of anchor + k * interval
(calendar months clamped to the month's last day, or exact microseconds)."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ANCHORS = st.datetimes(
    min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
MONTHS = st.integers(min_value=1, max_value=36)
# whole microseconds, from one second to three years
SPANS = st.integers(min_value=1_000_000, max_value=3 * 366 * 86_400 * 1_000_000)


def add_months(at: datetime, months: int) -> datetime:
    """PostgreSQL's timestamp + interval 'n months': the day clamped to the month's last."""
    year, month = divmod(at.month - 1 + months, 12)
    year += at.year
    day = min(at.day, calendar.monthrange(year, month + 1)[1])
    return at.replace(year=year, month=month + 1, day=day)


def rolling(conn: psycopg.Connection[Any], anchor: datetime, interval: Any, at: datetime) -> Any:
    row = conn.execute(
        "SELECT period_start, period_end FROM active_series._rolling_period(%s, %s, %s)",
        (anchor, interval, at),
    ).fetchone()
    assert row is not None
    return row


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(anchor=ANCHORS, months=MONTHS, k=st.integers(0, 400), into=st.floats(0, 1))
def test_month_periods_are_the_anchor_plus_whole_months(conn, anchor, months, k, into) -> None:
    start = add_months(anchor, k * months)
    end = add_months(anchor, (k + 1) * months)
    at = start + timedelta(microseconds=int((end - start) / timedelta(microseconds=1) * into))
    if at >= end:
        at = end - timedelta(microseconds=1)
    got = rolling(conn, anchor, f"{months} months", at)
    assert got == (start, end)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(anchor=ANCHORS, span=SPANS, offset=st.integers(0, 10**15))
def test_exact_periods_contain_the_time_and_tile(conn, anchor, span, offset) -> None:
    at = anchor + timedelta(microseconds=offset)
    if at.year >= 9000:
        return
    interval = timedelta(microseconds=span)
    start, end = rolling(conn, anchor, interval, at)
    assert start <= at < end
    k = offset // span
    exact = anchor + k * interval
    # anchor + k * interval: PostgreSQL rounds the product to microseconds
    assert abs(start - exact) <= timedelta(microseconds=2), (start, exact)
    # the next period starts where this one ends, and the previous one ends where it starts
    assert rolling(conn, anchor, interval, end)[0] == end
    if start > anchor:
        assert rolling(conn, anchor, interval, start - timedelta(microseconds=1))[1] == start


def test_the_anchor_starts_period_zero(conn) -> None:
    anchor = datetime(2026, 1, 31, 12, tzinfo=UTC)
    assert rolling(conn, anchor, "1 month", anchor) == (
        anchor,
        datetime(2026, 2, 28, 12, tzinfo=UTC),
    )
    assert rolling(conn, anchor, "1 month", datetime(2026, 3, 30, tzinfo=UTC)) == (
        datetime(2026, 2, 28, 12, tzinfo=UTC),
        datetime(2026, 3, 31, 12, tzinfo=UTC),
    )
