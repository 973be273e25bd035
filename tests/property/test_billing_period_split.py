"""Billing periods on hand-computed examples: re-bucketing when a new period cuts through recorded
activity, and roll-over for month and exact-duration intervals."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
import pytest


def t(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@dataclass
class Org:
    id: int
    project: int
    testbed: int
    benchmarks: list[int]
    measures: list[int]


@pytest.fixture
def org(conn: psycopg.Connection) -> Org:
    conn.execute("SET active_series.allow_explicit_created = on")

    def one(query: str, *params: object) -> int:
        row = conn.execute(query + " RETURNING id", params).fetchone()
        assert row is not None
        return row[0]

    org_id = one("INSERT INTO active_series.organization (name) VALUES ('acme')")
    project = one(
        "INSERT INTO active_series.project (organization_id, name) VALUES (%s, 'p')", org_id
    )
    testbed = one("INSERT INTO active_series.testbed (project_id, name) VALUES (%s, 'tb')", project)
    benchmarks = [
        one("INSERT INTO active_series.benchmark (project_id, name) VALUES (%s, %s)", project, n)
        for n in ("b0", "b1")
    ]
    measures = [
        one("INSERT INTO active_series.measure (project_id, name) VALUES (%s, %s)", project, n)
        for n in ("m0", "m1")
    ]
    return Org(org_id, project, testbed, benchmarks, measures)


def ingest(conn: psycopg.Connection, org: Org, created: datetime, *series: tuple[int, int]) -> int:
    """One report at ``created`` with a metric for each (benchmark index, measure index)."""
    with conn.transaction():
        (report,) = conn.execute(
            "INSERT INTO active_series.report"
            " (project_id, testbed_id, start_time, end_time, created)"
            " VALUES (%s, %s, %s, %s, %s) RETURNING id",
            (org.project, org.testbed, created, created, created),
        ).fetchone()
        for iteration, (b, m) in enumerate(series):
            (rb,) = conn.execute(
                "INSERT INTO active_series.report_benchmark (report_id, benchmark_id, iteration)"
                " VALUES (%s, %s, %s) RETURNING id",
                (report, org.benchmarks[b], iteration),
            ).fetchone()
            conn.execute(
                "INSERT INTO active_series.metric (report_benchmark_id, measure_id, value)"
                " VALUES (%s, %s, 1.0)",
                (rb, org.measures[m]),
            )
    return report


def periods(conn: psycopg.Connection, org: Org) -> list[tuple[datetime, datetime, int]]:
    return [
        tuple(r)
        for r in conn.execute(
            "SELECT period_start, period_end, active_series FROM active_series.periods(%s)",
            (org.id,),
        )
    ]


def series(conn: psycopg.Connection, org: Org, start: datetime) -> list[tuple]:
    """period_series as (benchmark index, measure index, first_seen, last_seen), sorted."""
    rows = conn.execute(
        "SELECT benchmark_id, measure_id, first_seen, last_seen"
        " FROM active_series.period_series(%s, %s)",
        (org.id, start),
    )
    return sorted(
        (org.benchmarks.index(b), org.measures.index(m), first, last) for b, m, first, last in rows
    )


def set_period(conn: psycopg.Connection, org: Org, start: datetime, end: datetime) -> None:
    conn.execute("SELECT active_series.set_billing_period(%s, %s, %s)", (org.id, start, end))


def assert_healthy(conn: psycopg.Connection) -> None:
    assert conn.execute("SELECT * FROM active_series.verify()").fetchall() == []


def test_a_new_period_cutting_through_activity_splits_it_exactly_from_the_metrics(conn, org):
    # series (0,0) is active on both sides of Jan 15, with inner bounds Jan 10 and Jan 20 held by
    # other reports than its outer bounds; (1,0) only before; (0,1) only after; February too.
    ingest(conn, org, t(2024, 1, 3, 8), (0, 0), (1, 0))
    ingest(conn, org, t(2024, 1, 10, 12, 30), (0, 0))
    ingest(conn, org, t(2024, 1, 20, 1), (0, 0))
    ingest(conn, org, t(2024, 1, 25, 23, 59, 59, 999_999), (0, 0), (0, 1))
    ingest(conn, org, t(2024, 2, 10), (1, 1))
    ingest(conn, org, t(2024, 2, 20), (0, 0))
    assert periods(conn, org) == [
        (t(2024, 1, 1), t(2024, 2, 1), 3),
        (t(2024, 2, 1), t(2024, 3, 1), 2),
    ]

    set_period(conn, org, t(2024, 1, 15), t(2024, 2, 15))

    assert periods(conn, org) == [
        (t(2024, 1, 1), t(2024, 1, 15), 2),
        (t(2024, 1, 15), t(2024, 2, 15), 3),
        (t(2024, 2, 15), t(2024, 3, 15), 1),  # the rest of February, on the new schedule
    ]
    assert series(conn, org, t(2024, 1, 1)) == [
        (0, 0, t(2024, 1, 3, 8), t(2024, 1, 10, 12, 30)),
        (1, 0, t(2024, 1, 3, 8), t(2024, 1, 3, 8)),
    ]
    assert series(conn, org, t(2024, 1, 15)) == [
        (0, 0, t(2024, 1, 20, 1), t(2024, 1, 25, 23, 59, 59, 999_999)),
        (0, 1, t(2024, 1, 25, 23, 59, 59, 999_999), t(2024, 1, 25, 23, 59, 59, 999_999)),
        (1, 1, t(2024, 2, 10), t(2024, 2, 10)),
    ]
    assert series(conn, org, t(2024, 2, 15)) == [(0, 0, t(2024, 2, 20), t(2024, 2, 20))]
    usage = "SELECT active_series.period_usage(%s, %s)"
    assert conn.execute(usage, (org.id, t(2024, 2, 1))).fetchone() == (0,)
    assert conn.execute(usage, (org.id, t(2024, 1, 15))).fetchone() == (3,)
    # last_seen is untouched by re-bucketing
    count = "SELECT active_series.count_active(%s, %s, %s)"
    assert conn.execute(count, (org.id, t(2024, 2, 20), t(2024, 2, 21))).fetchone() == (1,)
    assert conn.execute(count, (org.id, t(2024, 1, 1), t(2024, 3, 1))).fetchone() == (4,)
    assert_healthy(conn)


def test_a_month_interval_anchored_on_jan_31_rolls_over_on_month_ends(conn, org):
    set_period(conn, org, t(2024, 1, 31), t(2024, 2, 29))  # Jan 31 + 1 month = Feb 29
    ingest(conn, org, t(2024, 3, 15), (0, 0))
    ingest(conn, org, t(2024, 3, 31), (0, 1))  # Jan 31 + 2 months: a new period
    ingest(conn, org, t(2024, 5, 30, 23), (1, 0))  # Jan 31 + 3 months = Apr 30
    ingest(conn, org, t(2024, 5, 31), (1, 1))  # Jan 31 + 4 months = May 31
    assert periods(conn, org) == [
        (t(2024, 1, 31), t(2024, 2, 29), 0),
        (t(2024, 2, 29), t(2024, 3, 31), 1),
        (t(2024, 3, 31), t(2024, 4, 30), 1),
        (t(2024, 4, 30), t(2024, 5, 31), 1),
        (t(2024, 5, 31), t(2024, 6, 30), 1),
    ]
    assert_healthy(conn)


def test_an_exact_duration_interval_rolls_over_from_the_anchor(conn, org):
    start = t(2024, 3, 1, 6)
    length = timedelta(days=7, hours=1, minutes=30)
    set_period(conn, org, start, start + length)
    ingest(conn, org, t(2024, 3, 20), (0, 0))  # 18d18h after the anchor: k = 2
    ingest(conn, org, start + 3 * length, (0, 0))  # exactly on a boundary: k = 3
    ingest(conn, org, start + 1000 * length - timedelta(microseconds=1), (1, 1))  # k = 999
    assert periods(conn, org) == [
        (start, start + length, 0),
        (start + 2 * length, start + 3 * length, 1),
        (start + 3 * length, start + 4 * length, 1),
        (start + 999 * length, start + 1000 * length, 1),
    ]
    assert_healthy(conn)


def test_a_period_that_is_exactly_a_month_long_rolls_over_by_months(conn, org):
    set_period(conn, org, t(2024, 2, 1), t(2024, 3, 1))  # 29 days, but one whole month
    ingest(conn, org, t(2024, 3, 31, 23, 59, 59, 999_999), (0, 0))
    ingest(conn, org, t(2024, 4, 1), (0, 0))
    assert periods(conn, org) == [
        (t(2024, 2, 1), t(2024, 3, 1), 0),
        (t(2024, 3, 1), t(2024, 4, 1), 1),
        (t(2024, 4, 1), t(2024, 5, 1), 1),
    ]
    assert series(conn, org, t(2024, 3, 1)) == [
        (0, 0, t(2024, 3, 31, 23, 59, 59, 999_999), t(2024, 3, 31, 23, 59, 59, 999_999))
    ]


def test_without_configuration_periods_are_utc_months_whatever_the_session_time_zone(conn, org):
    conn.execute("SET TimeZone = 'America/New_York'")
    ingest(conn, org, t(2024, 1, 31, 23, 59, 59, 999_999), (0, 0))
    ingest(conn, org, t(2024, 2, 1), (0, 0))
    assert periods(conn, org) == [
        (t(2024, 1, 1), t(2024, 2, 1), 1),
        (t(2024, 2, 1), t(2024, 3, 1), 1),
    ]
    assert_healthy(conn)


def test_activity_before_the_anchor_falls_in_its_calendar_month_up_to_the_anchor(conn, org):
    set_period(conn, org, t(2024, 3, 10), t(2024, 3, 11))
    ingest(conn, org, t(2024, 3, 5), (0, 0))
    ingest(conn, org, t(2024, 3, 12, 5), (0, 0))  # daily from the anchor
    assert periods(conn, org) == [
        (t(2024, 3, 1), t(2024, 3, 10), 1),
        (t(2024, 3, 10), t(2024, 3, 11), 0),
        (t(2024, 3, 12), t(2024, 3, 13), 1),
    ]
    assert_healthy(conn)


def test_later_activity_moves_onto_the_new_schedule_whatever_the_interval(conn, org):
    # January is recorded as a calendar month; a one-second period set before it re-buckets its
    # activity into the seconds that hold some, the rest of January is not recorded (the walk
    # jumps from one second with activity to the next: 2.7 million seconds, three periods)
    ingest(conn, org, t(2024, 1, 3, 8, 0, 0, 250_000), (0, 0), (1, 0))
    ingest(conn, org, t(2024, 1, 3, 8, 0, 0, 750_000), (0, 0), (0, 1))
    ingest(conn, org, t(2024, 1, 3, 8, 0, 1), (1, 1))
    ingest(conn, org, t(2024, 1, 31, 23, 59, 59, 999_999), (1, 1))

    set_period(conn, org, t(2023, 12, 31, 23, 59, 59), t(2024, 1, 1))

    second = timedelta(seconds=1)
    assert periods(conn, org) == [
        (t(2023, 12, 31, 23, 59, 59), t(2024, 1, 1), 0),
        (t(2024, 1, 3, 8), t(2024, 1, 3, 8) + second, 3),
        (t(2024, 1, 3, 8, 0, 1), t(2024, 1, 3, 8, 0, 1) + second, 1),
        (t(2024, 1, 31, 23, 59, 59), t(2024, 2, 1), 1),
    ]
    assert series(conn, org, t(2024, 1, 3, 8)) == [
        (0, 0, t(2024, 1, 3, 8, 0, 0, 250_000), t(2024, 1, 3, 8, 0, 0, 750_000)),
        (0, 1, t(2024, 1, 3, 8, 0, 0, 750_000), t(2024, 1, 3, 8, 0, 0, 750_000)),
        (1, 0, t(2024, 1, 3, 8, 0, 0, 250_000), t(2024, 1, 3, 8, 0, 0, 250_000)),
    ]
    # ingest between them derives the same seconds
    ingest(conn, org, t(2024, 1, 20, 12, 0, 0, 500_000), (0, 0))
    assert periods(conn, org)[3] == (t(2024, 1, 20, 12), t(2024, 1, 20, 12, 0, 1), 1)
    assert_healthy(conn)
