"""Tracking is written in the ingest transaction: rolled back with it, committed with it."""

from __future__ import annotations

import psycopg
import pytest
from oracle import (
    assert_matches_oracle,
    ingest,
    insert_metrics,
    make_org,
    make_report,
    make_report_benchmark,
    record_now,
    snapshot,
)


def test_a_rolled_back_ingest_leaves_every_billing_table_unchanged(conn, connect):
    org = make_org(conn)
    ingest(conn, org, org.testbeds[0], [(org.benchmarks[0], org.measures[0])])
    before = snapshot(conn)

    ingester = connect(autocommit=False)
    ingest(ingester, org, org.testbeds[1], [(b, m) for b in org.benchmarks for m in org.measures])
    record_now(ingester)
    during = snapshot(ingester)
    assert during["_shape"] != before["_shape"]
    assert during["_shape_seen"] != before["_shape_seen"]
    assert during["_testbed_period"] != before["_testbed_period"]
    assert during["_period_usage"] != before["_period_usage"]
    assert during["_outbox"] != before["_outbox"]
    ingester.rollback()

    assert snapshot(conn) == before
    assert_matches_oracle(conn, org.id)


def test_a_rolled_back_first_ingest_of_a_new_organization_leaves_no_period(conn, connect):
    before = snapshot(conn)
    ingester = connect(autocommit=False)
    org = make_org(ingester)
    ingest(ingester, org, org.testbeds[0], [(org.benchmarks[0], org.measures[0])])
    record_now(ingester)
    assert snapshot(ingester)["_period"] != before["_period"]
    ingester.rollback()
    assert snapshot(conn) == before


def test_a_statement_failing_on_a_missing_measure_mid_transaction_leaves_nothing(conn, connect):
    org = make_org(conn)
    ingest(conn, org, org.testbeds[0], [(org.benchmarks[0], org.measures[0])])
    before = snapshot(conn)

    ingester = connect(autocommit=False)
    report = make_report(ingester, org.project_id, org.testbeds[1])
    rb = make_report_benchmark(ingester, report, org.benchmarks[1])
    insert_metrics(ingester, [(rb, org.measures[1], 2.0)])  # succeeds: the transaction tracked it
    record_now(ingester)
    assert snapshot(ingester)["_testbed_period"] != before["_testbed_period"]
    missing = org.measures[-1] + 1_000_000
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        insert_metrics(ingester, [(rb, org.measures[2], 1.0), (rb, missing, 1.0)])
    ingester.rollback()

    assert snapshot(conn) == before
    assert_matches_oracle(conn, org.id)


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity", None])
def test_a_multi_row_insert_with_one_non_finite_value_writes_nothing(conn, bad):
    org = make_org(conn)
    ingest(conn, org, org.testbeds[0], [(org.benchmarks[0], org.measures[0])])
    report = make_report(conn, org.project_id, org.testbeds[1])
    rb = make_report_benchmark(conn, report, org.benchmarks[1])
    before = snapshot(conn)
    metrics_before = conn.execute("SELECT count(*) FROM active_series.metric").fetchone()

    with pytest.raises(psycopg.Error):
        conn.execute(
            "INSERT INTO active_series.metric (report_benchmark_id, measure_id, value)"
            " VALUES (%s, %s, 1.0), (%s, %s, %s::double precision), (%s, %s, 3.0)",
            (rb, org.measures[0], rb, org.measures[1], bad, rb, org.measures[2]),
        )

    assert snapshot(conn) == before
    assert conn.execute("SELECT count(*) FROM active_series.metric").fetchone() == metrics_before
    assert_matches_oracle(conn, org.id)


def test_only_the_committed_part_of_a_transaction_with_a_rolled_back_savepoint_counts(
    conn, connect
):
    org = make_org(conn, testbeds=3)
    kept = [(org.benchmarks[0], org.measures[0]), (org.benchmarks[0], org.measures[1])]
    dropped = [(org.benchmarks[1], m) for m in org.measures]

    ingester = connect(autocommit=False)
    ingest(ingester, org, org.testbeds[0], kept)
    ingester.execute("SAVEPOINT s")
    ingest(ingester, org, org.testbeds[1], dropped)
    ingester.execute("ROLLBACK TO SAVEPOINT s")
    ingester.commit()

    series = conn.execute(
        "SELECT testbed_id, benchmark_id, measure_id FROM active_series.period_series(%s)",
        (org.id,),
    ).fetchall()
    assert sorted(series) == sorted((org.testbeds[0], b, m) for b, m in kept)
    assert conn.execute("SELECT active_series.period_usage(%s)", (org.id,)).fetchone() == (2,)
    assert_matches_oracle(conn, org.id)


