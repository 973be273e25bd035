"""set_billing_period re-buckets the periods recorded after its end onto the rolling schedule:
the period starting at the end runs to the end plus the interval, and so on, whatever activity was
recorded there before the call."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg


def t(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def one(conn: psycopg.Connection, query: str, *params: object) -> int:
    row = conn.execute(query + " RETURNING id", params).fetchone()
    assert row is not None
    return row[0]


def org_with_report(conn: psycopg.Connection, created: datetime | None = None) -> int:
    """The README's organization, one series reported at ``created`` (default: now())."""
    org = one(conn, "INSERT INTO active_series.organization (name) VALUES ('b')")
    project = one(
        conn,
        "INSERT INTO active_series.project (organization_id, name, visibility)"
        " VALUES (%s, 'p', 'private')",
        org,
    )
    testbed = one(
        conn, "INSERT INTO active_series.testbed (project_id, name) VALUES (%s, 'linux')", project
    )
    benchmark = one(
        conn, "INSERT INTO active_series.benchmark (project_id, name) VALUES (%s, 'parse')", project
    )
    measure = one(
        conn, "INSERT INTO active_series.measure (project_id, name) VALUES (%s, 'latency')", project
    )
    if created is None:
        report = one(
            conn,
            "INSERT INTO active_series.report (project_id, testbed_id, start_time, end_time)"
            " VALUES (%s, %s, now(), now())",
            project,
            testbed,
        )
    else:
        conn.execute("SET active_series.allow_explicit_created = on")
        report = one(
            conn,
            "INSERT INTO active_series.report (project_id, testbed_id, start_time, end_time,"
            " created) VALUES (%s, %s, %s, %s, %s)",
            project,
            testbed,
            created,
            created,
            created,
        )
    rb = one(
        conn,
        "INSERT INTO active_series.report_benchmark (report_id, benchmark_id, iteration)"
        " VALUES (%s, %s, 0)",
        report,
        benchmark,
    )
    conn.execute(
        "INSERT INTO active_series.metric (report_benchmark_id, measure_id, value)"
        " VALUES (%s, %s, 1.5)",
        (rb, measure),
    )
    return org


