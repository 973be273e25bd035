"""Tracking writes what changed, never a row per series: the shapes real suites send.

A continuous-benchmarking suite reports many benchmarks with a few measures each, and the
same set of series report after report. These tests count the row versions each kind of
report writes into the history and the counts (every row's ctid and xmin, before and after):
the same set again, the first report of a new billing period, a few series more, and a new
testbed with a set another testbed already reported. Each bound would be broken by a design
that writes per series or per benchmark (200 benchmarks × 3 measures here).
"""

from __future__ import annotations

import datetime as dt

import psycopg
from oracle import (
    HISTORY_TABLES,
    Org,
    allow_explicit_created,
    assert_matches_oracle,
    ingest,
    make_org,
    one,
    row_versions,
)

BENCHMARKS, MEASURES = 200, 3


def suite(conn: psycopg.Connection) -> tuple[Org, list[tuple[int, int]]]:
    org = make_org(conn, testbeds=3, benchmarks=0, measures=0)
    for table, n in (("benchmark", BENCHMARKS + 5), ("measure", MEASURES)):
        conn.execute(
            f"INSERT INTO active_series.{table} (project_id, name)"
            " SELECT %s, 'x' || i FROM generate_series(1, %s) i",
            (org.project_id, n),
        )
    org.benchmarks = [
        r[0]
        for r in conn.execute(
            "SELECT id FROM active_series.benchmark WHERE project_id = %s ORDER BY id",
            (org.project_id,),
        )
    ]
    org.measures = [
        r[0]
        for r in conn.execute(
            "SELECT id FROM active_series.measure WHERE project_id = %s ORDER BY id",
            (org.project_id,),
        )
    ]
    series = [(b, m) for b in org.benchmarks[:BENCHMARKS] for m in org.measures]
    return org, series


def versions(conn: psycopg.Connection) -> dict[str, dict]:
    tables = (*HISTORY_TABLES, "_outbox")
    return {t: row_versions(conn, t) for t in tables}


def written(before: dict[str, dict], after: dict[str, dict]) -> dict[str, int]:
    """Per table, how many row versions are new (inserted or updated)."""
    return {
        t: sum(1 for key, v in after[t].items() if before[t].get(key) != v)
        for t in after
        if any(before[t].get(key) != v for key, v in after[t].items())
    }


def test_a_report_of_the_same_set_of_series_writes_one_row(conn):
    org, series = suite(conn)
    ingest(conn, org, org.testbeds[0], series)
    before = versions(conn)

    ingest(conn, org, org.testbeds[0], series)

    assert written(before, versions(conn)) == {"_shape_seen": 1}
    assert one(conn, "SELECT active_series.period_usage(%s)", (org.id,)) == len(series)
    assert_matches_oracle(conn, org.id)


def test_the_first_report_of_a_billing_period_writes_a_row_per_table(conn):
    org, series = suite(conn)
    allow_explicit_created(conn)
    now = one(conn, "SELECT now()")
    last_month = (now.replace(day=1) - dt.timedelta(days=1)).replace(day=15)
    ingest(conn, org, org.testbeds[0], series, last_month)
    before = versions(conn)

    ingest(conn, org, org.testbeds[0], series)

    assert written(before, versions(conn)) == {
        "_period": 1,
        "_testbed_period": 1,
        "_shape_seen": 1,
        "_period_usage": 1,
        "_outbox": 1,
    }
    assert one(conn, "SELECT active_series.period_usage(%s)", (org.id,)) == len(series)
    assert_matches_oracle(conn, org.id)


def test_a_report_adding_series_writes_a_row_per_table_whatever_their_number(conn):
    org, series = suite(conn)
    ingest(conn, org, org.testbeds[0], series)
    grown = series + [(b, m) for b in org.benchmarks[BENCHMARKS:] for m in org.measures]
    before = versions(conn)

    ingest(conn, org, org.testbeds[0], grown)

    # the grown set once (it is also the testbed's set for the period), its row, the testbed's
    # set for the period, the count, the relay's outbox row
    assert written(before, versions(conn)) == {
        "_shape": 1,
        "_shape_seen": 1,
        "_testbed_period": 1,
        "_period_usage": 1,
        "_outbox": 1,
    }
    assert one(conn, "SELECT active_series.period_usage(%s)", (org.id,)) == len(grown)
    assert_matches_oracle(conn, org.id)


def test_a_new_testbed_reporting_a_known_set_stores_no_new_set(conn):
    org, series = suite(conn)
    ingest(conn, org, org.testbeds[0], series)
    before = versions(conn)

    ingest(conn, org, org.testbeds[1], series)

    assert written(before, versions(conn)) == {
        "_testbed_period": 1,
        "_shape_seen": 1,
        "_period_usage": 1,
        "_outbox": 1,
    }
    assert one(conn, "SELECT active_series.period_usage(%s)", (org.id,)) == 2 * len(series)
    assert_matches_oracle(conn, org.id)


def test_new_testbeds_reporting_a_known_set_in_one_transaction_write_one_outbox_row(conn):
    # (several testbeds' first reports of a stored set in one commit: one statement writes
    # their histories, the counts and the outbox row of each organization and period)
    org, series = suite(conn)
    ingest(conn, org, org.testbeds[0], series)
    before = versions(conn)

    with conn.transaction():
        ingest(conn, org, org.testbeds[1], series)
        ingest(conn, org, org.testbeds[2], series)

    assert written(before, versions(conn)) == {
        "_testbed_period": 2,
        "_shape_seen": 2,
        "_period_usage": 1,
        "_outbox": 1,
    }
    assert one(conn, "SELECT active_series.period_usage(%s)", (org.id,)) == 3 * len(series)
    assert_matches_oracle(conn, org.id)


def test_a_shrunk_report_writes_its_own_set_and_leaves_the_count(conn):
    org, series = suite(conn)
    ingest(conn, org, org.testbeds[0], series)
    before = versions(conn)

    ingest(conn, org, org.testbeds[0], series[: len(series) // 2])

    assert written(before, versions(conn)) == {"_shape": 1, "_shape_seen": 1}
    assert one(conn, "SELECT active_series.period_usage(%s)", (org.id,)) == len(series)
    assert_matches_oracle(conn, org.id)
