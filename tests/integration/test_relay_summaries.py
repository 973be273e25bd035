"""What Stripe holds is read from Stripe (the meter's event summaries), not inferred from
the ledger: an accepted event Stripe lost is found before the period is shown in sync and
posted again; a difference at the end of the invoice grace is billed as Stripe held it; a
lagging summary is not a difference; a failed read confirms nothing."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import psycopg
import stripe
from oracle import ingest, make_org
from relay_harness import (
    API_KEY,
    Emulator,
    WorkerProcess,
    bill,
    short_periods,
    wait_until,
    workers,
)

SUMMARIES = "/v1/billing/meters/"


def status(conn: psycopg.Connection[Any], org: int) -> dict[str, Any]:
    cur = conn.execute(
        "SELECT period_usage, stripe_value, in_sync, confirming, stripe_summary"
        " FROM active_series.relay_status WHERE organization_id = %s",
        (org,),
    )
    names = [c.name for c in cur.description or []]
    row = cur.fetchone()
    assert row is not None
    return dict(zip(names, row, strict=True))


def cancel(emu: Emulator, identifier: str) -> None:
    """Stripe stops counting an event it accepted (here: canceled by an adjustment)."""
    client = stripe.StripeClient(API_KEY, base_addresses={"api": emu.url})
    client.v1.billing.meter_event_adjustments.create(
        params={
            "event_name": "active_series",
            "type": "cancel",
            "cancel": {"identifier": identifier},
        }
    )


def current(conn: psycopg.Connection[Any], org: int) -> tuple[dt.datetime, dt.datetime]:
    row = conn.execute(
        "SELECT period_start, period_end FROM active_series.current_period(%s)", (org,)
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def test_an_accepted_event_stripe_lost_is_found_before_in_sync_and_posted_again(
    conn, dsn, relay_emulator: Emulator, tmp_path: Path
) -> None:
    emu = relay_emulator
    org = make_org(conn)
    cus = emu.customer()
    bill(conn, org.id, cus)
    start, end = current(conn, org.id)
    # the summary lags less than the worker waits before reading it
    emu.ctl.set_summary_lag(0.5)
    worker = WorkerProcess(
        dsn, emu.url, tmp_path / "w.log", "--poll-interval", "0.5", "--confirm-after", "2"
    )
    with workers(worker.start()):
        ingest(conn, org, org.testbeds[0], [(org.benchmarks[0], org.measures[0])])
        [first] = wait_until(lambda: emu.events(cus), 30, "the post")
        # Stripe "loses" the event it accepted before the worker reads the summary
        cancel(emu, first["identifier"])
        assert emu.last_value(cus, start, end) == 0
        wait_until(lambda: status(conn, org.id)["in_sync"], 30, "in sync, confirmed")
        assert emu.last_value(cus, start, end) == 1
        assert status(conn, org.id)["stripe_summary"] == 1
        events = emu.events(cus)
        assert [e["value"] for e in events] == [1, 1]
        assert events[1]["identifier"] != events[0]["identifier"]
        assert events[1]["timestamp"] > events[0]["timestamp"]
        assert start.timestamp() <= events[1]["timestamp"] < end.timestamp()
        assert [e["action"] for e in worker.log_events("stripe_differs")] == ["repost"]
        # the lag alone caused no other post and no other read of a difference
        assert not worker.log_events("stripe_lagging")


def test_a_lagging_summary_is_no_difference_and_causes_no_repost(
    conn, dsn, relay_emulator: Emulator, tmp_path: Path
) -> None:
    emu = relay_emulator
    org = make_org(conn)
    cus = emu.customer()
    bill(conn, org.id, cus)
    emu.ctl.set_summary_lag(1.0)
    worker = WorkerProcess(
        dsn, emu.url, tmp_path / "w.log", "--poll-interval", "0.5", "--confirm-after", "3"
    )
    with workers(worker.start()):
        for i in range(3):
            ingest(conn, org, org.testbeds[0], [(org.benchmarks[i], org.measures[0])])
            wait_until(
                lambda n=i + 1: (
                    status(conn, org.id)["in_sync"] and status(conn, org.id)["period_usage"] == n
                ),
                30,
                f"in sync at {i + 1}",
            )
        assert [e["value"] for e in emu.events(cus)] == [1, 2, 3]
        assert not worker.log_events("stripe_differs")
        # one read per post that settled: the lag never turned into a difference
        assert len(worker.log_events("stripe_confirmed")) == 3


def test_a_failed_summary_read_does_not_declare_in_sync(
    conn, dsn, relay_emulator: Emulator, tmp_path: Path
) -> None:
    emu = relay_emulator
    org = make_org(conn)
    cus = emu.customer()
    bill(conn, org.id, cus)
    emu.ctl.fail_next(3, status=500, path_prefix=f"{SUMMARIES}{emu.meter}/event_summaries")
    worker = WorkerProcess(
        dsn,
        emu.url,
        tmp_path / "w.log",
        "--poll-interval",
        "0.5",
        "--confirm-after",
        "0.5",
        "--max-network-retries",
        "0",
        "--retry-min",
        "0.5",
        "--retry-max",
        "1",
    )
    with workers(worker.start()):
        ingest(conn, org, org.testbeds[0], [(org.benchmarks[0], org.measures[0])])
        wait_until(lambda: worker.log_events("summary_unreadable"), 30, "a failed read")
        row = status(conn, org.id)
        assert (row["stripe_value"], row["in_sync"], row["confirming"]) == (1, False, True)
        wait_until(lambda: status(conn, org.id)["in_sync"], 30, "in sync once a read succeeds")
        assert len(worker.log_events("summary_unreadable")) == 3
        assert [e["value"] for e in emu.events(cus)] == [1]


def test_a_difference_at_the_end_of_the_invoice_grace_shows_in_billing_drift(
    conn, dsn, relay_emulator: Emulator, tmp_path: Path
) -> None:
    emu = relay_emulator
    org = make_org(conn)
    cus = emu.customer()
    bill(conn, org.id, cus)
    short_periods(conn, org.id, 30)
    # start early in a period: the post is confirmed before it ends
    while True:
        start, end = current(conn, org.id)
        left = conn.execute("SELECT %s - clock_timestamp()", (end,)).fetchone()[0]
        if left.total_seconds() > 20:
            break
        time.sleep(0.2)
    args = ("--poll-interval", "0.5", "--grace", "1", "--invoice-grace", "4")
    worker = WorkerProcess(dsn, emu.url, tmp_path / "w.log", *args, "--confirm-after", "0.5")
    with workers(worker.start()):
        ingest(conn, org, org.testbeds[0], [(org.benchmarks[0], org.measures[0])])
        wait_until(lambda: status(conn, org.id)["in_sync"], 30, "in sync, confirmed")
    # the worker is away for the rest of the period and its invoice grace; meanwhile Stripe
    # loses the event
    [event] = emu.events(cus)
    cancel(emu, event["identifier"])
    wait_until(
        lambda: conn.execute(
            "SELECT clock_timestamp() > %s", (end + dt.timedelta(seconds=5),)
        ).fetchone()[0],
        60,
        "the end of the invoice grace",
    )
    worker = WorkerProcess(dsn, emu.url, tmp_path / "w2.log", *args, "--confirm-after", "0.5")
    with workers(worker.start()):
        drift = wait_until(
            lambda: conn.execute(
                "SELECT billed, period_usage, difference FROM active_series.billing_drift"
                " WHERE organization_id = %s AND period_start = %s",
                (org.id, start),
            ).fetchone(),
            30,
            "the period finalized with what Stripe held",
        )
    assert drift == (0, 1, 1)
    assert [e["action"] for e in worker.log_events("stripe_differs")] == ["finalize"]
    assert len(emu.events(cus)) == 1  # never posted after its invoice grace


def test_worker_once_exits_after_a_bounded_wait_when_the_summary_cannot_be_read(
    conn, dsn, relay_emulator: Emulator, tmp_path: Path
) -> None:
    emu = relay_emulator
    org = make_org(conn)
    cus = emu.customer()
    bill(conn, org.id, cus)
    ingest(conn, org, org.testbeds[0], [(org.benchmarks[0], org.measures[0])])
    # every read fails: --once waits for them (retried with backoff), not for ever
    emu.ctl.fail_next(1000, status=500, path_prefix=f"{SUMMARIES}{emu.meter}/event_summaries")
    options = ("--confirm-after", "0.5", "--max-network-retries", "0", "--retry-min", "0.5")
    worker = WorkerProcess(dsn, emu.url, tmp_path / "w.log", "--once", *options)
    with workers(worker.start()):
        assert worker.proc is not None
        assert worker.proc.wait(120) == 0, worker.log()
    assert [e["value"] for e in emu.events(cus)] == [1]
    # it read again as the running worker would, and confirmed nothing
    assert len(worker.log_events("summary_unreadable")) >= 2
    [pending] = worker.log_events("confirmations_pending")
    assert pending["periods"] == "1"
    row = status(conn, org.id)
    assert (row["stripe_value"], row["in_sync"], row["confirming"]) == (1, False, True)


def test_close_period_waits_for_the_summary_of_the_final_value_it_posted(
    conn, dsn, relay_emulator: Emulator, monkeypatch
) -> None:
    from active_series import cli

    emu = relay_emulator
    org = make_org(conn)
    cus = emu.customer()
    bill(conn, org.id, cus)
    short_periods(conn, org.id, 20)
    start, end = current(conn, org.id)
    # reported with no worker running: the period's value is posted by close-period
    ingest(conn, org, org.testbeds[0], [(org.benchmarks[0], org.measures[0])])
    wait_until(
        lambda: conn.execute(
            "SELECT clock_timestamp() > %s", (end + dt.timedelta(seconds=1),)
        ).fetchone()[0],
        60,
        "the end of the period and its grace",
    )
    monkeypatch.setenv("STRIPE_API_KEY", API_KEY)
    options = ["--grace", "1", "--invoice-grace", "600", "--confirm-after", "0.5"]
    assert cli.main(["close-period", "--dsn", dsn, "--stripe-api-base", emu.url, *options]) == 0
    assert emu.last_value(cus, start, end) == 1
    row = conn.execute(
        "SELECT closed_at IS NOT NULL, in_sync, confirming, stripe_summary"
        " FROM active_series.relay_periods WHERE organization_id = %s AND period_start = %s",
        (org.id, start),
    ).fetchone()
    assert row == (True, True, False, 1)


def test_a_post_does_not_wait_for_a_summary_read_in_flight(
    conn, dsn, relay_emulator: Emulator, tmp_path: Path
) -> None:
    emu = relay_emulator
    org = make_org(conn)
    cus = emu.customer()
    bill(conn, org.id, cus)
    # the first summary read hangs until the worker's call gives up
    emu.ctl.delay_next(1, 20, path_prefix=f"{SUMMARIES}{emu.meter}/event_summaries")
    worker = WorkerProcess(
        dsn,
        emu.url,
        tmp_path / "w.log",
        "--poll-interval",
        "0.5",
        "--confirm-after",
        "0.5",
        "--stripe-timeout",
        "8",
        "--max-network-retries",
        "0",
    )
    with workers(worker.start()):
        ingest(conn, org, org.testbeds[0], [(org.benchmarks[0], org.measures[0])])
        wait_until(lambda: emu.events(cus), 30, "the first post")
        wait_until(lambda: emu.ctl.fault_counts().get("delay"), 30, "the read in flight")
        # a change while the read of the first post hangs: posted at once
        ingest(conn, org, org.testbeds[0], [(org.benchmarks[1], org.measures[0])])
        wait_until(lambda: len(emu.events(cus)) == 2, 30, "the second post")
        # the read had not ended when the post was made (it ended after, and failed)
        assert not worker.log_events("summary_unreadable")
        assert not worker.log_events("stripe_confirmed")
        # it is read again once it has failed, and the second post is confirmed
        wait_until(lambda: status(conn, org.id)["in_sync"], 60, "in sync, confirmed")
        assert status(conn, org.id)["stripe_summary"] == 2
        assert [e["value"] for e in emu.events(cus)] == [1, 2]