def test_a_series_rolled_back_to_a_savepoint_counts_when_ingested_again_after_it(conn, connect):
    org = make_org(conn)
    series = [(org.benchmarks[0], org.measures[0]), (org.benchmarks[1], org.measures[1])]

    ingester = connect(autocommit=False)
    ingester.execute("SAVEPOINT s")
    ingest(ingester, org, org.testbeds[0], series)
    ingester.execute("ROLLBACK TO SAVEPOINT s")
    ingest(ingester, org, org.testbeds[0], series)
    ingester.commit()

    assert conn.execute("SELECT active_series.period_usage(%s)", (org.id,)).fetchone() == (2,)
    outbox = conn.execute(
        "SELECT count(*) FROM active_series._outbox WHERE organization_id = %s", (org.id,)
    ).fetchone()
    assert outbox is not None and outbox[0] >= 1
    assert_matches_oracle(conn, org.id)


def test_statements_after_an_early_recording_are_recorded_at_commit(conn, connect):
    org = make_org(conn)
    first = [(org.benchmarks[0], org.measures[0])]
    later = [(org.benchmarks[1], org.measures[1])]

    ingester = connect(autocommit=False)
    ingest(ingester, org, org.testbeds[0], first)
    ingester.execute("SET CONSTRAINTS active_series.pending_flush IMMEDIATE")
    ingester.execute("SET CONSTRAINTS active_series.pending_flush DEFERRED")
    ingest(ingester, org, org.testbeds[1], later)
    ingester.commit()

    assert conn.execute("SELECT active_series.period_usage(%s)", (org.id,)).fetchone() == (2,)
    assert conn.execute("SELECT count(*) FROM active_series._pending").fetchone() == (0,)
    assert_matches_oracle(conn, org.id)


def test_a_transactions_ingest_statements_share_one_pending_row(conn, connect):
    # The first statement inserts the transaction's _pending row, the later ones append
    # their pairs to it; a statement rolled back to a savepoint takes its pairs along.
    org = make_org(conn)
    b0, b1 = org.benchmarks[:2]
    m0, m1, m2 = org.measures[:3]
    ingester = connect(autocommit=False)
    report = make_report(ingester, org.project_id, org.testbeds[0])
    rb0 = make_report_benchmark(ingester, report, b0)
    rb1 = make_report_benchmark(ingester, report, b1)
    insert_metrics(ingester, [(rb0, m0, 1.0)])
    insert_metrics(ingester, [(rb1, m1, 1.0), (rb0, m0, 2.0)])
    ingester.execute("SAVEPOINT s")
    insert_metrics(ingester, [(rb1, m2, 1.0)])
    ingester.execute("ROLLBACK TO SAVEPOINT s")

    rows = ingester.execute(
        "SELECT report_benchmark_ids, measure_ids FROM active_series._pending"
        " WHERE txid = txid_current()"
    ).fetchall()
    assert rows == [([rb0, rb1, rb0], [m0, m1, m0])]
    ingester.commit()

    assert conn.execute("SELECT active_series.period_usage(%s)", (org.id,)).fetchone() == (2,)
    assert conn.execute("SELECT count(*) FROM active_series._pending").fetchone() == (0,)
    assert_matches_oracle(conn, org.id)


def test_one_outbox_row_per_committed_count_change_and_none_for_a_rollback(conn, connect):
    """The relay's change record (ingest sends no NOTIFY: the worker watches the outbox)."""
    acme = make_org(conn, "acme")

    def rows() -> list[tuple[int, str]]:
        return conn.execute(
            "SELECT organization_id, reason FROM active_series._outbox ORDER BY id"
        ).fetchall()

    ingester = connect(autocommit=False)
    ingest(ingester, acme, acme.testbeds[0], [(acme.benchmarks[0], acme.measures[0])])
    ingester.rollback()
    assert rows() == []
    # committed, two statements adding new series in one transaction: one row
    ingest(ingester, acme, acme.testbeds[0], [(acme.benchmarks[0], acme.measures[0])])
    ingest(ingester, acme, acme.testbeds[1], [(acme.benchmarks[1], acme.measures[1])])
    ingester.commit()
    assert rows() == [(acme.id, "ingest")]
    # committed, but no series is new in the period: the count did not change, no row
    ingest(ingester, acme, acme.testbeds[0], [(acme.benchmarks[0], acme.measures[0])])
    ingester.commit()
    assert rows() == [(acme.id, "ingest")]


def test_a_committed_ingest_appends_an_outbox_row_and_a_rolled_back_one_does_not(conn, connect):
    org = make_org(conn)

    def outbox() -> int:
        row = conn.execute(
            "SELECT count(*) FROM active_series._outbox WHERE organization_id = %s", (org.id,)
        ).fetchone()
        assert row is not None
        return row[0]

    ingester = connect(autocommit=False)
    ingest(ingester, org, org.testbeds[0], [(org.benchmarks[0], org.measures[0])])
    ingester.rollback()
    assert outbox() == 0
    ingest(ingester, org, org.testbeds[0], [(org.benchmarks[0], org.measures[0])])
    ingester.commit()
    assert outbox() >= 1
