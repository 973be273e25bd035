"""Threshold alerts and the optional series cap, on real concurrent ingest.

An alert is one durable row per (organization, period, threshold), written by the ingest
commit that brings the period's count to the threshold or above (no NOTIFY: readers poll the
rows by id). The cap refuses a commit that would raise a period's count above it
(SQLSTATE AS001), with nothing written.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from oracle import (
    BILLING_TABLES,
    Org,
    assert_matches_oracle,
    ingest,
    make_entities,
    make_org,
    make_project,
    one,
    snapshot,
    utc,
)

CAP_EXCEEDED = "AS001"

ALERTS = (
    "SELECT threshold, series_count, source FROM active_series.alerts"
    " WHERE organization_id = %s ORDER BY threshold"
)
USAGE = "SELECT active_series.period_usage(%s)"


def project_of(conn: psycopg.Connection[Any], org_id: int, name: str, measures: int) -> Org:
    """Another project of the organization, with one testbed, one benchmark and measures."""
    project = make_project(conn, org_id, name, "private")
    return Org(
        org_id,
        project,
        make_entities(conn, "testbed", project, 1),
        make_entities(conn, "benchmark", project, 1),
        make_entities(conn, "measure", project, measures),
    )


def add_series(
    conn: psycopg.Connection[Any],
    org: Org,
    measures: list[int],
    before_commit: Callable[[], Any] | None = None,
) -> None:
    """One transaction: a report with a metric of each measure (new series, each one);
    ``before_commit`` runs once the statements ran (the counts change at commit)."""
    with conn.transaction():
        ingest(conn, org, org.testbeds[0], [(org.benchmarks[0], m) for m in measures])
        if before_commit is not None:
            before_commit()


def concurrently(n: int, body: Callable[[int, threading.Barrier], None]) -> list[BaseException]:
    """Run ``body(i, barrier)`` in n threads; the errors they raised."""
    barrier = threading.Barrier(n, timeout=120)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            body(i, barrier)
        except BaseException as exc:  # noqa: BLE001 - collected for the test to judge
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_an_alert_is_written_once_when_the_count_reaches_its_threshold(conn):
    org = make_org(conn, "alerted", testbeds=1, benchmarks=1, measures=8)
    conn.execute("SELECT active_series.set_alert(%s, 3)", (org.id,))
    conn.execute("SELECT active_series.set_alert(%s, 7)", (org.id,))
    add_series(conn, org, org.measures[:2])
    assert conn.execute(ALERTS, (org.id,)).fetchall() == []
    add_series(conn, org, org.measures[:3])  # 2 -> 3: reaches 3
    assert conn.execute(ALERTS, (org.id,)).fetchall() == [(3, 3, "set_alert")]
    add_series(conn, org, org.measures[:5])  # 3 -> 5: nothing new
    add_series(conn, org, org.measures[:3])  # no new series
    add_series(conn, org, org.measures[:8])  # 5 -> 8: passes 7
    assert conn.execute(ALERTS, (org.id,)).fetchall() == [(3, 3, "set_alert"), (7, 8, "set_alert")]
    # a rolled-back ingest leaves no alert
    other = make_org(conn, "rolled back", testbeds=1, benchmarks=1, measures=2)
    conn.execute("SELECT active_series.set_alert(%s, 1)", (other.id,))
    with pytest.raises(psycopg.errors.RaiseException), conn.transaction():
        ingest(conn, other, other.testbeds[0], [(other.benchmarks[0], other.measures[0])])
        conn.execute("SET CONSTRAINTS active_series.pending_flush IMMEDIATE")
        assert conn.execute(ALERTS, (other.id,)).fetchall() == [(1, 1, "set_alert")]
        conn.execute("DO $$ BEGIN RAISE EXCEPTION 'roll back'; END $$")
    assert conn.execute(ALERTS, (other.id,)).fetchall() == []


def test_price_tier_bounds_are_alerts_unless_silenced(conn):
    org = make_org(conn, "tiered", testbeds=1, benchmarks=1, measures=12)
    conn.execute(
        "SELECT active_series._store_price(%s, %s::jsonb)",
        (
            org.id,
            '{"id": "price_1", "currency": "usd", "billing_scheme": "tiered",'
            ' "tiers_mode": "graduated", "tiers": [{"up_to": 2, "flat_amount": 900},'
            ' {"up_to": 5, "unit_amount": 100}, {"up_to": 10, "unit_amount": 50},'
            ' {"up_to": null, "unit_amount": 10}]}',
        ),
    )
    conn.execute("SELECT active_series.set_alert(%s, 5, false)", (org.id,))
    add_series(conn, org, org.measures[:6])
    assert conn.execute(ALERTS, (org.id,)).fetchall() == [(2, 6, "price_tier")]
    assert one(conn, "SELECT next_alert FROM active_series.usage_summary(%s)", (org.id,)) == 10
    add_series(conn, org, org.measures[:12])
    assert conn.execute(ALERTS, (org.id,)).fetchall() == [
        (2, 6, "price_tier"),
        (10, 12, "price_tier"),
    ]


def test_alerts_are_written_exactly_once_under_concurrent_ingest(conn, connect):
    """Six connections commit new series of one organization at once, each in its own
    project (so no two commits share a count row); every threshold from 1 to the final
    count gets exactly one alert, none above it, and one notification per alerting commit."""
    threads, rounds, per_commit = 6, 5, 2
    total = threads * rounds * per_commit
    org_id = make_org(conn, "busy", testbeds=1, benchmarks=1, measures=1).id
    projects = [project_of(conn, org_id, f"p{i}", rounds * per_commit) for i in range(threads)]
    for threshold in range(1, total + 6):
        conn.execute("SELECT active_series.set_alert(%s, %s)", (org_id, threshold))

    def body(i: int, barrier: threading.Barrier) -> None:
        c = connect()
        project = projects[i]
        for r in range(rounds):
            measures = project.measures[r * per_commit : (r + 1) * per_commit]
            add_series(c, project, measures, barrier.wait)  # all commit at once

    assert concurrently(threads, body) == []
    assert one(conn, USAGE, (org_id,)) == total
    alerts = conn.execute(ALERTS, (org_id,)).fetchall()
    assert [a[0] for a in alerts] == list(range(1, total + 1))
    assert all(a[0] <= a[1] <= total for a in alerts)
    assert_matches_oracle(conn, org_id)


def test_the_cap_allows_up_to_the_cap_and_refuses_beyond_it_with_nothing_written(conn):
    org = make_org(conn, "capped", testbeds=1, benchmarks=1, measures=6)
    conn.execute("SELECT active_series.set_series_cap(%s, 4)", (org.id,))
    add_series(conn, org, org.measures[:3])
    add_series(conn, org, org.measures[:4])  # exactly the cap
    assert one(conn, USAGE, (org.id,)) == 4
    add_series(conn, org, org.measures[:4])  # no new series: fine at the cap

    tables = BILLING_TABLES + ("report", "report_benchmark", "metric", "_alert", "_period_watch")
    before = snapshot(conn, tables)
    with pytest.raises(psycopg.Error) as err:
        add_series(conn, org, org.measures[:5])
    assert err.value.sqlstate == CAP_EXCEEDED
    message = str(err.value)
    assert f"organization {org.id} is capped at 4 active series" in message
    assert "would make 5" in message
    assert err.value.diag.message_detail == (
        f"organization_id={org.id} series_cap=4 series_count=5"
    )
    assert snapshot(conn, tables) == before

    # raised, the cap lets the series in; removed, there is none
    conn.execute("SELECT active_series.set_series_cap(%s, 5)", (org.id,))
    add_series(conn, org, org.measures[:5])
    conn.execute("SELECT active_series.set_series_cap(%s, NULL)", (org.id,))
    add_series(conn, org, org.measures[:6])
    assert one(conn, USAGE, (org.id,)) == 6
    assert_matches_oracle(conn, org.id)


def test_the_cap_holds_exactly_under_concurrent_ingest(conn, connect):
    """Eight connections each try to commit two new series at once, in eight projects of
    an organization with one series capped at eleven: exactly five commits get in, the
    others fail with AS001 and leave nothing behind."""
    threads, cap = 8, 11
    first = make_org(conn, "capped busy", testbeds=1, benchmarks=1, measures=1)
    org_id = first.id
    add_series(conn, first, first.measures)  # the period exists: commits do not wait for it
    projects = [project_of(conn, org_id, f"p{i}", 2) for i in range(threads)]
    conn.execute("SELECT active_series.set_series_cap(%s, %s)", (org_id, cap))
    refused: list[str] = []

    def body(i: int, barrier: threading.Barrier) -> None:
        c = connect()
        try:
            add_series(c, projects[i], projects[i].measures, barrier.wait)  # all commit at once
        except psycopg.Error as exc:
            if exc.sqlstate != CAP_EXCEEDED:
                raise
            refused.append(str(exc))

    assert concurrently(threads, body) == []
    assert len(refused) == threads - 5
    assert one(conn, USAGE, (org_id,)) == cap
    assert (
        one(
            conn,
            "SELECT count(*) FROM active_series.report AS r"
            " JOIN active_series.project AS p ON p.id = r.project_id"
            " WHERE p.organization_id = %s",
            (org_id,),
        )
        == 5 + 1
    )
    assert_matches_oracle(conn, org_id)


def test_a_hard_delete_under_a_lowered_cap_succeeds_and_writes_no_alert(conn):
    """Hard-deleting a benchmark re-records the remaining series of the testbeds whose sets
    held it. Counts only fall: the delete succeeds although the organization is above a cap
    lowered since, and writes no alert, though the re-recording passes through every count
    from 0 to the remaining one."""
    org = make_org(conn, "lowered", testbeds=1, benchmarks=2, measures=3)
    kept, deleted = org.benchmarks
    with conn.transaction():
        ingest(
            conn,
            org,
            org.testbeds[0],
            [(kept, m) for m in org.measures] + [(deleted, org.measures[0])],
        )
    assert one(conn, USAGE, (org.id,)) == 4
    conn.execute("SELECT active_series.set_series_cap(%s, 2)", (org.id,))
    conn.execute("SELECT active_series.set_alert(%s, 3)", (org.id,))
    assert conn.execute(ALERTS, (org.id,)).fetchall() == []

    conn.execute("DELETE FROM active_series.benchmark WHERE id = %s", (deleted,))
    assert one(conn, USAGE, (org.id,)) == 3
    assert conn.execute(ALERTS, (org.id,)).fetchall() == []
    assert_matches_oracle(conn, org.id)
    # the cap still refuses what ingest would add
    with pytest.raises(psycopg.Error) as err, conn.transaction():
        ingest(conn, org, org.testbeds[0], [(kept, org.measures[0])])
        other = make_project(conn, org.id, "more", "private")
        more = Org(
            org.id,
            other,
            make_entities(conn, "testbed", other, 1),
            make_entities(conn, "benchmark", other, 1),
            make_entities(conn, "measure", other, 1),
        )
        ingest(conn, more, more.testbeds[0], [(more.benchmarks[0], more.measures[0])])
    assert err.value.sqlstate == CAP_EXCEEDED


def test_rebucketing_neither_refuses_nor_alerts(conn):
    """set_billing_period merging two periods may raise a count above the cap and past a
    threshold: it is an administrative re-bucketing of recorded activity, so it succeeds
    and writes no alert; the next ingest commit of the period is refused or alerts."""
    org = make_org(conn, "merged", testbeds=1, benchmarks=1, measures=6)
    conn.execute("SET active_series.allow_explicit_created = on")
    for day, measures in ((3, org.measures[:2]), (20, org.measures[2:4])):
        with conn.transaction():
            ingest(
                conn,
                org,
                org.testbeds[0],
                [(org.benchmarks[0], m) for m in measures],
                created=utc(2024, 3, day),
            )
        conn.execute(
            "SELECT active_series.set_billing_period(%s, %s, %s)",
            (org.id, utc(2024, 3, 1), utc(2024, 3, 10)),
        )
    conn.execute("SELECT active_series.set_series_cap(%s, 3)", (org.id,))
    conn.execute("SELECT active_series.set_alert(%s, 3)", (org.id,))
    conn.execute(
        "SELECT active_series.set_billing_period(%s, %s, %s)",
        (org.id, utc(2024, 3, 1), utc(2024, 4, 1)),
    )
    assert one(conn, "SELECT active_series.period_usage(%s, %s)", (org.id, utc(2024, 3, 1))) == 4
    assert conn.execute(ALERTS, (org.id,)).fetchall() == []
    with pytest.raises(psycopg.Error) as err, conn.transaction():
        ingest(
            conn,
            org,
            org.testbeds[0],
            [(org.benchmarks[0], org.measures[4])],
            created=utc(2024, 3, 25),
        )
    assert err.value.sqlstate == CAP_EXCEEDED
    conn.execute("SELECT active_series.set_series_cap(%s, NULL)", (org.id,))
    with conn.transaction():
        ingest(
            conn,
            org,
            org.testbeds[0],
            [(org.benchmarks[0], org.measures[4])],
            created=utc(2024, 3, 25),
        )
    assert conn.execute(ALERTS, (org.id,)).fetchall() == [(3, 5, "set_alert")]


def test_under_repeatable_read_the_later_commit_fails_to_serialize_instead_of_passing_the_cap(
    conn, connect
):
    """Two REPEATABLE READ transactions each add a series (in two projects) to an
    organization one series below its cap: the first commits; the second cannot see it, so
    its check fails with a serialization error (the client retries) rather than count
    without it. Retried, it is refused by the cap."""
    first = make_org(conn, "snapshots", testbeds=1, benchmarks=1, measures=1)
    add_series(conn, first, first.measures)
    one_more, another = (project_of(conn, first.id, f"p{i}", 1) for i in range(2))
    conn.execute("SELECT active_series.set_series_cap(%s, 2)", (first.id,))
    conn.execute("SELECT active_series.set_alert(%s, 2)", (first.id,))
    sessions = []
    for project in (one_more, another):
        c = connect(autocommit=False)
        c.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        ingest(c, project, project.testbeds[0], [(project.benchmarks[0], project.measures[0])])
        sessions.append(c)
    sessions[0].commit()
    with pytest.raises(psycopg.errors.SerializationFailure):
        sessions[1].commit()
    assert one(conn, USAGE, (first.id,)) == 2
    assert conn.execute(ALERTS, (first.id,)).fetchall() == [(2, 2, "set_alert")]
    with pytest.raises(psycopg.Error) as err:
        add_series(conn, another, another.measures)
    assert err.value.sqlstate == CAP_EXCEEDED
    assert_matches_oracle(conn, first.id)


WATCHED = (
    "SELECT coalesce(bool_and(p.watched), false),"
    " coalesce(bool_and(p.watched = active_series._watched(p.organization_id)), true)"
    " FROM active_series._period AS p WHERE p.organization_id = %s"
)


def test_a_cap_alert_or_tier_set_after_the_period_began_applies_to_its_next_first_report(conn):
    """The ingest commit reads whether the organization watches its count with the period
    (_period.watched): a cap, an alert threshold or a bounded price tier set after the
    period was recorded must reach that flag, for one metric and for several of a testbed."""
    org = make_org(conn, "set late", testbeds=4, benchmarks=1, measures=3)
    one_metric = [(org.benchmarks[0], org.measures[0])]
    two_metrics = [(org.benchmarks[0], m) for m in org.measures[1:3]]
    with conn.transaction():
        ingest(conn, org, org.testbeds[0], one_metric)
    assert conn.execute(WATCHED, (org.id,)).fetchone() == (False, True)

    conn.execute("SELECT active_series.set_series_cap(%s, 1)", (org.id,))
    assert conn.execute(WATCHED, (org.id,)).fetchone() == (True, True)
    for testbed, metrics in ((org.testbeds[1], one_metric), (org.testbeds[2], two_metrics)):
        with pytest.raises(psycopg.Error) as err, conn.transaction():
            ingest(conn, org, testbed, metrics)
        assert err.value.sqlstate == CAP_EXCEEDED
    assert one(conn, USAGE, (org.id,)) == 1

    conn.execute("SELECT active_series.set_series_cap(%s, NULL)", (org.id,))
    assert conn.execute(WATCHED, (org.id,)).fetchone() == (False, True)
    conn.execute("SELECT active_series.set_alert(%s, 2)", (org.id,))
    assert conn.execute(WATCHED, (org.id,)).fetchone() == (True, True)
    with conn.transaction():
        ingest(conn, org, org.testbeds[1], one_metric)
    assert conn.execute(ALERTS, (org.id,)).fetchall() == [(2, 2, "set_alert")]
    conn.execute("SELECT active_series.set_alert(%s, 2, false)", (org.id,))
    assert conn.execute(WATCHED, (org.id,)).fetchone() == (False, True)

    conn.execute(
        "SELECT active_series._store_price(%s, %s::jsonb)",
        (
            org.id,
            '{"id": "price_1", "currency": "usd", "billing_scheme": "tiered",'
            ' "tiers_mode": "graduated", "tiers": [{"up_to": 3, "flat_amount": 900},'
            ' {"up_to": null, "unit_amount": 10}]}',
        ),
    )
    assert conn.execute(WATCHED, (org.id,)).fetchone() == (True, True)
    with conn.transaction():
        ingest(conn, org, org.testbeds[2], two_metrics)
    assert conn.execute(ALERTS, (org.id,)).fetchall() == [
        (2, 2, "set_alert"),
        (3, 4, "price_tier"),
    ]
    conn.execute("DELETE FROM active_series._price_tier WHERE organization_id = %s", (org.id,))
    assert conn.execute(WATCHED, (org.id,)).fetchone() == (False, True)
    assert_matches_oracle(conn, org.id)
