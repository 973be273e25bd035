"""Rollover and corrections: a new period is posted as soon as it changes, while the ended
one is still in its grace; an ended period takes corrections until its invoice grace is
over; after that a difference is recorded in billing_drift, never posted."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import psycopg
from oracle import allow_explicit_created, ingest, make_org, one
from relay_harness import (
    Emulator,
    WorkerProcess,
    assert_increasing_timestamps,
    bill,
    billing_periods,
    quiescent,
    short_periods,
    wait_until,
    workers,
)


def current(conn: psycopg.Connection[Any], org: int) -> tuple[dt.datetime, dt.datetime, Any]:
    row = conn.execute(
        "SELECT period_start, period_end, clock_timestamp() FROM active_series.current_period(%s)",
        (org,),
    ).fetchone()
    assert row is not None
    return row


def early_in_a_period(conn: psycopg.Connection[Any], org: int, room: float) -> tuple[Any, Any]:
    """Wait until the current period has more than ``room`` seconds left; its bounds."""
    while True:
        start, end, now = current(conn, org)
        if (end - now).total_seconds() > room:
            return start, end
        time.sleep(0.1)


def usage(conn: psycopg.Connection[Any], org: int, start: dt.datetime) -> int:
    return int(one(conn, "SELECT active_series.period_usage(%s, %s)", (org, start)))


def period_row(conn: psycopg.Connection[Any], org: int, start: dt.datetime) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT closed_at, finalized_at, billed_value"
        " FROM active_series._period"
        " NATURAL LEFT JOIN active_series._relay_period"
        " WHERE organization_id = %s AND period_start = %s",
        (org, start),
    ).fetchone()
    assert row is not None
    return tuple(row)


def worker_for(dsn: str, emu: Emulator, log: Path, grace: float, invoice_grace: float):
    return WorkerProcess(
        dsn,
        emu.url,
        log,
        "--poll-interval",
        "0.3",
        "--debounce",
        "0",
        "--grace",
        str(grace),
        "--invoice-grace",
        str(invoice_grace),
    )


def billed_org(conn: psycopg.Connection[Any], emu: Emulator, seconds: int) -> tuple[Any, str]:
    """A billed organization on periods of ``seconds``, and its Stripe customer."""
    org = make_org(conn, benchmarks=4)
    cus = emu.customer()
    bill(conn, org.id, cus)
    short_periods(conn, org.id, seconds)
    return org, cus


def test_a_new_period_is_posted_while_the_ended_one_is_in_its_grace(
    conn, dsn, relay_emulator: Emulator, tmp_path: Path
):
    emu = relay_emulator
    org, cus = billed_org(conn, emu, 6)
    worker = worker_for(dsn, emu, tmp_path / "w.log", grace=8, invoice_grace=30)
    with workers(worker.start()):
        p_start, p_end = early_in_a_period(conn, org.id, 3)
        ingest(conn, org, org.testbeds[0], [(org.benchmarks[0], org.measures[0])])
        wait_until(lambda: emu.last_value(cus, p_start, p_end) == 1, 30, "P posted")
        while current(conn, org.id)[0] == p_start:
            time.sleep(0.1)
        q_start, q_end, _ = current(conn, org.id)
        # P+1 changes while P is in its grace; and P gets a late change (a backdated report)
        ingest(
            conn,
            org,
            org.testbeds[0],
            [(org.benchmarks[1], org.measures[0]), (org.benchmarks[2], org.measures[0])],
        )
        allow_explicit_created(conn)
        ingest(
            conn,
            org,
            org.testbeds[1],
            [(org.benchmarks[3], org.measures[0])],
            created=p_start + dt.timedelta(seconds=1),
        )
        conn.execute("RESET active_series.allow_explicit_created")
        assert usage(conn, org.id, p_start) == 2
        wait_until(lambda: emu.last_value(cus, q_start, q_end) == 2, 30, "P+1 posted")
        # posted without waiting for P: P is still in its grace, not closed
        assert period_row(conn, org.id, p_start)[0] is None
        assert emu.last_value(cus, p_start, p_end) == 1
        wait_until(
            lambda: period_row(conn, org.id, p_start)[0] is not None and quiescent(conn),
            60,
            "P closed",
        )
        assert emu.last_value(cus, p_start, p_end) == 2
        # P's final value went out after P+1's first post, with a timestamp inside P
        order = conn.execute(
            "SELECT period_start FROM active_series._ledger WHERE organization_id = %s"
            " AND status = 'sent' ORDER BY id",
            (org.id,),
        ).fetchall()
        assert [r[0] for r in order] == [p_start, q_start, p_start]
        assert_increasing_timestamps(emu, billing_periods(conn, {org.id: cus}))


def test_an_ended_period_takes_corrections_until_its_invoice_grace_then_drift_is_recorded(
    conn, dsn, relay_emulator: Emulator, tmp_path: Path
):
    emu = relay_emulator
    org, cus = billed_org(conn, emu, 10)
    worker = worker_for(dsn, emu, tmp_path / "w.log", grace=1, invoice_grace=20)
    with workers(worker.start()):
        p_start, p_end = early_in_a_period(conn, org.id, 4)
        ingest(conn, org, org.testbeds[0], [(org.benchmarks[0], org.measures[0])])
        wait_until(
            lambda: period_row(conn, org.id, p_start)[0] is not None and quiescent(conn),
            60,
            "P closed",
        )
        assert emu.last_value(cus, p_start, p_end) == 1

        def backdated(benchmark: int) -> None:
            allow_explicit_created(conn)
            ingest(
                conn,
                org,
                org.testbeds[1],
                [(org.benchmarks[benchmark], org.measures[0])],
                created=p_start + dt.timedelta(seconds=2),
            )
            conn.execute("RESET active_series.allow_explicit_created")

        # a correction after the close, inside the invoice grace: posted
        backdated(1)
        wait_until(lambda: emu.last_value(cus, p_start, p_end) == 2, 30, "correction posted")
        assert period_row(conn, org.id, p_start)[1] is None
        wait_until(lambda: period_row(conn, org.id, p_start)[1] is not None, 60, "P finalized")
        assert period_row(conn, org.id, p_start)[2] == 2
        assert one(conn, "SELECT count(*) FROM active_series.billing_drift") == 0
        # a change after the invoice is final: recorded, not posted
        before = one(conn, "SELECT clock_timestamp()")
        backdated(2)
        wait_until(lambda: quiescent(conn), 30, "outbox drained")
        drift = conn.execute(
            "SELECT organization_id, period_start, billed, period_usage, difference, since"
            " FROM active_series.billing_drift"
        ).fetchall()
        assert [d[:5] for d in drift] == [(org.id, p_start, 2, 3, 1)]
        assert before <= drift[0][5] <= one(conn, "SELECT clock_timestamp()")
        assert emu.last_value(cus, p_start, p_end) == 2
        # going back to what was billed clears it (a hard delete re-records the history)
        conn.execute("DELETE FROM active_series.benchmark WHERE id = %s", (org.benchmarks[2],))
        assert usage(conn, org.id, p_start) == 2
        wait_until(lambda: quiescent(conn), 30, "outbox drained")
        assert one(conn, "SELECT count(*) FROM active_series.billing_drift") == 0
        assert_increasing_timestamps(emu, billing_periods(conn, {org.id: cus}))