def month_start(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def add_month(moment: datetime) -> datetime:
    year, month = divmod(moment.year * 12 + moment.month, 12)
    return moment.replace(year=year, month=month + 1)


def periods(conn: psycopg.Connection, org: int) -> list[tuple]:
    return [tuple(r) for r in conn.execute("SELECT * FROM active_series.periods(%s)", (org,))]


def current(conn: psycopg.Connection, org: int) -> tuple:
    row = conn.execute("SELECT * FROM active_series.current_period(%s)", (org,)).fetchone()
    assert row is not None
    return tuple(row)


def test_the_readme_sequence_rolls_the_current_period_from_the_new_end(conn):
    # the README's example with its dates taken relative to now(): a period ending on the
    # 5th of the current month, one report now (after the 5th unless today is the 1st to 4th)
    (now,) = conn.execute("SELECT now()").fetchone()
    this_month = month_start(now)
    end = this_month + timedelta(days=4)
    if now < end:  # the 1st to 4th: the period ending on the 5th of the month before
        end = month_start(this_month - timedelta(days=1)) + timedelta(days=4)
    start = month_start(end - timedelta(days=5)) + timedelta(days=4)
    org = org_with_report(conn)
    assert periods(conn, org) == [(this_month, add_month(this_month), 1)]

    conn.execute("SELECT active_series.set_billing_period(%s, %s, %s)", (org, start, end))

    assert current(conn, org) == (end, add_month(end))
    assert periods(conn, org) == [(start, end, 0), (end, add_month(end), 1)]
    assert conn.execute("SELECT * FROM active_series.verify()").fetchall() == []


def test_later_recorded_periods_are_rebucketed_onto_the_schedule_exactly(conn):
    # activity in December and in March (calendar months: nothing configured), then a monthly
    # period [Nov 5, Dec 5): December becomes [Dec 5, Jan 5), March [Mar 5, Apr 5) and
    # [Feb 5, Mar 5); the empty stretch in between is not recorded
    org = org_with_report(conn, t(2025, 12, 20))
    (project,) = conn.execute(
        "SELECT id FROM active_series.project WHERE organization_id = %s", (org,)
    ).fetchone()
    (testbed,) = conn.execute(
        "SELECT id FROM active_series.testbed WHERE project_id = %s", (project,)
    ).fetchone()
    benchmarks = conn.execute(
        "SELECT id FROM active_series.benchmark WHERE project_id = %s", (project,)
    ).fetchall()
    (measure,) = conn.execute(
        "SELECT id FROM active_series.measure WHERE project_id = %s", (project,)
    ).fetchone()
    other = one(
        conn, "INSERT INTO active_series.benchmark (project_id, name) VALUES (%s, 'emit')", project
    )

    def report(created: datetime, *benchmark_ids: int) -> None:
        rid = one(
            conn,
            "INSERT INTO active_series.report (project_id, testbed_id, start_time, end_time,"
            " created) VALUES (%s, %s, %s, %s, %s)",
            project,
            testbed,
            created,
            created,
            created,
        )
        for iteration, b in enumerate(benchmark_ids):
            rb = one(
                conn,
                "INSERT INTO active_series.report_benchmark (report_id, benchmark_id, iteration)"
                " VALUES (%s, %s, %s)",
                rid,
                b,
                iteration,
            )
            conn.execute(
                "INSERT INTO active_series.metric (report_benchmark_id, measure_id, value)"
                " VALUES (%s, %s, 2.0)",
                (rb, measure),
            )

    (parse,) = benchmarks[0]
    report(t(2025, 12, 2), other)  # before the new end: stays in [Nov 5, Dec 5)
    report(t(2025, 12, 29), parse, other)
    report(t(2026, 3, 3), other)
    report(t(2026, 3, 7), parse)
    report(t(2026, 3, 8), other)
    assert periods(conn, org) == [
        (t(2025, 12, 1), t(2026, 1, 1), 2),
        (t(2026, 3, 1), t(2026, 4, 1), 2),
    ]

    conn.execute(
        "SELECT active_series.set_billing_period(%s, %s, %s)", (org, t(2025, 11, 5), t(2025, 12, 5))
    )

    assert periods(conn, org) == [
        (t(2025, 11, 5), t(2025, 12, 5), 1),
        (t(2025, 12, 5), t(2026, 1, 5), 2),
        (t(2026, 2, 5), t(2026, 3, 5), 1),
        (t(2026, 3, 5), t(2026, 4, 5), 2),
    ]
    rows = conn.execute(
        "SELECT benchmark_id, first_seen, last_seen FROM active_series.period_series(%s, %s)"
        " ORDER BY benchmark_id",
        (org, t(2026, 3, 5)),
    ).fetchall()
    assert rows == [(parse, t(2026, 3, 7), t(2026, 3, 7)), (other, t(2026, 3, 8), t(2026, 3, 8))]
    rows = conn.execute(
        "SELECT benchmark_id, first_seen, last_seen FROM active_series.period_series(%s, %s)"
        " ORDER BY benchmark_id",
        (org, t(2025, 12, 5)),
    ).fetchall()
    assert rows == [
        (parse, t(2025, 12, 20), t(2025, 12, 29)),
        (other, t(2025, 12, 29), t(2025, 12, 29)),
    ]
    # last_seen is the series' own, untouched
    count = "SELECT active_series.count_active(%s, %s, %s)"
    assert conn.execute(count, (org, t(2026, 3, 7), t(2026, 3, 8))).fetchone() == (1,)
    assert conn.execute(count, (org, t(2026, 3, 8), t(2026, 3, 9))).fetchone() == (1,)
    # new activity lands on the schedule, next to the re-bucketed periods
    report(t(2026, 1, 20), parse)
    assert periods(conn, org)[2] == (t(2026, 1, 5), t(2026, 2, 5), 1)
    assert conn.execute("SELECT * FROM active_series.verify()").fetchall() == []


def test_a_later_call_wins_for_its_own_range(conn):
    org = org_with_report(conn, t(2026, 2, 10))
    set_period = "SELECT active_series.set_billing_period(%s, %s, %s)"
    conn.execute(set_period, (org, t(2026, 1, 1), t(2026, 1, 8)))  # weekly
    assert [p[:2] for p in periods(conn, org)] == [
        (t(2026, 1, 1), t(2026, 1, 8)),
        (t(2026, 2, 5), t(2026, 2, 12)),
    ]
    conn.execute(set_period, (org, t(2026, 2, 3), t(2026, 3, 3)))  # then monthly from Feb 3
    assert periods(conn, org) == [
        (t(2026, 1, 1), t(2026, 1, 8), 0),
        (t(2026, 2, 3), t(2026, 3, 3), 1),
    ]
    conn.execute(set_period, (org, t(2025, 12, 1), t(2026, 1, 1)))  # then monthly from Dec 1
    assert periods(conn, org) == [
        (t(2025, 12, 1), t(2026, 1, 1), 0),
        (t(2026, 2, 1), t(2026, 3, 1), 1),
    ]
    assert conn.execute("SELECT * FROM active_series.verify()").fetchall() == []


def test_nothing_recorded_after_the_end_leaves_the_earlier_periods_alone(conn):
    org = org_with_report(conn, t(2026, 1, 20))
    conn.execute(
        "SELECT active_series.set_billing_period(%s, %s, %s)", (org, t(2026, 2, 5), t(2026, 3, 5))
    )
    assert periods(conn, org) == [
        (t(2026, 1, 1), t(2026, 2, 1), 1),
        (t(2026, 2, 5), t(2026, 3, 5), 0),
    ]
